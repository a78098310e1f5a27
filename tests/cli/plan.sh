#!/usr/bin/env bash
# `moerun plan` against the runtime and the papers:
# - all-to-all bytes per step equal the trainer's measured a2a_bytes (metrics.jsonl `train`
#   records, intra_node and inter_node) EXACTLY, on 2 fake nodes x 2 ranks (MOERUN_FAKE_RANKS_PER_NODE)
#   at EP 4 (crossing nodes, recompute none and full) and EP 2 (inside a node). Routing is
#   data-dependent, so the runs use top-k = experts: every token reaches every EP rank, and the
#   uniform-routing formula is exact by construction (other top-k values are not compared).
# - the planned memory per rank is within 15% of the allocator's measured peak tensor bytes
#   (small preset, 2 ranks, recompute none and full; with its MHA and with MLA).
# - parameter counts reproduce the papers' rounding (DeepSeekMoE 2B, 16B: all parameters; 145B
#   within 1%; DeepSeek-V2-Lite and V3 with MLA: total, and activated without the input
#   embedding: see README "Planning a layout").
# - bad layouts, M > nodes and an unknown hardware name: exit 1, one error naming the option.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
show() { sed 's/^/    /' <<<"$1"; }

source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 3 11
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 200

P=$SRC/jobs/presets
batch=(--global-batch 16 --micro-batch 2 --top-k 16)
for layout in "4 none" "4 full" "2 none"; do
  read -r ep rc_mode <<<"$layout"
  run=$tmp/run_${ep}_$rc_mode
  out=$(MOERUN_FAKE_RANKS_PER_NODE=2 timeout 400 mpiexec -n 4 --oversubscribe "$MOERUN" train \
    --config "$P/tiny.ini" --data "$tmp/d.h5" "${batch[@]}" --ep-size "$ep" --recompute "$rc_mode" \
    --steps 2 --warmup-steps 1 --eval-every 0 --threads 1 --out "$run" 2>&1); rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: train EP $ep recompute $rc_mode on 2 fake nodes -> exit $rc"; show "$out"; fail=1
    continue
  fi
  plan=$("$MOERUN" plan --config "$P/tiny.ini" "${batch[@]}" --nodes 2 --ranks-per-node 2 \
    --ep-size "$ep" --recompute "$rc_mode" --hardware cpu --json 2>&1); rc=$?
  if [[ $rc -ne 0 ]]; then echo "FAIL: plan EP $ep -> exit $rc"; show "$plan"; fail=1; continue; fi
  if ! cmp=$(python3 -c 'import json,sys
plan = json.loads(sys.argv[1])["bytes_per_step"]
want = (round(plan["a2a_intra_node"]), round(plan["a2a_inter_node"]))
got = [(r["a2a_bytes"]["intra_node"], r["a2a_bytes"]["inter_node"])
       for r in map(json.loads, open(sys.argv[2])) if r.get("type") == "train"]
print("plan", want, "measured", got)
sys.exit(0 if len(got) == 2 and all(g == want for g in got) and want[0] + want[1] > 0 else 1)' \
    "$plan" "$run/metrics.jsonl" 2>&1); then
    echo "FAIL: EP $ep recompute $rc_mode: a2a bytes differ: $cmp"; fail=1
  else
    echo "ok:   EP $ep recompute $rc_mode on 2x2 ranks: $cmp"
  fi
done

# Memory: the plan's per-rank total against the tensor bytes the allocator counted at the peak
# (`peak_tensor_bytes`, max over ranks; the resident size adds the process's own ~250 MB of
# libraries and MPI, which the plan does not model), small preset at 2 ranks, within 15%.
# Also with MLA (V3's form: query compression, YaRN) in place of the small preset's MHA.
mla=(--attention mla --q-lora-rank 192 --kv-lora-rank 128 --qk-nope-head-dim 64
  --qk-rope-head-dim 32 --v-head-dim 64 --rope-scaling yarn --rope-scaling-factor 4
  --rope-original-max-position 128)
for case in "mha none" "mha full" "mla none" "mla full"; do
  read -r attn rc_mode <<<"$case"
  run=$tmp/mem_${attn}_$rc_mode
  mem=(--global-batch 4 --micro-batch 2 --ep-size 2 --recompute "$rc_mode")
  [[ $attn == mla ]] && mem+=("${mla[@]}")
  out=$(timeout 400 mpiexec -n 2 --oversubscribe "$MOERUN" train --config "$P/small.ini" \
    --data "$tmp/d.h5" "${mem[@]}" --steps 2 --warmup-steps 1 --eval-every 0 --threads 1 \
    --out "$run" 2>&1); rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "FAIL: train small $attn recompute $rc_mode -> exit $rc"; show "$out"; fail=1; continue
  fi
  plan=$("$MOERUN" plan --config "$P/small.ini" "${mem[@]}" --nodes 1 --ranks-per-node 2 \
    --hardware cpu --json 2>&1) || { echo "FAIL: plan small"; show "$plan"; fail=1; continue; }
  if cmp=$(python3 -c 'import json,sys
planned = json.loads(sys.argv[1])["memory_bytes"]["total"]
recs = [r for r in map(json.loads, open(sys.argv[2])) if r.get("type") == "train"]
tensors = max(r["peak_tensor_bytes"] for r in recs)
rss = max(r["peak_rss_bytes"] for r in recs)
mib = 2.0 ** 20
print(f"plan {planned / mib:.0f} MiB, measured tensors {tensors / mib:.0f} MiB "
      f"({planned / tensors - 1:+.1%}), resident {rss / mib:.0f} MiB")
sys.exit(0 if abs(planned - tensors) <= 0.15 * tensors else 1)' "$plan" "$run/metrics.jsonl" 2>&1); then
    echo "ok:   small $attn recompute $rc_mode: $cmp"
  else
    echo "FAIL: small $attn recompute $rc_mode memory: $cmp"; fail=1
  fi
done

# Paper sizes (notes/algorithms.md section 6).
# The 6th argument `lookup` compares the activated count without the input embedding (V x H, a
# lookup; the LM head stays): the convention that reproduces the MLA models' published figures.
check_params() {  # preset total_B active_B tol(total) tol(active; - = not compared) [lookup]
  local j
  j=$("$MOERUN" plan --config "$P/$1.ini" --nodes 1 --ranks-per-node 1 --ep-size 1 \
    --hardware h200 --json 2>&1) || { echo "FAIL: plan $1"; show "$j"; fail=1; return; }
  if python3 -c 'import json,sys
p = json.loads(sys.argv[1])["params"]
t, a = p["total"] / 1e9, p["activated_per_token"] / 1e9
if sys.argv[6] == "lookup": a -= p["embedding"] / 2e9
ok = abs(t - float(sys.argv[2])) <= float(sys.argv[4]) * float(sys.argv[2])
if sys.argv[5] != "-": ok = ok and abs(a - float(sys.argv[3])) <= float(sys.argv[5]) * float(sys.argv[3])
print(f"{t:.2f}B / {a:.2f}B")
sys.exit(0 if ok else 1)' "$j" "$2" "$3" "$4" "$5" "${6:-all}" >"$tmp/p" 2>&1; then
    echo "ok:   $1: $(cat "$tmp/p") (paper $2B / $3B)"
  else
    echo "FAIL: $1: $(cat "$tmp/p") vs paper $2B / $3B"; fail=1
  fi
}
check_params deepseekmoe-2b 2.0 0.3 0.025 0.10   # rounds to 2.0 / 0.3
check_params deepseekmoe-16b 16.4 2.8 0.003 0.018  # rounds to 16.4 / 2.8
check_params deepseekmoe-145b 144.6 22.2 0.01 0.01
check_params deepseek-v2-lite 15.7 2.4 0.005 0.03 lookup  # 15.71B / 2.45B
check_params deepseek-v3 671 37 0.005 0.015 lookup       # 671.03B / 36.63B (MTP not counted)

# The 145B layout of the README runs and prints a verdict.
out=$("$MOERUN" plan --config "$P/deepseekmoe-145b.ini" --nodes 16 --ranks-per-node 8 --ep-size 64 \
  --micro-batch 1 --hardware h100 --zero 1 2>&1); rc=$?
if [[ $rc -ne 0 ]] || ! grep -qE "verdict: (FITS|DOES NOT FIT) - needs" <<<"$out"; then
  echo "FAIL: 145B plan on 16x8 H100 -> exit $rc"; show "$out"; fail=1
fi
# The V3 layout of the README (2048 GPUs, EP 64 over 8 nodes, 4 nodes per token) runs, prints a
# verdict and MLA's decode cache (kv latent 512 + RoPE key 64 per token and layer).
out=$("$MOERUN" plan --config "$P/deepseek-v3.ini" --nodes 256 --ranks-per-node 8 --ep-size 64 \
  --hardware h100 --zero 1 --recompute full --max-nodes-per-token 4 2>&1); rc=$?
if [[ $rc -ne 0 ]] || ! grep -qE "verdict: (FITS|DOES NOT FIT) - needs" <<<"$out" ||
  ! grep -qF "decode cache holds 576 values per token and layer" <<<"$out"; then
  echo "FAIL: DeepSeek-V3 plan on 256x8 H100 -> exit $rc"; show "$out"; fail=1
fi
# Node-limited routing bounds the inter-node bytes.
inter() { "$MOERUN" plan --config "$P/deepseekmoe-145b.ini" --nodes 16 --ranks-per-node 8 \
  --ep-size 64 --hardware h100 --json "$@" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_per_step"]["a2a_inter_node"])'; }
a=$(inter) b=$(inter --max-nodes-per-token 4)
if ! python3 -c "import sys; sys.exit(0 if 0 < $b < $a else 1)"; then
  echo "FAIL: --max-nodes-per-token 4 inter-node bytes $b not below $a"; fail=1
fi

# Bad input: exit 1 and an error naming the option.
bad() {  # expected-text args...
  local want=$1; shift
  local out rc
  out=$("$MOERUN" plan "$@" 2>&1); rc=$?
  if [[ $rc -ne 1 ]] || ! grep -qF -- "$want" <<<"$out"; then
    echo "FAIL: plan $* -> exit $rc, wanted '$want'"; show "$out"; fail=1
  fi
}
base=(--config "$P/deepseekmoe-145b.ini" --ranks-per-node 8 --hardware h100)
bad "--ep-size 48 must divide the 128 routed experts" "${base[@]}" --nodes 6 --ep-size 48
bad "--ep-size 32 must divide the world" "${base[@]}" --nodes 2 --ep-size 32
bad "--ep-size 12 and --ranks-per-node 8" --config "$P/tiny.ini" --ranks-per-node 8 \
  --hardware h100 --nodes 3 --ep-size 12 --experts 24
bad "--max-nodes-per-token 32 must be between 1 and --nodes 16" "${base[@]}" --nodes 16 \
  --ep-size 64 --max-nodes-per-token 32
bad "--hardware 'tpu' is not in" --config "$P/deepseekmoe-145b.ini" --ranks-per-node 8 --nodes 16 --ep-size 64 --hardware tpu
bad "known: a100, cpu, h100, h200" --config "$P/deepseekmoe-145b.ini" --ranks-per-node 8 --nodes 16 --ep-size 64 --hardware tpu
bad "--hardware-file /nonexistent" "${base[@]}" --nodes 16 --ep-size 64 --hardware-file /nonexistent
bad "nodes" --config "$P/tiny.ini" --ranks-per-node 1 --ep-size 1 --hardware cpu
[[ $fail -eq 0 ]] && echo "ok:   bad inputs named" 
exit $fail
