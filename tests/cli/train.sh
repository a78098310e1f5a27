#!/usr/bin/env bash
# `moerun train` end to end on 2 ranks: a small dataset made with `moerun prepare`, a 6-step run of
# the tiny preset (metrics.jsonl: a run line, 6 train lines, eval lines with val_loss; config.ini),
# then bad command lines that must exit 1 with one error line naming the option, without hanging
# (every run is bounded by `timeout`) or aborting the MPI world.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

train2() {  # args...: moerun train on 2 ranks, bounded
  timeout 300 mpiexec -n 2 --oversubscribe "$MOERUN" train "$@"
}

# ---- dataset: generated prose (6 files) + arithmetic ------------------------------------------
source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 6 7
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 200

# ---- a short run of the tiny preset -----------------------------------------------------------
# The preset warms up for 20 steps, more than 6: --warmup-steps 2 keeps the schedule valid.
run=$tmp/run
out=$(train2 --config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" --steps 6 --warmup-steps 2 \
  --eval-every 3 --log-every 2 --out "$run" 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then
  echo "FAIL: moerun train (tiny preset, 6 steps) -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
else
  m=$run/metrics.jsonl
  if [[ ! -s $m ]]; then
    echo "FAIL: $m was not written"; fail=1
  else
    count() { grep -c "\"type\":\"$1\"" "$m"; }
    [[ $(count run) -eq 1 ]] || { echo "FAIL: metrics.jsonl has $(count run) run lines, expected 1"; fail=1; }
    [[ $(count train) -eq 6 ]] || { echo "FAIL: metrics.jsonl has $(count train) train lines, expected 6"; fail=1; }
    # Evaluations at step 3 (--eval-every 3) and at the end (step 6).
    [[ $(count eval) -eq 2 ]] || { echo "FAIL: metrics.jsonl has $(count eval) eval lines, expected 2"; fail=1; }
    n=$(grep '"type":"eval"' "$m" | grep -cE '"val_loss":[0-9]+\.[0-9]+')
    [[ $n -eq $(count eval) ]] || { echo "FAIL: only $n eval lines carry a numeric val_loss"; fail=1; }
    n=$(grep '"type":"train"' "$m" | grep -cE '"loss":[0-9]+\.[0-9]+')
    [[ $n -eq 6 ]] || { echo "FAIL: only $n train lines carry a numeric loss"; fail=1; }
    for s in 1 2 3 4 5 6; do
      grep '"type":"train"' "$m" | grep -qE "\"step\":${s}[,}]" || { echo "FAIL: no train line for step $s"; fail=1; }
    done
    grep -qF '"ranks":2' "$m" || { echo "FAIL: the run line does not say 2 ranks"; fail=1; }
  fi
  c=$run/config.ini
  if [[ ! -s $c ]]; then
    echo "FAIL: $c was not written"; fail=1
  else
    for kv in "steps = 6" "warmup-steps = 2" "hidden = 128" "data = $tmp/d.h5"; do
      grep -qxF -- "$kv" "$c" || { echo "FAIL: config.ini lacks '$kv'"; sed 's/^/    /' "$c"; fail=1; }
    done
  fi
  [[ $(grep -c "moerun train: done" <<<"$out") -eq 1 ]] || { echo "FAIL: expected one 'done' line"; echo "$out"; fail=1; }
  [[ $fail -eq 0 ]] && echo "ok:   6 steps of the tiny preset on 2 ranks -> $m"
fi

# ---- the tiny-mla-v3 preset learns: MLA (query compression, YaRN), sigmoid group-limited routing
# 30 steps on 2 ranks; the mean loss of the last 5 steps is below that of the first 5 (by 0.2
# nats at least: the first steps sit near ln(257) = 5.55, and a byte-level model of this prose
# leaves that quickly) and the config.ini written for the run names the attention.
run=$tmp/mla
out=$(train2 --config "$SRC/jobs/presets/tiny-mla-v3.ini" --data "$tmp/d.h5" --steps 30 \
  --warmup-steps 2 --eval-every 0 --log-every 1 --out "$run" 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then
  echo "FAIL: moerun train (tiny-mla-v3 preset, 30 steps) -> exit $rc"; echo "$out" | sed 's/^/    /'; fail=1
elif ! falls=$(python3 -c 'import json,sys
loss = [r["loss"] for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "train"]
first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
print(f"{len(loss)} steps, mean loss of the first 5 {first:.3f}, of the last 5 {last:.3f}")
sys.exit(0 if len(loss) == 30 and last < first - 0.2 else 1)' "$run/metrics.jsonl" 2>&1); then
  echo "FAIL: tiny-mla-v3: the loss does not fall: $falls"; fail=1
elif ! grep -qxF "attention = mla" "$run/config.ini" || ! grep -qxF "q-lora-rank = 96" "$run/config.ini" ||
  ! grep -qxF "rope-scaling = yarn" "$run/config.ini"; then
  echo "FAIL: tiny-mla-v3: config.ini lacks the MLA options"; sed 's/^/    /' "$run/config.ini"; fail=1
else
  echo "ok:   tiny-mla-v3 on 2 ranks: $falls"
fi

# ---- bad command lines: exit 1, one error line naming the option, no run directory ------------
err_case() {  # expected_substring args...
  local want=$1; shift
  local out rc bad=$tmp/bad
  rm -rf "$bad"
  out=$(train2 "$@" --data "$tmp/d.h5" --out "$bad" 2>&1); rc=$?
  if [[ $rc -ne 1 ]]; then
    echo "FAIL: moerun train $* -> exit $rc, expected 1"; echo "$out" | sed 's/^/    /'; fail=1; return
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL: moerun train $* -> message lacks '$want'"; echo "$out" | sed 's/^/    /'; fail=1; return
  fi
  if grep -q "MPI_ABORT" <<<"$out"; then
    echo "FAIL: moerun train $* aborted the MPI world for a config error"; fail=1; return
  fi
  local n; n=$(grep -c "error" <<<"$out")
  if [[ $n -ne 1 ]]; then echo "FAIL: moerun train $* printed $n error lines, expected 1"; echo "$out"; fail=1; return; fi
  if [[ -e $bad/metrics.jsonl ]]; then echo "FAIL: moerun train $* started a run"; fail=1; return; fi
  echo "ok:   moerun train $* -> exit 1: $(grep error <<<"$out")"
}
err_case "--config" --config "$tmp/nonexistent.ini"
err_case "--lr" --config "$SRC/jobs/presets/tiny.ini" --lr abc
err_case "--global-batch" --config "$SRC/jobs/presets/tiny.ini" --global-batch 7 --micro-batch 4
err_case "--kv-lora-rank is an MLA option" --config "$SRC/jobs/presets/tiny.ini" --kv-lora-rank 32
err_case "--rope-beta-fast needs --rope-scaling yarn" --config "$SRC/jobs/presets/tiny-mla.ini" \
  --rope-beta-fast 16
err_case "--qk-rope-head-dim must be even" --config "$SRC/jobs/presets/tiny-mla.ini" \
  --qk-rope-head-dim 7

[[ $fail -eq 0 ]] && echo "all train CLI checks passed"
exit $fail
