#!/usr/bin/env bash
# --zero 1 through the binary: 4 steps of the tiny preset on 2 ranks at EP 1 with ZeRO-1 and
# without give the same losses to 1e-6 (metrics.jsonl); config.ini records `zero = 1`; the ZeRO-1
# checkpoint verifies (`moerun inspect`) and resumes without ZeRO on 1 rank to step 6; a bad
# value is one error line naming --zero.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
show() { sed 's/^/    /' <<<"$1"; }

source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 3 11
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 200

common=(--config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" --warmup-steps 1 --eval-every 0
  --ep-size 1 --threads 1)
for z in 0 1; do
  out=$(timeout 300 mpiexec -n 2 --oversubscribe "$MOERUN" train "${common[@]}" --steps 4 \
    --zero "$z" --out "$tmp/run$z" 2>&1); rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: moerun train --zero $z (2 ranks) -> exit $rc"; show "$out"; exit 1
  fi
done
grep -qx "zero = 1" "$tmp/run1/config.ini" || { echo "FAIL: config.ini lacks 'zero = 1'"; fail=1; }
# The train records' losses, side by side.
losses() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("type") == "train": print(r["loss"])' "$1"; }
if ! paste <(losses "$tmp/run0/metrics.jsonl") <(losses "$tmp/run1/metrics.jsonl") |
  awk 'BEGIN { n = 0; bad = 0 } { n++; d = $1 - $2; if (d < 0) d = -d; if (d > 1e-6 * $1) bad = 1 }
       END { exit (n == 4 && !bad) ? 0 : 1 }'; then
  echo "FAIL: losses with --zero 1 differ from --zero 0 (or not 4 train records)"
  paste <(losses "$tmp/run0/metrics.jsonl") <(losses "$tmp/run1/metrics.jsonl") | show "$(cat)"
  fail=1
else
  echo "ok:   4 steps, --zero 1 losses equal --zero 0 to 1e-6"
fi
out=$(timeout 120 "$MOERUN" inspect "$tmp/run1/ckpt" 2>&1); rc=$?
if [[ $rc -ne 0 ]] || ! grep -qF "checksums verified" <<<"$out"; then
  echo "FAIL: moerun inspect of the ZeRO-1 checkpoint -> exit $rc"; show "$out"; fail=1
fi
out=$(timeout 300 "$MOERUN" train "${common[@]}" --steps 6 --zero 0 --out "$tmp/resumed" \
  --resume "$tmp/run1/ckpt" 2>&1); rc=$?
if [[ $rc -ne 0 ]] || [[ $(cat "$tmp/resumed/ckpt/latest" 2>/dev/null) != 6 ]]; then
  echo "FAIL: resuming the ZeRO-1 checkpoint without ZeRO on 1 rank -> exit $rc"; show "$out"
  fail=1
else
  echo "ok:   ZeRO-1 checkpoint of 2 ranks resumed without ZeRO on 1 rank to step 6"
fi
out=$(timeout 60 "$MOERUN" train "${common[@]}" --zero 2 --out "$tmp/bad" 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -qF -- "--zero must be 0" <<<"$out"; then
  echo "FAIL: --zero 2 -> exit $rc"; show "$out"; fail=1
fi
exit $fail
