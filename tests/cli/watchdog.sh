#!/usr/bin/env bash
# The step watchdog end to end: `moerun train` on 2 ranks with --step-timeout 10 and a checkpoint
# every 3 steps; after a few steps rank 1 is stopped with SIGSTOP (its pid read from its heartbeat
# file). The job must end by itself within a bound (60 s here; measured 9.7-10.8 s on 2 cores) with a
# non-zero exit, a message naming rank 1 as not answering and exit 75, and the newest committed
# checkpoint must still verify (`moerun inspect`). Every process is continued and killed at the end.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
job=""
stopped=""
cleanup() {
  # Nothing may be left running: continue the stopped rank, then end what is left.
  [[ -n $stopped ]] && kill -CONT "$stopped" 2>/dev/null
  [[ -n $job ]] && kill -TERM "$job" 2>/dev/null
  for hb in "$tmp"/run/heartbeat/rank-*; do
    [[ -f $hb ]] || continue
    p=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$hb")
    [[ -n $p ]] && kill -0 "$p" 2>/dev/null && grep -q moerun "/proc/$p/cmdline" 2>/dev/null &&
      { kill -CONT "$p"; kill -KILL "$p"; } 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

show() { sed 's/^/    /' <<<"$1"; }
field() { sed -n "s/.*\"$2\":\\([^,}]*\\).*/\\1/p" "$1" 2>/dev/null; }  # file key -> JSON value

# ---- dataset ----------------------------------------------------------------------------------
source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 3 7
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 200

# ---- bad values are config errors -------------------------------------------------------------
for bad in -1 abc nan inf; do
  out=$(timeout 120 "$MOERUN" train --config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" \
    --out "$tmp/bad" --step-timeout "$bad" 2>&1); rc=$?
  if [[ $rc -ne 1 ]] || ! grep -qE -- "--step-timeout( must be a number|' is invalid)" <<<"$out" ||
    [[ -e $tmp/bad/metrics.jsonl ]]; then
    echo "FAIL: --step-timeout $bad -> exit $rc, expected 1 naming the option"; show "$out"; fail=1
  fi
done

# ---- a training job whose rank 1 is stopped ---------------------------------------------------
run=$tmp/run
hb=$run/heartbeat
# Many steps: the job must end through the watchdog, not by finishing. `timeout` is a safety net.
timeout -k 10 600 mpiexec -n 2 --oversubscribe "$MOERUN" train --config "$SRC/jobs/presets/tiny.ini" \
  --data "$tmp/d.h5" --steps 100000 --warmup-steps 1 --eval-every 0 --log-every 1 --save-every 3 \
  --keep-last 0 --step-timeout 10 --out "$run" >"$tmp/log" 2>&1 &
job=$!

# Wait (up to 300 s) until both ranks have beaten past step 4, i.e. a checkpoint is committed.
for ((i = 0; i < 3000; i++)); do
  s0=$(field "$hb/rank-0" step); s1=$(field "$hb/rank-1" step)
  [[ -n $s0 && -n $s1 && $s0 -ge 4 && $s1 -ge 4 ]] && break
  kill -0 "$job" 2>/dev/null || break
  sleep 0.1
done
pid1=$(field "$hb/rank-1" pid)
if [[ -z ${s1:-} || ${s1:-0} -lt 4 || -z $pid1 ]] || ! kill -0 "$job" 2>/dev/null; then
  echo "FAIL: the job did not reach step 4 on both ranks (or ended early)"; show "$(cat "$tmp/log")"
  exit 1
fi
kill -STOP "$pid1"
stopped=$pid1
t0=$(date +%s.%N)
echo "     stopped rank 1 (pid $pid1) at step $(field "$hb/rank-1" step)"

# The job must end by itself; 60 s is the bound (a 10 s timeout + the reporting + mpirun's kill).
ended=0
for ((i = 0; i < 600; i++)); do
  if ! kill -0 "$job" 2>/dev/null; then ended=1; break; fi
  sleep 0.1
done
t1=$(date +%s.%N)
if [[ $ended -eq 0 ]]; then
  echo "FAIL: the job was still running 60 s after rank 1 was stopped"; show "$(cat "$tmp/log")"
  exit 1
fi
wait "$job"; rc=$?
job=""
state=$(awk '{print $3}' "/proc/$pid1/stat" 2>/dev/null)  # Z: killed, waiting to be reaped
if [[ -z $state || $state == Z ]]; then left="was killed"; else left="is still there, state $state"; fi
log=$(cat "$tmp/log")
awk -v a="$t0" -v b="$t1" -v rc="$rc" -v left="$left" \
  'BEGIN { printf "     SIGSTOP -> job end: %.1f s, mpiexec exit %d, the stopped rank %s\n", b - a, rc, left }'
if [[ $rc -eq 0 || $rc -eq 124 || $rc -eq 137 ]]; then
  echo "FAIL: the job ended with exit $rc, expected the watchdog's non-zero exit"; show "$log"; fail=1
fi
if ! grep -qE "moerun watchdog: ranks not answering: 1 \(host [^,]+, pid $pid1, last beat step [0-9]+" <<<"$log"; then
  echo "FAIL: no watchdog line names rank 1 (pid $pid1) as not answering"; show "$log"; fail=1
fi
if grep -qE "not answering: ([0-9]+ \([^)]*\); )*0 \(" <<<"$log"; then
  echo "FAIL: rank 0 (which was running) was named as not answering"; show "$log"; fail=1
fi
# Stopped time does not count: continued by mpirun (to deliver SIGTERM), rank 1 stays quiet.
if grep -qF "moerun watchdog: rank 1 (" <<<"$log"; then
  echo "FAIL: the stopped rank reported a timeout of its own after it was continued"; show "$log"; fail=1
fi
grep -qF "aborting (exit 75)" <<<"$log" || { echo "FAIL: no 'aborting (exit 75)' line"; show "$log"; fail=1; }
[[ $fail -eq 0 ]] && { echo "ok:   the watchdog ended the job:"; grep "moerun watchdog" <<<"$log" | sed 's/^/    /'; }

# ---- the newest committed checkpoint is intact ------------------------------------------------
latest=$(cat "$run/ckpt/latest" 2>/dev/null)
out=$(timeout 120 "$MOERUN" inspect "$run/ckpt" 2>&1); rc=$?
if [[ -z $latest || $rc -ne 0 ]] || ! grep -qF "step $latest " <<<"$out" || ! grep -qF "checksums verified" <<<"$out"; then
  echo "FAIL: moerun inspect of the last committed step ($latest) -> exit $rc"; show "$out"; fail=1
else
  echo "ok:   the last committed checkpoint (step $latest) verifies"
fi

[[ $fail -eq 0 ]] && echo "all watchdog CLI checks passed"
exit $fail
