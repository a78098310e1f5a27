#!/usr/bin/env bash
# Checkpoints end to end through the binary: a 4-step run of the tiny preset on 2 ranks saving at
# steps 2 and 4; `moerun inspect` shows step 4, the layout and "verified"; a resume on 1 rank to
# step 6; then one flipped byte inside a tensor's data in step 4's tensors.h5: inspect and resume
# both exit 1 with one error line naming the file and the dataset, without hanging (every run is
# bounded by `timeout`) or aborting the MPI world. inspect reports a garbage `latest` as unreadable
# (with what it holds) and a truncated or missing tensors.h5 by its real size; a checkpoint copy
# written to a full disk (a tiny tmpfs, when this runs as root) names the cause, the file and the
# step (the parallel writer's failures: tests/mpi/checkpoint_test.cpp, WriteFailure...).
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
trap 'umount "$tmp/full" 2>/dev/null; rm -rf "$tmp"' EXIT

show() { sed 's/^/    /' <<<"$1"; }

# ---- dataset ----------------------------------------------------------------------------------
source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 3 7
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 200

# ---- 4 steps on 2 ranks, saving every 2 -------------------------------------------------------
run=$tmp/run
ckpt=$run/ckpt
common=(--config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" --warmup-steps 1 --eval-every 0)
out=$(timeout 300 mpiexec -n 2 --oversubscribe "$MOERUN" train "${common[@]}" --steps 4 \
  --save-every 2 --out "$run" 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then
  echo "FAIL: moerun train (2 ranks, 4 steps) -> exit $rc"; show "$out"; exit 1
fi
for s in 2 4; do
  [[ -s $ckpt/step_$s/manifest.json ]] || { echo "FAIL: step $s was not committed"; ls -R "$ckpt"; fail=1; }
done
[[ $(cat "$ckpt/latest" 2>/dev/null) == 4 ]] || { echo "FAIL: $ckpt/latest is not 4"; fail=1; }

# ---- inspect ----------------------------------------------------------------------------------
out=$(timeout 120 "$MOERUN" inspect "$ckpt" 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then
  echo "FAIL: moerun inspect $ckpt -> exit $rc"; show "$out"; fail=1
else
  for want in "step 4 " "written by 2 rank(s), EP 2" "hidden 128" "layers.1.moe.w13" "sharded" \
    "optim.m.embed.weight" "checksums verified" "HF export readiness"; do
    grep -qF -- "$want" <<<"$out" || { echo "FAIL: moerun inspect lacks '$want'"; show "$out"; fail=1; }
  done
  [[ $fail -eq 0 ]] && echo "ok:   moerun inspect: $(grep -F 'checksums verified' <<<"$out")"
fi
# An older step, without reading the data; on 2 ranks (rank 0 works, both exit 0).
out=$(timeout 120 mpiexec -n 2 --oversubscribe "$MOERUN" inspect "$ckpt" --step 2 --no-verify 2>&1); rc=$?
if [[ $rc -ne 0 ]] || ! grep -qF "step 2 " <<<"$out" || ! grep -qF "not verified" <<<"$out"; then
  echo "FAIL: moerun inspect --step 2 --no-verify on 2 ranks -> exit $rc"; show "$out"; fail=1
fi
# Bad use: exit 1, one error line.
for args in "$tmp/no-such-dir" "$ckpt --step 3"; do
  # shellcheck disable=SC2086
  out=$(timeout 120 "$MOERUN" inspect $args 2>&1); rc=$?
  if [[ $rc -ne 1 || $(grep -c "error" <<<"$out") -ne 1 ]]; then
    echo "FAIL: moerun inspect $args -> exit $rc, expected 1 with one error line"; show "$out"; fail=1
  else
    echo "ok:   moerun inspect $args -> exit 1: $(grep error <<<"$out")"
  fi
done

# ---- what inspect says about a damaged directory ----------------------------------------------
# A `latest` holding garbage is unreadable, not absent; inspect shows what it holds (escaped).
cp -r "$ckpt" "$tmp/garbage"
printf 'x7\001\n' >"$tmp/garbage/latest"
out=$(timeout 120 "$MOERUN" inspect "$tmp/garbage" --no-verify 2>&1); rc=$?
if [[ $rc -ne 0 ]] || ! grep -qF 'latest file: unreadable: it holds "x7\x01\n"' <<<"$out"; then
  echo "FAIL: inspect with a garbage latest -> exit $rc, expected it named as unreadable"; show "$out"; fail=1
else echo "ok:   a garbage latest is reported: $(grep -oF 'latest file: unreadable: it holds "x7\x01\n"' <<<"$out")"; fi
# A truncated or missing tensors.h5: the real size (or MISSING) next to the manifest's, exit 1,
# even without reading the data.
cp -r "$ckpt" "$tmp/short"
h5s=$tmp/short/step_4/tensors.h5
full=$(stat -c %s "$h5s")
truncate -s $((full - 100)) "$h5s"
out=$(timeout 120 "$MOERUN" inspect "$tmp/short" --no-verify 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -qF "file tensors.h5: $((full - 100)) bytes on disk, the manifest says $full (TRUNCATED)" <<<"$out"; then
  echo "FAIL: inspect of a truncated file -> exit $rc"; show "$out"; fail=1
else echo "ok:   inspect of a truncated file -> exit 1: $(grep -F 'TRUNCATED' <<<"$out" | sed 's/^ *//')"; fi
rm "$h5s"
out=$(timeout 120 "$MOERUN" inspect "$tmp/short" --no-verify 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -qF "file tensors.h5: MISSING (the manifest says $full bytes)" <<<"$out"; then
  echo "FAIL: inspect of a missing file -> exit $rc"; show "$out"; fail=1
else echo "ok:   inspect of a missing file -> exit 1"; fi

# ---- a full disk while writing tensors.h5 (a 2 MiB tmpfs; needs root to mount) -----------------
# (moerun train checks --ckpt-dir's free space before the first step; a checkpoint copy does not,
# and writes with the same CheckpointWriter as convert --from hf.)
mnt=$tmp/full
mkdir -p "$mnt"
if mount -t tmpfs -o size=2m tmpfs "$mnt" 2>/dev/null; then
  out=$(timeout 300 mpiexec -n 2 --oversubscribe "$MOERUN" convert --reshard "$ckpt" "$mnt/copy" 2>&1); rc=$?
  want="checkpoint step 4: writing $mnt/copy/step_4/tensors.h5 failed: No space left on device"
  if [[ $rc -ne 1 ]] || ! grep -qF "$want" <<<"$out"; then
    echo "FAIL: a checkpoint copy to a full disk -> exit $rc, expected 1 and '$want'"; show "$out"; fail=1
  elif grep -F "$want" <<<"$out" | grep -q "H5D"; then
    echo "FAIL: the full-disk error still carries HDF5's call chain"; show "$out"; fail=1
  elif grep -q "MPI_ABORT" <<<"$out"; then
    echo "FAIL: a full disk on rank 0 aborted the MPI world"; show "$out"; fail=1
  else
    echo "ok:   a full disk is named: $(grep -F "$want" <<<"$out" | head -1)"
  fi
  [[ -e $mnt/copy/step_4/manifest.json ]] && { echo "FAIL: a step was committed on the full disk"; fail=1; }
  umount "$mnt"
else
  echo "skip: cannot mount a tmpfs here (not root?): the full-disk check did not run"
fi

# ---- resume on 1 rank to step 6 ---------------------------------------------------------------
run1=$tmp/run1
out=$(timeout 300 "$MOERUN" train "${common[@]}" --steps 6 --resume "$ckpt" --out "$run1" 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then
  echo "FAIL: moerun train --resume on 1 rank -> exit $rc"; show "$out"; fail=1
else
  grep -qF "resumed from $ckpt step 4 (written by 2 rank(s), EP 2)" <<<"$out" ||
    { echo "FAIL: no 'resumed from ... step 4' line"; show "$out"; fail=1; }
  n=$(grep -c '"type":"train"' "$run1/metrics.jsonl")
  [[ $n -eq 2 ]] || { echo "FAIL: the resumed run logged $n train steps, expected 2 (5 and 6)"; fail=1; }
  grep '"type":"train"' "$run1/metrics.jsonl" | grep -qE '"step":6[,}]' || { echo "FAIL: no train line for step 6"; fail=1; }
  [[ -s $run1/ckpt/step_6/manifest.json ]] || { echo "FAIL: the resumed run did not save step 6"; fail=1; }
  [[ $fail -eq 0 ]] && echo "ok:   resumed on 1 rank from step 4 to step 6"
fi

# ---- a flipped byte in the middle of a tensor's data -------------------------------------------
h5=$ckpt/step_4/tensors.h5
dset=layers.1.moe.w13
layout=$(h5dump -p -H -d "/$dset" "$h5" 2>&1)
offset=$(awk '/OFFSET/ {print $2; exit}' <<<"$layout")
size=$(awk '/SIZE/ {print $2; exit}' <<<"$layout")
if ! [[ $offset =~ ^[0-9]+$ && $size =~ ^[0-9]+$ ]]; then
  echo "FAIL: no contiguous storage offset for /$dset in h5dump output"; show "$layout"; exit 1
fi
pos=$((offset + size / 2))
byte=$(od -An -tu1 -j "$pos" -N1 "$h5" | tr -d ' ')
printf '%b' "\\$(printf '%03o' $((byte ^ 0x40)))" | dd of="$h5" bs=1 seek="$pos" conv=notrunc status=none
[[ $(od -An -tu1 -j "$pos" -N1 "$h5" | tr -d ' ') -eq $((byte ^ 0x40)) ]] || { echo "FAIL: the byte was not flipped"; exit 1; }

out=$(timeout 120 "$MOERUN" inspect "$ckpt" 2>&1); rc=$?
if [[ $rc -ne 1 ]]; then
  echo "FAIL: moerun inspect of the damaged step -> exit $rc, expected 1"; show "$out"; fail=1
elif ! grep -F "$h5" <<<"$out" | grep -qF "/$dset"; then
  echo "FAIL: moerun inspect does not name $h5 and /$dset"; show "$out"; fail=1
elif [[ $(grep -c "^\[r0 error\] moerun inspect: error" <<<"$out") -ne 1 ]]; then
  echo "FAIL: moerun inspect printed $(grep -c "^\[r0 error\] moerun inspect: error" <<<"$out") error lines, expected 1"; show "$out"; fail=1
else
  echo "ok:   moerun inspect of the damaged step -> exit 1: $(grep -F "/$dset" <<<"$out" | head -1 | sed 's/^ *//')"
fi
# The earlier step is untouched.
out=$(timeout 120 "$MOERUN" inspect "$ckpt" --step 2 2>&1); rc=$?
[[ $rc -eq 0 ]] || { echo "FAIL: moerun inspect --step 2 after damaging step 4 -> exit $rc"; show "$out"; fail=1; }

for n in 1 2; do
  bad=$tmp/bad$n
  out=$(timeout 300 mpiexec -n $n --oversubscribe "$MOERUN" train "${common[@]}" --steps 6 \
    --resume "$ckpt" --out "$bad" 2>&1); rc=$?
  if [[ $rc -ne 1 ]]; then
    echo "FAIL: resume from the damaged step on $n rank(s) -> exit $rc, expected 1"; show "$out"; fail=1
  elif grep -q "MPI_ABORT" <<<"$out"; then
    echo "FAIL: resume from the damaged step on $n rank(s) aborted the MPI world"; show "$out"; fail=1
  elif [[ $(grep -c "error" <<<"$out") -ne 1 ]]; then
    echo "FAIL: resume on $n rank(s) printed $(grep -c error <<<"$out") error lines, expected 1"; show "$out"; fail=1
  elif ! grep "error" <<<"$out" | grep -F "$h5" | grep -qF "/$dset"; then
    echo "FAIL: the resume error on $n rank(s) does not name $h5 and /$dset"; show "$out"; fail=1
  else
    echo "ok:   resume from the damaged step on $n rank(s) -> exit 1: $(grep error <<<"$out")"
  fi
  [[ -e $bad/ckpt/step_6 ]] && { echo "FAIL: the failed resume on $n rank(s) wrote a checkpoint"; fail=1; }
done

[[ $fail -eq 0 ]] && echo "all checkpoint CLI checks passed"
exit $fail
