#!/usr/bin/env bash
# `moerun plan` against the runtime and the papers. Every run trains 2 steps; the plan is asked for
# the same layout; the metrics.jsonl `train` records are compared with the plan's --json.
# - all-to-all bytes per step (a2a_bytes, intra_node and inter_node) equal the plan EXACTLY, on
#   2 fake nodes x 2 ranks (MOERUN_FAKE_RANKS_PER_NODE) at EP 4 (crossing nodes), 2 (inside a
#   node) and 1 (nothing moves). Routing is data-dependent, so these runs use top-k = experts:
#   every token reaches every EP rank, and the uniform-routing formula is exact by construction
#   (other top-k values are not compared).
# - gradient-sync bytes per step (sync_bytes: dense over the world, routed experts over the
#   expert-DP group; all-reduce, reduce-scatter, all-gather) equal the plan EXACTLY in every run:
#   tiny at 4 ranks with EP 4, 2, 1 (expert-DP 1, 2, 4), ZeRO 0 and 1, and small at 2 ranks with
#   ZeRO 0 and 1 (its ~11M-float dense region goes in padded rounds under ZeRO-1). The convention
#   (the bytes of the region each call covers, per rank, summed over the ranks) is
#   comm/grad_sync.h's; the tiny and small tensors are all multiples of 16 floats, so the flat
#   buffers have no alignment gaps that the plan would miss.
# - node-limited routing, where the uniform formula is only an expectation: top-k 8 of 16 experts
#   with --max-nodes-per-token 1 on 2 nodes of 2 ranks (8 experts per node), so every token
#   reaches exactly the two ranks of ONE node, and what it sends to other ranks is fixed by one
#   bit of its routing (its own node or the other): 1 intra-node row, or 2 inter-node rows. So
#   intra + inter / 2 = row exchanges x row bytes EXACTLY (the plan prints both factors), and each
#   is within the plan's bound (intra <= 1, inter <= 2 rows per token). Device-limited routing
#   (--max-devices-per-token 2, top-k 8: exactly two whole ranks per token, one of which may be
#   its own) sends between 1 and 2 rows per token, within the plan's bounds (intra <= 1,
#   inter <= 2). The measured share of tokens that keep their own node is printed beside the
#   plan's uniform expectation (M / nodes), not asserted: it depends on the data.
# - the planned memory per rank is within 15% of the allocator's measured peak tensor bytes
#   (max over ranks): tiny (its own top-k 2) and small at 2 ranks, ZeRO 0 and 1, recompute none
#   and full. The resident size (printed) adds the process's libraries, MPI and OpenBLAS
#   buffers, which the plan does not model. Not with top-k = experts: the estimate counts the
#   dispatch scratch per (token, expert) pair where the runtime stages one row per (token, rank),
#   so at K = E = 4 R it is 10-30% high on tiny (README "Planning a layout").
# - the same memory check with MLA (V3's form: query compression, YaRN) in place of small's MHA.
# - parameter counts reproduce the papers' rounding (DeepSeekMoE 2B, 16B: all parameters; 145B
#   within 1%; DeepSeek-V2-Lite and V3 with MLA: total, and activated without the input
#   embedding: see README "Planning a layout").
# - bad layouts, M > nodes, bad device limits and an unknown hardware name: exit 1, one error
#   naming the option.
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

# check.py PLAN_JSON METRICS CHECKS...: compares the train records with the plan; CHECKS are
#   a2a             a2a_bytes == the plan's, every step
#   sync            sync_bytes == the plan's, every step
#   mem             the plan's total within 15% of the max peak_tensor_bytes
#   limit:M:RG      every token reaches exactly M whole nodes of RG ranks: intra / (RG - 1) +
#                   inter / RG == M x row exchanges x row bytes; both within the plan's bounds
#   bound:LO:HI     rows to other ranks per token-exchange between LO and HI; within the bounds
cat >"$tmp/check.py" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1]))
recs = [r for r in map(json.loads, open(sys.argv[2])) if r.get("type") == "train"]
b = plan["bytes_per_step"]
ok, out = len(recs) == 2, [] if len(recs) == 2 else [f"{len(recs)} train records, not 2"]
X = b["a2a_row_exchanges"] * b["a2a_row_bytes"]
got_a2a = [(r["a2a_bytes"]["intra_node"], r["a2a_bytes"]["inter_node"]) for r in recs]
for check in sys.argv[3:]:
    kind, *args = check.split(":")
    if kind == "a2a":
        want = (round(b["a2a_intra_node"]), round(b["a2a_inter_node"]))
        good = all(g == want for g in got_a2a) and (plan["layout"]["ep_size"] == 1 or sum(want) > 0)
        out.append(f"a2a plan {want} measured {got_a2a}")
    elif kind == "sync":
        want = b["sync_bytes"]
        got = [r["sync_bytes"] for r in recs]
        good = all(g == want for g in got) and sum(sum(v.values()) for v in want.values()) > 0
        short = lambda s: "/".join(str(s[g][k]) for g in ("dense", "expert")
                                   for k in ("allreduce", "reduce_scatter", "allgather"))
        out.append(f"sync plan {short(want)} measured {' '.join(short(g) for g in got)}")
    elif kind == "mem":
        planned = plan["memory_bytes"]["total"]
        tensors = max(r["peak_tensor_bytes"] for r in recs)
        rss = max(r["peak_rss_bytes"] for r in recs)
        good = abs(planned - tensors) <= 0.15 * tensors
        mib = 2.0 ** 20
        out.append(f"memory plan {planned / mib:.1f} MiB, tensors {tensors / mib:.1f} MiB "
                   f"({planned / tensors - 1:+.1%}), resident {rss / mib:.0f} MiB")
    elif kind == "limit":
        M, rg = int(args[0]), int(args[1])
        good = all((i * rg + o * (rg - 1)) == M * rg * (rg - 1) * X for i, o in got_a2a)
        good = good and all(i <= b["a2a_intra_node_bound"] and o <= b["a2a_inter_node_bound"]
                            for i, o in got_a2a)
        keep = [i / ((rg - 1) * X) for i, o in got_a2a]
        out.append(f"intra/{rg - 1} + inter/{rg} == {M} x {X} bytes: "
                   f"{[i / (rg - 1) + o / rg for i, o in got_a2a]}; bounds "
                   f"{b['a2a_intra_node_bound']:.0f} / {b['a2a_inter_node_bound']:.0f}; tokens "
                   f"keeping their node {', '.join(f'{k:.3f}' for k in keep)} (uniform: "
                   f"{M / plan['layout']['nodes']:.3f})")
    elif kind == "bound":
        lo, hi = float(args[0]), float(args[1])
        rows = [(i + o) / X for i, o in got_a2a]
        good = all(lo <= r <= hi for r in rows)
        good = good and all(i <= b["a2a_intra_node_bound"] and o <= b["a2a_inter_node_bound"]
                            for i, o in got_a2a)
        out.append(f"rows per token-exchange {', '.join(f'{r:.3f}' for r in rows)} in "
                   f"[{lo}, {hi}]; measured {got_a2a} within bounds "
                   f"{b['a2a_intra_node_bound']:.0f} / {b['a2a_inter_node_bound']:.0f}")
    else:
        good = False
        out.append(f"unknown check {check}")
    ok = ok and good
print("; ".join(out))
sys.exit(0 if ok else 1)
EOF

P=$SRC/jobs/presets
# run_case NAME RANKS RANKS_PER_NODE PRESET "TRAIN+PLAN OPTIONS" CHECKS...
run_case() {
  local name=$1 n=$2 k=$3 preset=$4 opts=$5 out plan rc cmp
  shift 5
  read -r -a o <<<"$opts"
  out=$(MOERUN_FAKE_RANKS_PER_NODE=$k timeout 400 mpiexec -n "$n" --oversubscribe "$MOERUN" train \
    --config "$P/$preset.ini" --data "$tmp/d.h5" "${o[@]}" --steps 2 --warmup-steps 1 \
    --eval-every 0 --threads 1 --out "$tmp/$name" 2>&1); rc=$?
  if [[ $rc -ne 0 ]]; then echo "FAIL: train $name -> exit $rc"; show "$out"; fail=1; return; fi
  plan=$("$MOERUN" plan --config "$P/$preset.ini" "${o[@]}" --nodes $((n / k)) \
    --ranks-per-node "$k" --hardware cpu --json 2>&1); rc=$?
  if [[ $rc -ne 0 ]]; then echo "FAIL: plan $name -> exit $rc"; show "$plan"; fail=1; return; fi
  echo "$plan" >"$tmp/$name.plan.json"
  if cmp=$(python3 "$tmp/check.py" "$tmp/$name.plan.json" "$tmp/$name/metrics.jsonl" "$@" 2>&1); then
    echo "ok:   $name: $cmp"
  else
    echo "FAIL: $name: $cmp"; fail=1
  fi
}

# tiny on 2 fake nodes x 2 ranks, top-k = experts: a2a and sync exact.
tiny=(--global-batch 16 --micro-batch 2 --top-k 16)
for layout in "4 none 0" "4 full 1" "2 none 1" "2 full 0" "1 none 0" "1 moe 1"; do
  read -r ep rc_mode zero <<<"$layout"
  run_case "tiny_ep${ep}_${rc_mode}_zero$zero" 4 2 tiny \
    "${tiny[*]} --ep-size $ep --recompute $rc_mode --zero $zero" a2a sync
done
# Node- and device-limited routing: exact identity and bounds (see the header).
run_case tiny_nodes1 4 2 tiny "--global-batch 16 --micro-batch 2 --top-k 8 --ep-size 4 \
--max-nodes-per-token 1" limit:1:2 sync
run_case tiny_devices2 4 2 tiny "--global-batch 16 --micro-batch 2 --top-k 8 --ep-size 4 \
--max-devices-per-token 2" bound:1:2 sync
# tiny and small at 2 ranks (one node): memory within 15%, sync exact (small's ZeRO-1 goes in
# rounds).
# small, the slow one, with and without each of ZeRO-1 and recompute (not every pairing).
for layout in "tiny none 0" "tiny full 0" "tiny none 1" "tiny full 1" "small none 0" "small full 1"; do
  read -r preset rc_mode zero <<<"$layout"
  run_case "${preset}_${rc_mode}_zero$zero" 2 2 "$preset" \
    "--global-batch 4 --micro-batch 2 --ep-size 2 --recompute $rc_mode --zero $zero" mem sync
done
# small with MLA (V3's form: query compression, YaRN) in place of its MHA.
mla="--attention mla --q-lora-rank 192 --kv-lora-rank 128 --qk-nope-head-dim 64 \
--qk-rope-head-dim 32 --v-head-dim 64 --rope-scaling yarn --rope-scaling-factor 4 \
--rope-original-max-position 128"
for layout in "none 0" "full 1"; do
  read -r rc_mode zero <<<"$layout"
  run_case "small_mla_${rc_mode}_zero$zero" 2 2 small \
    "--global-batch 4 --micro-batch 2 --ep-size 2 --recompute $rc_mode --zero $zero $mla" mem sync
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
  --hardware h100 --zero 1 --recompute full --n-group 1 --topk-group 1 --max-nodes-per-token 4 \
  2>&1); rc=$?
if [[ $rc -ne 0 ]] || ! grep -qE "verdict: (FITS|DOES NOT FIT) - needs" <<<"$out" ||
  ! grep -qF "decode cache holds 576 values per token and layer" <<<"$out"; then
  echo "FAIL: DeepSeek-V3 plan on 256x8 H100 -> exit $rc"; show "$out"; fail=1
fi
# Node-limited (and device-limited) routing lowers the inter-node bytes.
inter() { "$MOERUN" plan --config "$P/deepseekmoe-145b.ini" --nodes 16 --ranks-per-node 8 \
  --ep-size 64 --hardware h100 --json "$@" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_per_step"]["a2a_inter_node"])'; }
a=$(inter) b=$(inter --max-nodes-per-token 4)
if ! python3 -c "import sys; sys.exit(0 if 0 < $b < $a else 1)"; then
  echo "FAIL: --max-nodes-per-token 4 inter-node bytes $b not below $a"; fail=1
fi
d=$(inter --max-devices-per-token 6)
if ! python3 -c "import sys; sys.exit(0 if 0 < $d < $a else 1)"; then
  echo "FAIL: --max-devices-per-token 6 inter-node bytes $d not below $a"; fail=1
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
bad "--max-devices-per-token 128 must be between 1 and --ep-size 64" "${base[@]}" --nodes 16 \
  --ep-size 64 --max-devices-per-token 128
bad "--max-devices-per-token 1: the 2 experts on 1 rank(s) cannot hold top-k 12" "${base[@]}" \
  --nodes 16 --ep-size 64 --max-devices-per-token 1
bad "cannot be set together" "${base[@]}" --nodes 16 --ep-size 64 --max-devices-per-token 6 \
  --max-nodes-per-token 4
bad "cannot be combined with --n-group 4" "${base[@]}" --nodes 16 --ep-size 64 \
  --max-devices-per-token 6 --n-group 4 --topk-group 2
[[ $fail -eq 0 ]] && echo "ok:   bad inputs named" 
exit $fail
