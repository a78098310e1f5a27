#!/usr/bin/env bash
# jobs/quickstart.sh - install packages, build, build the default dataset, and train the tiny
# DeepSeekMoE preset on 2 MPI ranks; ends by plotting the loss and MaxVio curves.
#
# Usage: jobs/quickstart.sh [--ranks N] [--steps N] [-- MOERUN_TRAIN_ARGS...]
#   --ranks N     MPI ranks (default 2; more than the cores is allowed, it oversubscribes)
#   --steps N     optimizer steps (default: the preset's, 300)
#   MOERUN_TRAIN_ARGS  extra options for `moerun train` (see `build/moerun train --help`)
# Output: runs/tiny/ (metrics.jsonl, config.ini, loss.png, maxvio.png, throughput.png).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RANKS=2
EXTRA=()
while (($#)); do
  case $1 in
    --ranks)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "quickstart.sh: --ranks needs a positive integer" >&2; exit 2; }
      RANKS=$2; shift ;;
    --steps)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "quickstart.sh: --steps needs a positive integer" >&2; exit 2; }
      EXTRA+=(--steps "$2"); shift ;;
    -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) echo "quickstart.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

"$ROOT/jobs/setup.sh"
cd "$ROOT"
jobs/make_default_dataset.sh data/default.h5

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1
# Ctrl-C: mpirun gives the ranks this many seconds after its SIGTERM to finish the step and save
# before SIGKILL (its default, 1 s, is too short for a large model).
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-60}
echo "quickstart.sh: mpirun -n $RANKS build/moerun train --config jobs/presets/tiny.ini ${EXTRA[*]}"
mpirun -n "$RANKS" --oversubscribe build/moerun train --config jobs/presets/tiny.ini "${EXTRA[@]}"
jobs/plot.sh runs/tiny
