#!/usr/bin/env bash
# Node-limited routing end to end: `moerun train` (tiny preset, 4 ranks, --ep-size 4) on 4 fake
# nodes of one rank (MOERUN_FAKE_RANKS_PER_NODE=1) and on 2 fake nodes of two ranks (=2), without
# and with --max-nodes-per-token 1. What is asserted, from the metrics' a2a_bytes:
# - the limit moves fewer inter-node bytes than the same run without it (both layouts);
# - 1 rank per node, M = 1: a token's experts are on one rank, so it sends at most ONE row off
#   its node; each such row crosses 4 times (dispatch, combine and their backward) in each of
#   the 3 MoE layers, so inter-node bytes per step <= 4 * 3 * 2048 tokens * 128 * 4 B; the
#   same bound holds for --max-devices-per-token 1 on 2 nodes of two ranks (one rank per token);
# - in general a token reaches at most min(M, nodes - 1) nodes other than its own;
# - losses are finite, config.ini records the option, and bad values are ConfigErrors naming it.
# Every token's pairs within the limit is checked pair by pair in tests/mpi/node_limit_test.cpp
# and tests/unit/router_limit_test.cpp.
# Args: <path to moerun> <source dir>
set -uo pipefail
MOERUN=$1
SRC=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OPENBLAS_NUM_THREADS=1
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bad() { echo "FAIL: $*"; fail=1; }
show() { sed 's/^/    /' <<<"$1"; }
source "$SRC/tests/common/cli_data.sh"
write_prose "$tmp/text" 3 5
make_dataset "$MOERUN" "$tmp/text" "$tmp/d.h5" 100
STEPS=3
TINY=(--config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" --steps $STEPS --warmup-steps 1
      --eval-every 0 --log-every 1 --ep-size 4 --micro-batch 4)

sum_field() {  # metrics key -> the sum of "a2a_bytes"."key" over the train records
  grep '"type":"train"' "$1" | sed -n "s/.*\"$2\":\\([0-9]*\\).*/\\1/p" | awk '{s += $1} END {print s + 0}'
}
run_case() {  # name ranks_per_node [options...]
  local name=$1 k=$2 out
  shift 2
  out=$(MOERUN_FAKE_RANKS_PER_NODE=$k timeout 400 mpiexec -n 4 --oversubscribe "$MOERUN" train \
    "${TINY[@]}" "$@" --out "$tmp/$name" 2>&1) || { bad "$name: train failed"; show "$out"; return; }
  local losses
  losses=$(grep '"type":"train"' "$tmp/$name/metrics.jsonl" | sed -n 's/.*"loss":\([^,]*\),.*/\1/p')
  [[ $(wc -l <<<"$losses") -eq $STEPS ]] || bad "$name: expected $STEPS train records, got: $losses"
  awk '{ if ($1 !~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) exit 1 }' <<<"$losses" || bad "$name: a loss is not finite: $losses"
}
run_case k1_off 1
run_case k1_m1 1 --max-nodes-per-token 1
run_case k2_off 2
run_case k2_m1 2 --max-nodes-per-token 1
run_case k2_d1 2 --max-devices-per-token 1
if [[ $fail -eq 0 ]]; then
  grep -q '^max-nodes-per-token = 1$' "$tmp/k1_m1/config.ini" || bad "config.ini lacks max-nodes-per-token = 1"
  declare -A inter intra
  for c in k1_off k1_m1 k2_off k2_m1 k2_d1; do
    inter[$c]=$(sum_field "$tmp/$c/metrics.jsonl" inter_node)
    intra[$c]=$(sum_field "$tmp/$c/metrics.jsonl" intra_node)
    echo "  $c: inter-node ${inter[$c]} B, intra-node ${intra[$c]} B over $STEPS steps"
  done
  [[ ${inter[k1_off]} -gt 0 && ${inter[k2_off]} -gt 0 ]] || bad "no inter-node bytes without the limit"
  [[ ${inter[k1_m1]} -lt ${inter[k1_off]} ]] || bad "4 nodes: M=1 moved ${inter[k1_m1]} inter-node bytes, not fewer than ${inter[k1_off]}"
  [[ ${inter[k2_m1]} -lt ${inter[k2_off]} ]] || bad "2 nodes: M=1 moved ${inter[k2_m1]} inter-node bytes, not fewer than ${inter[k2_off]}"
  bound=$((STEPS * 4 * 3 * 16 * 128 * 128 * 4))  # steps x crossings x MoE layers x tokens x H x 4 B
  [[ ${inter[k1_m1]} -le $bound ]] || bad "4 nodes, M=1: ${inter[k1_m1]} inter-node bytes > the bound $bound (one row per token)"
  # device-limited, M = 1: one rank per token, so again at most one row off its node
  [[ ${inter[k2_d1]} -le $bound ]] || bad "2 nodes, --max-devices-per-token 1: ${inter[k2_d1]} inter-node bytes > the bound $bound"
  [[ ${inter[k2_d1]} -lt ${inter[k2_off]} ]] || bad "2 nodes: --max-devices-per-token 1 moved ${inter[k2_d1]} inter-node bytes, not fewer than ${inter[k2_off]}"
  # one rank per node: no bytes stay on a node
  [[ ${intra[k1_m1]} -eq 0 && ${intra[k1_off]} -eq 0 ]] || bad "one rank per node moved intra-node bytes"
  [[ $fail -eq 0 ]] && echo "ok:   M=1 cut inter-node bytes from ${inter[k1_off]} to ${inter[k1_m1]} (4 nodes, bound $bound) and from ${inter[k2_off]} to ${inter[k2_m1]} (2 nodes)"
fi

expect_error() {  # env-k, expected message, options...
  local k=$1 msg=$2 out rc
  shift 2
  out=$(MOERUN_FAKE_RANKS_PER_NODE=$k timeout 120 mpiexec -n 2 --oversubscribe "$MOERUN" train \
    --config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" --steps 1 --out "$tmp/bad" "$@" 2>&1)
  rc=$?
  if [[ $rc -eq 0 ]] || ! grep -qF -- "$msg" <<<"$out"; then
    bad "$* (k=$k): exit $rc, expected an error with '$msg'"; show "$out"
  fi
}
expect_error 2 "--max-nodes-per-token (2) exceeds the 1 node(s)" --max-nodes-per-token 2
expect_error 1 "--max-nodes-per-token (3) exceeds the 2 node(s)" --max-nodes-per-token 3
expect_error 1 "cannot be set together" --max-nodes-per-token 1 --max-devices-per-token 1
expect_error 1 "cannot be combined with --n-group 2" --max-nodes-per-token 1 --n-group 2 --topk-group 1
expect_error 1 "--max-devices-per-token (3) exceeds the EP size (2)" --max-devices-per-token 3
expect_error 1 "--max-nodes-per-token must be >= 0" --max-nodes-per-token -1

# bench moe-layer takes the option too: 2 fake nodes of one rank, M = 1, so every token's K = 2
# experts sit on one rank and it sends exactly one row (2 ranks x 64 tokens = 128 rows).
out=$(MOERUN_FAKE_RANKS_PER_NODE=1 timeout 200 mpiexec -n 2 --oversubscribe "$MOERUN" bench moe-layer \
  --hidden 64 --expert-width 32 --experts 8 --top-k 2 --shared-experts 1 --tokens 64 --iters 1 \
  --max-nodes-per-token 1 --json 2>&1) || { bad "bench moe-layer --max-nodes-per-token 1 failed"; show "$out"; }
grep -q '"rows_sent": 128, "rows_off_node": [0-9]*, "max_nodes_per_token": 1' <<<"$out" ||
  { bad "bench moe-layer, M=1 on nodes of one rank: expected 128 rows sent (one per token)"; show "$out"; }
[[ $fail -eq 0 ]] && echo "all node-limit checks passed"
exit $fail
