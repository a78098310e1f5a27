#!/usr/bin/env bash
# Preemption drill: USR1 to a running slurm/train.sbatch job (`scancel --signal=USR1`, which the
# template's --signal=USR1@120 also sends: to the ranks). The ranks agree, save, rank 0 requeues
# the job; the requeued job (released with `scontrol update StartTime=now`: a one-host cluster
# holds it ~2 min) resumes from its own checkpoint with --resume auto and finishes. Its final loss
# and validation loss equal BITWISE those of an uninterrupted job of the same layout (2 nodes x 2
# ranks, 1 BLAS thread each), which runs beside it.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
source "$SRC/tests/slurm/lib.sh"
slurm_require 2 4 # two jobs of 2 nodes x 2 tasks at once
slurm_setup
fail=0
t0=$SECONDS
steps=30

ref=moerun-test-ref-$$
name=moerun-test-usr1-$$
rjob=$(submit "$tmp" -J "$ref" -N 2 --ntasks-per-node=2 --time=10 --export=ALL,STEPS=$steps \
  "$SRC/slurm/train.sbatch") || exit 1
job=$(submit "$tmp" -J "$name" -N 2 --ntasks-per-node=2 --time=10 --export=ALL,STEPS=$steps \
  "$SRC/slurm/train.sbatch") || exit 1
log=$tmp/$name-$job.out
m=$tmp/runs/$name/metrics.jsonl

# USR1 once the ranks train (3 steps logged: the handlers are installed, the run is mid-way)
if ! wait_for '(($(train_lines "$m") >= 3))' 240; then
  echo "FAIL: job $job did not reach step 3 ($(job_field "$job" JobState))"; show_log "$log"; exit 1
fi
scancel --signal=USR1 "$job" || { echo "FAIL: scancel --signal=USR1 $job"; exit 1; }
st=$(wait_done "$job" 400)
rst=$(wait_done "$rjob" 400)
if [[ $st != COMPLETED || $rst != COMPLETED ]]; then
  echo "FAIL: job $job ended $st, the uninterrupted job $rjob $rst; expected COMPLETED"
  show_log "$log"; show_log "$tmp/$ref-$rjob.out"; exit 1
fi

stop=$(grep -oP 'stopped by SIGUSR1 at step \K[0-9]+' "$log" | head -1)
if [[ -z $stop ]]; then
  echo "FAIL: the log lacks 'stopped by SIGUSR1 at step S'"; fail=1
elif ((stop >= steps)); then
  echo "FAIL: stopped at step $stop, not before the end ($steps)"; fail=1
fi
# Rank 0's `scontrol requeue` may be ended by the very termination it asks for (the job's
# processes get SIGTERM) before it prints: then Slurm's own line says the requeue happened.
grep -qF "requeued Slurm job $job (restart 1 of at most 10)" "$log" ||
  grep -qE "JOB $job ON node[0-9]+ CANCELLED AT \S+ DUE TO JOB REQUEUE" "$log" ||
  { echo "FAIL: the log says neither 'requeued Slurm job $job (restart 1 of at most 10)' nor" \
    "'JOB $job ... CANCELLED ... DUE TO JOB REQUEUE'"; fail=1; }
[[ $(job_field "$job" Restarts) == 1 ]] || { echo "FAIL: Restarts=$(job_field "$job" Restarts), expected 1"; fail=1; }
[[ $(grep -c "=== train.sbatch: job $job ($name) start" "$log") -eq 2 ]] ||
  { echo "FAIL: the log does not show 2 starts of the job"; fail=1; }
grep -qE "resum.* step ${stop:-x}\b" "$log" || { echo "FAIL: the second start does not resume step $stop"; fail=1; }
[[ $(grep -c '"type":"run"' "$m") -eq 2 ]] || { echo "FAIL: $m has $(grep -c '"type":"run"' "$m") run lines, expected 2"; fail=1; }
last=$(grep '"type":"train"' "$m" | tail -1 | grep -oP '"step":\K[0-9]+')
[[ $last == "$steps" ]] || { echo "FAIL: the last train line is step $last, expected $steps"; fail=1; }

rm_=$tmp/runs/$ref/metrics.jsonl
for f in "train loss" "eval val_loss"; do
  read -r type field <<<"$f"
  a=$(last_field "$m" "$type" "$field")
  b=$(last_field "$rm_" "$type" "$field")
  if [[ -z $a || $a != "$b" ]]; then
    echo "FAIL: final $type $field after the requeue '$a' differs from the uninterrupted run's '$b'"; fail=1
  else
    echo "ok:   final $type $field equal bitwise: $a"
  fi
done
if ((fail)); then show_log "$log"; exit 1; fi
echo "ok:   USR1 at step >= 3 -> stopped at step $stop, saved, requeued, resumed, finished step $steps" \
  "($((SECONDS - t0)) s)"
