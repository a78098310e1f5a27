#!/usr/bin/env bash
# `sbatch slurm/train.sbatch` on 2 fake nodes x 2 tasks trains the tiny preset to completion: the
# job COMPLETED with exit 0, its one log has the loss lines, metrics.jsonl every step and the ranks
# on two hosts (the fake nodes, 2 ranks each, launched by srun), and the
# final checkpoint is committed under checkpoints/<job name> and verifies (moerun inspect).
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
source "$SRC/tests/slurm/lib.sh"
slurm_require 2 2
slurm_setup
fail=0
t0=$SECONDS

name=moerun-test-train-$$
job=$(submit "$tmp" -J "$name" -N 2 --ntasks-per-node=2 --time=10 --export=ALL,STEPS=6 \
  "$SRC/slurm/train.sbatch") || exit 1
st=$(wait_done "$job" 300)
log=$tmp/$name-$job.out
if [[ $st != COMPLETED || $(job_field "$job" ExitCode) != 0:0 ]]; then
  echo "FAIL: job $job ended $st, exit code $(job_field "$job" ExitCode), expected COMPLETED 0:0"
  show_log "$log"; exit 1
fi
[[ $(job_field "$job" NodeList) == "node[1-2]" || $(job_field "$job" NumNodes) == 2 ]] ||
  { echo "FAIL: job $job ran on $(job_field "$job" NodeList), expected 2 nodes"; fail=1; }
grep -qF "2 node(s) x 2 rank(s)" "$log" ||
  { echo "FAIL: the log does not announce 2 nodes x 2 ranks"; fail=1; }
grep -qE 'step 6/6 \| loss [0-9]+\.[0-9]+' "$log" || { echo "FAIL: no 'step 6/6 | loss' line in the log"; fail=1; }
grep -q "moerun exited 0" "$log" || { echo "FAIL: the log does not end with 'moerun exited 0'"; fail=1; }
m=$tmp/runs/$name/metrics.jsonl
[[ $(train_lines "$m") -eq 6 ]] || { echo "FAIL: $m has $(train_lines "$m") train lines, expected 6"; fail=1; }
run=$(grep -m1 '"type":"run"' "$m")
for kv in '"ranks":4' '"nodes":2' '"launcher":"srun"'; do
  grep -qF "$kv" <<<"$run" || { echo "FAIL: the run line of $m lacks $kv: $run"; fail=1; }
done
# ranks 0,1 on one fake node and 2,3 on another (whichever two Slurm chose)
grep -qP '"hosts":\["(node\d+)","\1","(?!\1")(node\d+)","\2"\]' <<<"$run" ||
  { echo "FAIL: the run line's hosts are not 2 nodes x 2 ranks: $run"; fail=1; }
ck=$tmp/checkpoints/$name
[[ $(cat "$ck/latest" 2>/dev/null) == 6 ]] || { echo "FAIL: $ck/latest does not name step 6"; fail=1; }
if ! out=$("$MOERUN" inspect "$ck" 2>&1); then
  echo "FAIL: moerun inspect $ck (checksums of the committed checkpoint) failed"; sed 's/^/    /' <<<"$out"; fail=1
fi
if ((fail)); then show_log "$log"; exit 1; fi
echo "ok:   sbatch slurm/train.sbatch, 2 nodes x 2 tasks, tiny 6 steps: COMPLETED, checkpoint step 6" \
  "verifies ($((SECONDS - t0)) s)"
