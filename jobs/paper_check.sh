#!/usr/bin/env bash
# The Loss-Free Balancing paper check: trains one preset three times (same config, seed, steps
# and tokens), changing only the balancing, then prints a Markdown table like the paper's
# Table 2 (validation loss, MaxVio_global, tokens/s) with the paper's numbers beside it.
#
# Usage: jobs/paper_check.sh [--steps N] [--ranks R] [--preset NAME] [--out DIR] [--dry-run]
#                            [--moerun PATH] [-- EXTRA TRAIN OPTIONS...]
#   --steps N      training steps per variant (default 200)
#   --ranks R      MPI ranks, mpirun -n R (default 2)
#   --preset NAME  jobs/presets/NAME.ini (default tiny)
#   --out DIR      runs go to DIR/loss-free, DIR/aux, DIR/none, logs to DIR/<variant>.log
#                  (default runs/paper_check_<preset>, under the source tree)
#   --dry-run      print the commands only
#   --moerun PATH  the binary (default build/moerun)
#   -- ...         passed to every `moerun train` unchanged (e.g. -- --seed 7)
# Variants:  loss-free  --balance loss-free --bias-update sign --bias-update-rate 1e-3
#            aux        --balance aux --aux-alpha1 1e-3
#            none       --balance none
# The table alone, from existing runs: jobs/paper_table.py DIR/loss-free DIR/aux DIR/none
set -euo pipefail
prog=paper_check.sh

usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; }
die() { echo "$prog: error: $*" >&2; exit 1; }
usage_error() { echo "$prog: error: $*" >&2; echo "Try '$prog --help'." >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
steps=200 ranks=2 preset=tiny out="" dry_run=0 moerun=build/moerun
extra=()
need_value() { [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --steps) need_value "$@"; steps=$2; shift 2 ;;
    --steps=*) steps=${1#*=}; shift ;;
    --ranks) need_value "$@"; ranks=$2; shift 2 ;;
    --ranks=*) ranks=${1#*=}; shift ;;
    --preset) need_value "$@"; preset=$2; shift 2 ;;
    --preset=*) preset=${1#*=}; shift ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --moerun) need_value "$@"; moerun=$2; shift 2 ;;
    --moerun=*) moerun=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) usage_error "unknown option '$1'" ;;
  esac
done
[[ $steps =~ ^[1-9][0-9]*$ ]] || usage_error "--steps must be a positive integer, got '$steps'"
[[ $ranks =~ ^[1-9][0-9]*$ ]] || usage_error "--ranks must be a positive integer, got '$ranks'"
[[ $preset =~ ^[A-Za-z0-9._-]+$ ]] || usage_error "--preset must be a preset name, got '$preset'"

# Paths the user typed are relative to where they stand; the run itself happens in the source
# tree so that the printed commands read build/moerun and jobs/presets/....
[[ -n $out ]] || out=$root/runs/paper_check_$preset
out=$(realpath -m -- "$out")
# A --moerun given by the user is relative to their directory; the default to the source tree.
if [[ $moerun != build/moerun && $moerun == */* && $moerun != /* ]]; then moerun=$(realpath -m -- "$moerun"); fi
cd "$root"
config=jobs/presets/$preset.ini

if [[ -x /usr/bin/python3 ]]; then py=/usr/bin/python3
elif command -v python3 >/dev/null 2>&1; then py=python3
else die "python3 not found"; fi

if (( !dry_run )); then
  [[ -f $config ]] || die "no preset '$preset' ($root/$config does not exist)"
  [[ -x $moerun ]] || die "moerun binary '$moerun' not found or not executable (build first: cmake --build build)"
  command -v mpirun >/dev/null 2>&1 || die "mpirun not found (install openmpi-bin)"
elif [[ ! -f $config ]]; then
  echo "$prog: warning: $root/$config does not exist" >&2
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1

variants=(loss-free aux none)
variant_options() {
  case $1 in
    loss-free) echo "--balance loss-free --bias-update sign --bias-update-rate 1e-3" ;;
    aux) echo "--balance aux --aux-alpha1 1e-3" ;;
    none) echo "--balance none" ;;
  esac
}

quoted() {  # a command as one copy-pasteable line
  local s
  s=$(printf ' %q' "$@")
  echo "${s# }"
}
mpi_env="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
mpi_env+=" OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1"

if (( dry_run )); then
  echo "# in $root"
  echo "mkdir -p $(printf '%q' "$out")"
else
  mkdir -p "$out" || die "cannot create '$out'"
fi
run_dirs=()
for v in "${variants[@]}"; do
  # shellcheck disable=SC2207
  opts=($(variant_options "$v"))
  cmd=(mpirun -n "$ranks" "$moerun" train --config "$config" --steps "$steps" --out "$out/$v"
       "${opts[@]}" "${extra[@]}")
  run_dirs+=("$out/$v")
  if (( dry_run )); then
    echo "$mpi_env $(quoted "${cmd[@]}")"
    continue
  fi
  echo "$prog: [$v] $(quoted "${cmd[@]}")" >&2
  echo "$prog: [$v] log: $out/$v.log" >&2
  start=$SECONDS
  if ! "${cmd[@]}" 2>&1 | tee "$out/$v.log"; then
    die "variant '$v' failed after $((SECONDS - start)) s; see $out/$v.log"
  fi
  echo "$prog: [$v] done in $((SECONDS - start)) s" >&2
done

if (( dry_run )); then
  quoted "$py" jobs/paper_table.py "${run_dirs[@]}"
  exit 0
fi

echo
echo "## Loss-Free Balancing check: preset $preset, $ranks ranks, $steps steps"
echo
"$py" jobs/paper_table.py "${run_dirs[@]}" || die "could not build the table from $out"
