#!/usr/bin/env bash
# --exit-before-limit under a short time limit: slurm/train.sbatch with --time=4 and
# EXIT_BEFORE_LIMIT=3.9 stops its ranks about 6 s after the start (fewer than 3.9 of the 4 minutes
# left), saves, and rank 0 requeues the job: no TIMEOUT, no kill. The requeued job gets a longer
# limit (scontrol update TimeLimit=30, as an operator would) and finishes from that checkpoint.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
source "$SRC/tests/slurm/lib.sh"
slurm_require 2 2
slurm_setup
fail=0
t0=$SECONDS
steps=100

name=moerun-test-limit-$$
job=$(submit "$tmp" -J "$name" -N 2 --ntasks-per-node=2 --time=4 \
  --export=ALL,STEPS=$steps,EXIT_BEFORE_LIMIT=3.9 "$SRC/slurm/train.sbatch") || exit 1
log=$tmp/$name-$job.out
m=$tmp/runs/$name/metrics.jsonl

# the first start ends by itself (requeued: pending again, Restarts=1) well before its 4 minutes
if ! wait_for '[[ $(job_field "$job" Restarts) == 1 && $(job_field "$job" JobState) == PENDING ]]' 200; then
  echo "FAIL: job $job was not requeued ($(job_field "$job" JobState), Restarts=$(job_field "$job" Restarts))"
  show_log "$log"; exit 1
fi
scontrol update JobId="$job" TimeLimit=30 || { echo "FAIL: scontrol update TimeLimit"; exit 1; }
st=$(wait_done "$job" 400)
if [[ $st != COMPLETED ]]; then
  echo "FAIL: job $job ended $st, expected COMPLETED"; show_log "$log"; exit 1
fi

stop=$(grep -oP 'stopped by the time limit \(--exit-before-limit 3.9\) at step \K[0-9]+' "$log" | head -1)
if [[ -z $stop ]]; then
  echo "FAIL: the log lacks 'stopped by the time limit (--exit-before-limit 3.9) at step S'"; fail=1
elif ((stop >= steps)); then
  echo "FAIL: stopped at step $stop, not before the end ($steps)"; fail=1
fi
grep -qE "checkpoint step ${stop:-x}:" "$log" || { echo "FAIL: no checkpoint of step $stop in the log"; fail=1; }
# Rank 0's `scontrol requeue` may be ended by the very termination it asks for (the job's
# processes get SIGTERM) before it prints: then Slurm's own line says the requeue happened.
grep -qF "requeued Slurm job $job (restart 1 of at most 10)" "$log" ||
  grep -qE "JOB $job ON node[0-9]+ CANCELLED AT \S+ DUE TO JOB REQUEUE" "$log" ||
  { echo "FAIL: the log says neither 'requeued Slurm job $job (restart 1 of at most 10)' nor" \
    "'JOB $job ... CANCELLED ... DUE TO JOB REQUEUE'"; fail=1; }
grep -qiE 'time limit.*cancel|cancel.*time limit|DUE TO TIME LIMIT' "$log" &&
  { echo "FAIL: Slurm killed the job at its time limit"; fail=1; }
grep -qE "resum.* step ${stop:-x}\b" "$log" || { echo "FAIL: the second start does not resume step $stop"; fail=1; }
last=$(grep '"type":"train"' "$m" | tail -1 | grep -oP '"step":\K[0-9]+')
[[ $last == "$steps" ]] || { echo "FAIL: the last train line is step $last, expected $steps"; fail=1; }
[[ $(cat "$tmp/checkpoints/$name/latest" 2>/dev/null) == "$steps" ]] ||
  { echo "FAIL: the final checkpoint is not step $steps"; fail=1; }
if ((fail)); then show_log "$log"; exit 1; fi
echo "ok:   --time=4, EXIT_BEFORE_LIMIT=3.9: stopped at step $stop, saved, requeued; the requeued" \
  "job finished step $steps ($((SECONDS - t0)) s)"
