#!/usr/bin/env bash
# Training throughput, MFU and 2-rank weak scaling of the tiny and small presets, side by side in
# one run: `moerun bench train` at 1 rank, then at 2 ranks with --weak-scaling (each rank keeps
# the 1-rank per-rank batch). Weak-scaling efficiency = tokens/s per rank at 2 / at 1.
#
#   tests/perf/bench_train.sh [--presets "tiny small"] [--measure-steps N]
# Needs build/moerun and data/default.h5 (jobs/make_default_dataset.sh). Prints a Markdown table.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PRESETS="tiny small"
MEASURE=3
while (($#)); do
  case $1 in
    --presets) PRESETS=$2; shift ;;
    --measure-steps) MEASURE=$2; shift ;;
    -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_train.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
cd "$ROOT"
[[ -x build/moerun ]] || { echo "bench_train.sh: build/moerun missing (run jobs/setup.sh)" >&2; exit 1; }
[[ -f data/default.h5 ]] || { echo "bench_train.sh: data/default.h5 missing (run jobs/make_default_dataset.sh)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=$(command -v /usr/bin/python3 || command -v python3)
echo "| preset | ranks | global batch | tokens/s | tokens/s per rank | MFU | weak-scaling eff. |"
echo "|---|---|---|---|---|---|---|"
for p in $PRESETS; do
  mpirun -n 1 build/moerun bench train --config "jobs/presets/$p.ini" --measure-steps "$MEASURE" \
    --threads 1 --out "$tmp/$p-1" > "$tmp/$p-1.out"
  mpirun -n 2 build/moerun bench train --config "jobs/presets/$p.ini" --measure-steps "$MEASURE" \
    --threads 1 --weak-scaling --out "$tmp/$p-2" > "$tmp/$p-2.out"
  "$PY" - "$p" "$tmp/$p-1.out" "$tmp/$p-2.out" <<'PYEOF'
import json, sys
name, a, b = sys.argv[1:4]
def last(path):
    for line in reversed(open(path).read().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.exit(f"bench_train.sh: no JSON line in {path}")
one, two = last(a), last(b)
eff = two["tokens_per_s_per_rank"] / one["tokens_per_s_per_rank"]
for r in (one, two):
    e = f"{eff:.0%}" if r is two else "-"
    print(f"| {name} | {r['ranks']} | {r['global_batch']} | {r['tokens_per_s']:.0f} | "
          f"{r['tokens_per_s_per_rank']:.0f} | {r['mfu']:.1%} | {e} |")
PYEOF
done
