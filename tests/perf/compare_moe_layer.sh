#!/usr/bin/env bash
# Side-by-side: one DeepSeekMoE layer forward+backward in moerun (MPI expert parallel, OpenBLAS)
# vs the same layer in PyTorch eager CPU fp32 (tests/perf/torch_moe_layer.py), same cores.
#
#   tests/perf/compare_moe_layer.sh [extra args passed to BOTH benchmarks, e.g. --iters 3]
#
# (a) mpirun -n $NP $BUILD_DIR/moerun bench moe-layer --json   one rank per core, 1 BLAS thread
#     each; T=4096 tokens per rank, so NP=2 ranks process 8192 tokens per step
# (b) torch_moe_layer.py --tokens $TORCH_TOKENS --threads $NP --json   one process, NP threads
#
# Environment:
#   BUILD_DIR      moerun build directory (default: <repo>/build)
#   NP             MPI ranks = torch threads (default 2, the cores of this machine)
#   TORCH_TOKENS   tokens for the torch run (default 4096 * NP)
#   PYTHON         interpreter with torch (default /usr/bin/python3, Debian's torch 1.13)
#   OPENBLAS_CORETYPE  passed to both unchanged.  Debian's OpenBLAS 0.3.21 falls back to its
#                  generic "Prescott" kernels on CPUs it does not recognise; the table shows
#                  the core torch saw.  Both sides load the same libopenblas, so both get it.
#
# Prints a table and, last, one JSON line:
#   {"bench": "moe-layer-vs-torch", "moerun_tokens_per_s": .., "torch_tokens_per_s": ..,
#    "speedup": ..}
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$REPO_ROOT/build}"
NP="${NP:-2}"
TORCH_TOKENS="${TORCH_TOKENS:-$((4096 * NP))}"
PYTHON="${PYTHON:-/usr/bin/python3}"
MOERUN="$BUILD_DIR/moerun"

die() { echo "compare_moe_layer.sh: error: $*" >&2; exit 1; }

if [[ ! -x "$MOERUN" ]]; then
  die "moerun binary not found at $MOERUN.
  Build it first: run jobs/setup.sh from the repository root (or set BUILD_DIR to your build)."
fi
command -v mpirun >/dev/null 2>&1 || die "mpirun not found on PATH"
[[ -x "$PYTHON" ]] || die "python interpreter $PYTHON not found (set PYTHON)"
"$PYTHON" -c 'import torch' 2>/dev/null || die "$PYTHON cannot import torch"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Last line of a file that parses as a JSON object whose "bench" is $2; prints it compactly.
last_json() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
path, bench = sys.argv[1], sys.argv[2]
found = None
with open(path, errors="replace") as f:
    for line in f:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("bench") == bench:
            found = obj
if found is None:
    sys.exit(1)
print(json.dumps(found))
EOF
}

echo "== moerun: mpirun -n $NP $MOERUN bench moe-layer --json $*" >&2
if ! env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
       OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1 \
       mpirun -n "$NP" "$MOERUN" bench moe-layer --json "$@" >"$tmp/moerun.out"; then
  cat "$tmp/moerun.out" >&2
  die "moerun bench moe-layer failed"
fi
moerun_json="$(last_json "$tmp/moerun.out" moe-layer)" || {
  cat "$tmp/moerun.out" >&2
  die "no {\"bench\": \"moe-layer\", ...} JSON line in moerun's output"
}

echo "== torch: $PYTHON tests/perf/torch_moe_layer.py --tokens $TORCH_TOKENS --threads $NP --json $*" >&2
if ! env OMP_WAIT_POLICY=PASSIVE "$PYTHON" "$REPO_ROOT/tests/perf/torch_moe_layer.py" \
       --tokens "$TORCH_TOKENS" --threads "$NP" --json "$@" >"$tmp/torch.out"; then
  cat "$tmp/torch.out" >&2
  die "torch_moe_layer.py failed"
fi
torch_json="$(last_json "$tmp/torch.out" torch-moe-layer)" || {
  cat "$tmp/torch.out" >&2
  die "no {\"bench\": \"torch-moe-layer\", ...} JSON line in torch's output"
}

"$PYTHON" - "$moerun_json" "$torch_json" "$NP" <<'EOF'
import json, sys
m, t, np_ = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
try:
    mt, tt = float(m["tokens_per_s"]), float(t["tokens_per_s"])
except (KeyError, TypeError, ValueError) as e:
    sys.exit(f"compare_moe_layer.sh: error: missing/invalid tokens_per_s: {e}")
speedup = mt / tt if tt > 0 else float("nan")

# Same shape on both sides?  Only fields that moerun reports are compared.
for key in ("hidden", "ffn", "experts", "topk", "shared"):
    if key in m and key in t and m[key] != t[key]:
        print(f"WARNING: shapes differ: moerun {key}={m[key]} vs torch {key}={t[key]}",
              file=sys.stderr)

if "tokens" in m and m["tokens"] != t.get("tokens"):
    print(f"NOTE: moerun reports tokens={m['tokens']}, torch ran tokens={t.get('tokens')} "
          f"(set TORCH_TOKENS to match the total tokens per step)", file=sys.stderr)

def fmt(v, spec):
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return "-"


rows = [
    ("", "moerun", "torch"),
    ("ranks x threads", f"{np_} x 1", f"1 x {t.get('threads', '?')}"),
    ("tokens / step", str(m.get("tokens", "-")), str(t.get("tokens", "-"))),
    ("fwd+bwd s", fmt(m.get("fwd_bwd_s"), ".4f"), fmt(t.get("fwd_bwd_s"), ".4f")),
    ("tokens/s", f"{mt:.1f}", f"{tt:.1f}"),
    ("GFLOP/s", fmt(m.get("gflops"), ".2f"), fmt(t.get("gflops"), ".2f")),
    ("blas core", str(m.get("blas_core", "-")), str(t.get("blas_core", "-"))),
]
w0 = max(len(r[0]) for r in rows)
w1 = max(len(r[1]) for r in rows)
w2 = max(len(r[2]) for r in rows)
print(f"DeepSeekMoE layer fwd+bwd, H={t['hidden']} F={t['ffn']} E={t['experts']} "
      f"K={t['topk']} S={t['shared']}")
for r in rows:
    print(f"  {r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>{w2}}")
print(f"  speedup (moerun / torch tokens/s): {speedup:.2f}x")
print(json.dumps({"bench": "moe-layer-vs-torch", "moerun_tokens_per_s": mt,
                  "torch_tokens_per_s": tt, "speedup": speedup}))
EOF
