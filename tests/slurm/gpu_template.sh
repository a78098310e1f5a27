#!/usr/bin/env bash
# The GPU variant of the template: `sbatch --test-only` accepts slurm/train-gpu.sbatch as written
# (2 nodes x 2 ranks, one GPU per rank) and slurm/train.sbatch, and refuses the GPU header asking
# for more GPUs than a node has (so the check does look at GPUs). Then a 2-step job through the
# GPU header runs the shared job body (found through the job's Command) to completion. The local
# cluster's GPUs are fake (GRES over /dev/null devices); the training itself runs on the CPU.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
source "$SRC/tests/slurm/lib.sh"
slurm_require 2 2
if ! sinfo -h -N -o '%G' | grep -qE 'gpu:[2-9]'; then
  echo "SKIP: the Slurm cluster has no nodes with 2 or more GPUs (slurm/local-cluster.sh up gives" \
    "each node fake ones where mknod is allowed)"
  exit 77
fi
slurm_setup
fail=0
t0=$SECONDS

for t in train-gpu.sbatch train.sbatch; do
  if out=$(cd "$tmp" && sbatch --test-only "$SRC/slurm/$t" 2>&1) && grep -q "to start at" <<<"$out"; then
    echo "ok:   sbatch --test-only slurm/$t: $out"
  else
    echo "FAIL: sbatch --test-only slurm/$t refused it:"; sed 's/^/    /' <<<"$out"; fail=1
  fi
done
gpus=$(sinfo -h -N -o '%G' | grep -oP 'gpu:\K[0-9]+' | sort -n | tail -1)
if out=$(cd "$tmp" && sbatch --test-only --gpus-per-task=$((gpus + 1)) "$SRC/slurm/train-gpu.sbatch" 2>&1); then
  echo "FAIL: sbatch --test-only accepted $((gpus + 1)) GPUs per task on nodes of $gpus:"
  sed 's/^/    /' <<<"$out"; fail=1
fi

name=moerun-test-gpu-$$
job=$(submit "$tmp" -J "$name" --time=10 --export=ALL,STEPS=2 "$SRC/slurm/train-gpu.sbatch") || exit 1
st=$(wait_done "$job" 300)
log=$tmp/$name-$job.out
if [[ $st != COMPLETED ]]; then
  echo "FAIL: the 2-step job $job through train-gpu.sbatch ended $st ($(job_field "$job" ExitCode))"
  show_log "$log"; fail=1
elif [[ $(job_field "$job" TresPerTask) != *gpu:1* ]]; then
  echo "FAIL: job $job holds no GPUs:"; scontrol show job "$job" | sed 's/^/    /'; fail=1
else
  grep -qE 'step 2/2 \| loss' "$log" || { echo "FAIL: no 'step 2/2 | loss' line"; show_log "$log"; fail=1; }
fi
((fail)) && exit 1
echo "ok:   a 2-step job through slurm/train-gpu.sbatch COMPLETED with GPUs allocated ($((SECONDS - t0)) s)"
