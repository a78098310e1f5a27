#!/usr/bin/env bash
# jobs/quickstart.sh - install packages, build, and run the default job on 2 MPI ranks.
#
# Usage: jobs/quickstart.sh [--ranks N] [-- MOERUN_ARGS...]
#   --ranks N     MPI ranks (default 2; more than the cores is allowed, it oversubscribes)
#   MOERUN_ARGS   replace the default job's arguments (default: bench moe-layer)
# The default job is the expert-parallel MoE layer benchmark: one DeepSeekMoE layer, forward +
# backward, experts sharded over the ranks, with a per-phase table and a JSON summary line.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RANKS=2
ARGS=(bench moe-layer)
while (($#)); do
  case $1 in
    --ranks)
      [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "quickstart.sh: --ranks needs a positive integer" >&2; exit 2; }
      RANKS=$2; shift ;;
    -h | --help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; ARGS=("$@"); break ;;
    *) echo "quickstart.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

"$ROOT/jobs/setup.sh"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1
echo "quickstart.sh: mpirun -n $RANKS build/moerun ${ARGS[*]}"
exec mpirun -n "$RANKS" --oversubscribe "$ROOT/build/moerun" "${ARGS[@]}"
