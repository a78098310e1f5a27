#!/usr/bin/env bash
# `moerun train` reliability on 2 ranks (issue #8): empty and out-of-range option values, a bad
# --ckpt-dir found before the first step, resume choices (`latest`, --resume-step, --resume auto
# falling back over a corrupt step, messages for bad paths) and a domain without validation data.
# Stop signals are in preemption.sh.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
cleanup() {
  if [[ -n ${MNT:-} ]]; then umount "$MNT" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
bad() { echo "FAIL: $*"; fail=1; }
show() { sed 's/^/    /' <<<"$1"; }

train2() {  # args...: moerun train on 2 ranks, bounded
  timeout 300 mpiexec -n 2 --oversubscribe "$MOERUN" train "$@"
}

# ---- data: prose (6 files) + arithmetic; and one where the prose domain has no validation ------
source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 6 11
mkdir -p "$tmp/one"
cp "$tmp/text/doc1.txt" "$tmp/one/only.txt"
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 200
# One prose document: with a validation fraction of 0.2 it lands in the train split, so the prose
# domain has no validation data.
timeout 120 "$MOERUN" prepare --input "prose=$tmp/one" --arithmetic-docs 400 --seed 3 \
  --validation-fraction 0.2 --output "$tmp/noval.h5" --quiet >/dev/null 2>&1 || { echo "FAIL: prepare noval"; exit 1; }
TINY=(--config "$SRC/jobs/presets/tiny.ini" --warmup-steps 1 --eval-every 0 --log-every 1)

# ---- bad values: exit 1, one error line naming the option, nothing started ---------------------
err_case() {  # expected_substring args...
  local want=$1; shift
  local out rc dir=$tmp/bad
  rm -rf "$dir"
  out=$(train2 "$@" --data "$tmp/d.h5" --out "$dir" 2>&1); rc=$?
  if [[ $rc -ne 1 ]]; then bad "moerun train $* -> exit $rc, expected 1"; show "$out"; return; fi
  if ! grep -qF -- "$want" <<<"$out"; then bad "moerun train $* -> message lacks '$want'"; show "$out"; return; fi
  if grep -q "MPI_ABORT" <<<"$out"; then bad "moerun train $* aborted the MPI world"; show "$out"; return; fi
  local n; n=$(grep -c "error" <<<"$out")
  if [[ $n -ne 1 ]]; then bad "moerun train $* printed $n error lines, expected 1"; show "$out"; return; fi
  if [[ -e $dir/metrics.jsonl ]] && grep -q '"type":"train"' "$dir/metrics.jsonl"; then
    bad "moerun train $* trained before failing"; return
  fi
  echo "ok:   moerun train $* -> exit 1: $(grep error <<<"$out")"
}
err_case "--lr has an empty value" "${TINY[@]}" --lr ""
printf 'lr =\n' >"$tmp/empty-lr.ini"
err_case "--lr has an empty value" --config "$tmp/empty-lr.ini"
err_case "--schedule has an empty value" "${TINY[@]}" --schedule ""
err_case "--beta1 must be in [0, 1)" "${TINY[@]}" --beta1 2
err_case "--beta2 must be in [0, 1)" "${TINY[@]}" --beta2 2
err_case "--weight-decay must be >= 0" "${TINY[@]}" --weight-decay -1
err_case "--seed must be >= 0" "${TINY[@]}" --seed -1
err_case "--ep-size must be >= 0" "${TINY[@]}" --ep-size -1
err_case "--resume-step 3 needs --resume" "${TINY[@]}" --resume-step 3
# A bad checkpoint directory is found before the first step, not at the first save.
err_case "--ckpt-dir /dev/null: exists and is not a directory" "${TINY[@]}" --steps 2 --ckpt-dir /dev/null
touch "$tmp/afile"
err_case "--ckpt-dir $tmp/afile/sub: cannot create the directory" "${TINY[@]}" --steps 2 --ckpt-dir "$tmp/afile/sub"
MNT=$tmp/small
mkdir -p "$MNT"
if mount -t tmpfs -o size=64k tmpfs "$MNT" 2>/dev/null; then
  err_case "MB free, but one checkpoint of this model" "${TINY[@]}" --steps 2 --ckpt-dir "$MNT/ck"
  mount -o remount,ro "$MNT" 2>/dev/null &&
    err_case "--ckpt-dir $MNT/ck2: cannot create the directory" "${TINY[@]}" --steps 2 --ckpt-dir "$MNT/ck2"
  umount "$MNT"; MNT=
else
  echo "skip: no tmpfs mount here (not root?): the too-small and read-only --ckpt-dir cases"
  MNT=
fi

# ---- resume: what `latest` names, --resume-step, --resume auto over a corrupt step -------------
ck=$tmp/ck
out=$(train2 "${TINY[@]}" --data "$tmp/d.h5" --steps 4 --save-every 2 --keep-last 0 --out "$tmp/r0" \
  --ckpt-dir "$ck" 2>&1) || { bad "the 4-step run with checkpoints failed"; show "$out"; }
[[ -f $ck/step_2/manifest.json && -f $ck/step_4/manifest.json ]] || bad "steps 2 and 4 were not both committed"
# The first train record after the last run record (the cases share one metrics file, appended by
# every resume). awk, not `grep | head -1`: under pipefail, head closing the pipe early makes grep's
# SIGPIPE fail the check at random.
first_train_of_last_run() {
  awk '/"type":"run"/ {first = ""; seen = 1; next}
       seen && first == "" && /"type":"train"/ {first = $0}
       END {print first}' "$1"
}
resume_case() {  # label want_rc want_substring args...
  local label=$1 want_rc=$2 want=$3; shift 3
  local out rc
  out=$(train2 "${TINY[@]}" --data "$tmp/d.h5" --out "$tmp/rr" "$@" 2>&1); rc=$?
  if [[ $rc -ne $want_rc ]]; then bad "$label: exit $rc, expected $want_rc"; show "$out"; return 1; fi
  if ! grep -qF -- "$want" <<<"$out"; then bad "$label: output lacks '$want'"; show "$out"; return 1; fi
  if grep -q "MPI_ABORT" <<<"$out"; then bad "$label aborted the MPI world"; show "$out"; return 1; fi
  echo "ok:   $label -> exit $rc: $(grep -F -- "$want" <<<"$out" | head -1 | cut -c1-200)"
}
resume_case "--resume of a missing path" 1 "--resume $tmp/nope: does not exist" --steps 6 --resume "$tmp/nope"
resume_case "--resume of a file" 1 "--resume $tmp/afile: is not a directory" --steps 6 --resume "$tmp/afile"
mkdir -p "$tmp/emptyck"
resume_case "--resume of an empty directory" 1 "holds no committed checkpoint" --steps 6 --resume "$tmp/emptyck"
resume_case "--resume-step of a step that is not there" 1 "--resume-step 3: $ck has no committed step 3 (committed: 2, 4)" \
  --steps 6 --resume "$ck" --resume-step 3
# `latest` names the older step (as after an import): followed, and said loudly.
echo 2 >"$ck/latest"
resume_case "latest names an older step" 0 "names step 2, but step 4 is newer; resuming step 2" \
  --steps 5 --resume "$ck" --ckpt-dir "$tmp/ck-a"
grep -q "resumed from $ck step 2 " <<<"$out" 2>/dev/null || true
# Garbage in `latest`: said what it holds, and the newest committed step is taken.
printf '\x01garbage\xff' >"$ck/latest"
resume_case "a garbage latest" 0 "is unreadable: it holds \"\\x01garbage\\xff\"; resuming the newest committed step 4" \
  --steps 5 --resume "$ck" --ckpt-dir "$tmp/ck-b"
echo 4 >"$ck/latest"
resume_case "--resume-step 2" 0 "resumed from $ck step 2 " --steps 3 --resume "$ck" --resume-step 2 --ckpt-dir "$tmp/ck-c"
# Corrupt the newest step: strict --resume refuses and names the file; auto falls back to step 2.
h5=$ck/step_4/tensors.h5
size=$(stat -c %s "$h5")
printf '\xAB\xCD\xEF\x01' | dd of="$h5" bs=1 seek=$((size - 4096)) conv=notrunc status=none
resume_case "--resume of a corrupt newest step" 1 "$h5" --steps 6 --resume "$ck" --ckpt-dir "$tmp/ck-d"
resume_case "--resume auto over a corrupt newest step" 0 "step 4 of $ck does not verify" \
  --steps 6 --resume auto --ckpt-dir "$ck" --keep-last 0 &&
  { first_train_of_last_run "$tmp/rr/metrics.jsonl" | grep -qE '"step":3[,}]' ||
    bad "--resume auto did not continue from step 2 (first train line is not step 3)"; }
resume_case "--resume auto with no checkpoint yet" 0 "checkpoint yet; starting from step 0" \
  --steps 1 --resume auto --ckpt-dir "$tmp/fresh-ck"

# ---- a domain without validation data: said in words, null in the metrics ----------------------
out=$(train2 --config "$SRC/jobs/presets/tiny.ini" --warmup-steps 1 --data "$tmp/noval.h5" --steps 1 \
  --out "$tmp/nv" 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then bad "training on noval.h5 -> exit $rc"; show "$out"
else
  grep -q "no validation data in: prose" <<<"$out" || { bad "the eval line does not say prose has no validation data"; show "$out"; }
  grep -qi "prose nan" <<<"$out" && bad "the eval line prints 'prose nan'"
  line=$(grep '"type":"eval"' "$tmp/nv/metrics.jsonl" | tail -1)
  grep -qF '"prose":{"maxvio_global":null,"sequences":0,"val_loss":null}' <<<"$line" ||
    { bad "metrics.jsonl: prose should have null val_loss and maxvio_global"; show "$line"; }
  [[ $fail -eq 0 ]] && echo "ok:   a domain without validation data: $(grep 'no validation data' <<<"$out")"
fi

[[ $fail -eq 0 ]] && echo "all train reliability checks passed"
exit $fail
