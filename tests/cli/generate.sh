#!/usr/bin/env bash
# `moerun generate` end to end on a tiny checkpoint (the tiny preset, 3 steps on 1 rank): greedy
# generation is deterministic, the same at 1 and 2 ranks (experts sharded over both; the logits
# agree to float rounding), and the same without the KV cache (--no-cache recomputes the whole
# sequence for every token); sampling (T > 0, top-p) repeats with its --seed and changes with
# another, and a tiny top-p leaves only the greedy choice; --prompt-ids works; a prompt longer than the model's positions, bad temperatures,
# top-p, ids >= vocab, a missing checkpoint or step are clear errors naming the option, also at
# 2 ranks (no hang).
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

gen() { timeout 120 "$MOERUN" generate "$@"; }
gen2() { timeout 120 mpirun -n 2 --oversubscribe "$MOERUN" generate "$@"; }
must() {  # description command...: the command must exit 0; its stdout lands in LAST_OUT
  local what=$1; shift
  local rc
  "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?
  LAST_OUT=$(cat "$tmp/out")
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: $what -> exit $rc"; sed 's/^/    /' "$tmp/out" "$tmp/err"; fail=1; return 1
  fi
  echo "ok:   $what"
}
refuse() {  # description pattern command...: must exit non-zero with pattern in its output
  local what=$1 pattern=$2; shift 2
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [[ $rc -eq 0 || $rc -eq 124 ]] || ! grep -q -- "$pattern" <<<"$out"; then
    echo "FAIL: $what -> exit $rc, want an error matching '$pattern'"; sed 's/^/    /' <<<"$out"
    fail=1; return 1
  fi
  echo "ok:   $what: $(grep -m1 -- "$pattern" <<<"$out" | sed 's/^.*error: //')"
}
same() {  # description a b
  if [[ "$2" == "$3" ]]; then echo "ok:   $1"; else
    echo "FAIL: $1"; echo "    '$2'"; echo "    '$3'"; fail=1; fi
}

source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 3 7
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 100
ck=$tmp/ck
must "moerun train (tiny, 3 steps, 1 rank)" timeout 300 "$MOERUN" train \
  --config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" --steps 3 --warmup-steps 1 \
  --eval-every 0 --eval-batches 1 --out "$tmp/run" --ckpt-dir "$ck" || exit 1

# ---- greedy: deterministic, 1 rank = 2 ranks = no cache ----------------------------------------
greedy=(--ckpt "$ck" --prompt "the expert router" --temperature 0 --max-new-tokens 24)
must "greedy, 1 rank" gen "${greedy[@]}" --logits-out "$tmp/l1" || exit 1
g1=$LAST_OUT
grep -q "tokens/s" "$tmp/err" || { echo "FAIL: no tokens/s on stderr"; fail=1; }
grep -q "KV cache .* KiB" "$tmp/err" || { echo "FAIL: no cache size on stderr"; fail=1; }
grep "tokens/s" "$tmp/err" | sed 's/^/      /'
[[ -n "$g1" ]] || { echo "FAIL: greedy generation printed nothing"; fail=1; }
must "greedy, 1 rank again" gen "${greedy[@]}" && same "greedy is deterministic" "$g1" "$LAST_OUT"
must "greedy, 2 ranks (EP 2)" gen2 "${greedy[@]}" --logits-out "$tmp/l2" &&
  same "greedy at 2 ranks = 1 rank" "$g1" "$LAST_OUT"
must "greedy, 1 rank, --no-cache" gen "${greedy[@]}" --no-cache --logits-out "$tmp/l0" &&
  same "greedy without the cache = with it" "$g1" "$LAST_OUT"
out=$(python3 - "$tmp/l1" "$tmp/l2" "$tmp/l0" <<'EOF' 2>&1
import sys
rows = [[list(map(float, l.split())) for l in open(f)] for f in sys.argv[1:]]
ref = rows[0]
assert len(ref) == 24 and all(len(r) == 257 for r in ref), (len(ref), len(ref[0]))
for name, other in zip(("2 ranks", "no cache"), rows[1:]):
    assert len(other) == len(ref), name
    worst = max(abs(a - b) / (1e-5 + 1e-4 * abs(b)) for ra, rb in zip(other, ref) for a, b in zip(ra, rb))
    assert worst <= 1, f"{name}: logits differ from 1 rank with the cache (x{worst:.2f} the tolerance)"
    print(f"{name}: logits within x{worst:.3f} of the tolerance")
EOF
) && echo "ok:   logits agree: $(tr '\n' ';' <<<"$out")" || { echo "FAIL: $out"; fail=1; }

# ---- sampling: --seed reproduces, another seed differs -----------------------------------------
sampled=(--ckpt "$ck" --prompt "the" --temperature 1.0 --top-p 0.95 --max-new-tokens 32)
must "sampled, seed 5" gen "${sampled[@]}" --seed 5 && s5=$LAST_OUT
must "sampled, seed 5 again" gen "${sampled[@]}" --seed 5 && same "--seed 5 reproduces" "$s5" "$LAST_OUT"
must "sampled, seed 5, 2 ranks" gen2 "${sampled[@]}" --seed 5 &&
  same "--seed 5 at 2 ranks = 1 rank" "$s5" "$LAST_OUT"
must "sampled, seed 6" gen "${sampled[@]}" --seed 6 &&
  if [[ "$s5" == "$LAST_OUT" ]]; then echo "FAIL: seeds 5 and 6 gave the same text"; fail=1; fi

# top-p so small that only the most likely token is left: the greedy text at any temperature.
must "--temperature 1.5 --top-p 1e-6" gen --ckpt "$ck" --prompt "the expert router" \
  --max-new-tokens 24 --temperature 1.5 --top-p 1e-6 --seed 9 &&
  same "top-p 1e-6 = greedy" "$g1" "$LAST_OUT"

# At a high temperature the bytes are nearly random (invalid UTF-8 among them): stdout must still
# be valid UTF-8 (incomplete or invalid sequences become U+FFFD). A non-ASCII prompt is bytes too.
must "temperature 4, a non-ASCII prompt" gen --ckpt "$ck" --prompt "größer →" --temperature 4 \
  --max-new-tokens 100 --seed 2 &&
  if ! python3 -c 'import sys; sys.stdin.buffer.read().decode("utf-8")' <"$tmp/out"; then
    echo "FAIL: stdout is not valid UTF-8"; fail=1; else echo "ok:   stdout is valid UTF-8"; fi

# ---- token ids, positions -------------------------------------------------------------------
must "--prompt-ids (the bytes of 'the expert router')" gen --ckpt "$ck" --temperature 0 \
  --max-new-tokens 24 --prompt-ids "116 104 101 32 101 120 112 101 114 116 32 114 111 117 116 101 114" &&
  same "--prompt-ids = --prompt" "$g1" "$LAST_OUT"
long120=$(printf 'a%.0s' $(seq 120))
must "a prompt of 120 of 128 positions" gen --ckpt "$ck" --prompt "$long120" --temperature 0
grep -q "stops at 9" "$tmp/err" || { echo "FAIL: no note that --max-new-tokens stops at 9"; fail=1; }

# ---- errors ------------------------------------------------------------------------------------
long=$(printf 'a%.0s' $(seq 129))
refuse "a prompt longer than seq_len" "--prompt is 129 tokens, longer than the model's 128" \
  gen --ckpt "$ck" --prompt "$long"
refuse "ids >= vocab" "--prompt-ids: token 300 is outside" gen --ckpt "$ck" --prompt-ids "1 300"
refuse "a non-integer id" "--prompt-ids: 'x' is not" gen --ckpt "$ck" --prompt-ids "1 x"
refuse "negative temperature" "--temperature must be >= 0" gen --ckpt "$ck" --prompt a --temperature -1
refuse "top-p 0" "--top-p must be in (0, 1]" gen --ckpt "$ck" --prompt a --top-p 0
refuse "top-p 1.5" "--top-p must be in (0, 1]" gen --ckpt "$ck" --prompt a --top-p 1.5
refuse "no prompt" "exactly one of --prompt" gen --ckpt "$ck"
refuse "both prompts" "exactly one of --prompt" gen --ckpt "$ck" --prompt a --prompt-ids 1
refuse "no --ckpt" "--ckpt DIR is required" gen --prompt a
refuse "a missing checkpoint" "--ckpt $tmp/nothing" gen --ckpt "$tmp/nothing" --prompt a
refuse "an uncommitted step" "--step 999" gen --ckpt "$ck" --step 999 --prompt a
refuse "--max-new-tokens 0" "--max-new-tokens must be > 0" gen --ckpt "$ck" --prompt a --max-new-tokens 0
refuse "ids >= vocab at 2 ranks" "--prompt-ids: token 257 is outside" gen2 --ckpt "$ck" --prompt-ids 257
refuse "a missing checkpoint at 2 ranks" "--ckpt $tmp/nothing" gen2 --ckpt "$tmp/nothing" --prompt a
must "--help" gen --help && for o in --ckpt --step --prompt --prompt-ids --max-new-tokens \
  --temperature --top-p --seed --logits-out --no-cache; do
  grep -q -- "$o " <<<"$LAST_OUT" || { echo "FAIL: --help does not list $o"; fail=1; }
done

exit $fail
