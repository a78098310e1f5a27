#!/usr/bin/env bash
# Where the ranks run, and the traffic split it drives: `moerun train` on 2 ranks prints the
# topology table (one row per rank: host, local rank, EP rank, expert-DP rank, device); with
# MOERUN_FAKE_RANKS_PER_NODE=1 the two ranks are two nodes and every all-to-all byte between them
# is inter-node, with =2 they share a node and every byte is intra-node; the totals are the same
# bytes (same seed, same routing). A bad value is a clear error.
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
TINY=(--config "$SRC/jobs/presets/tiny.ini" --data "$tmp/d.h5" --steps 3 --warmup-steps 1
      --eval-every 0 --log-every 1)

sum_field() {  # metrics key -> the sum of "a2a_bytes"."key" over the train records
  grep '"type":"train"' "$1" | sed -n "s/.*\"$2\":\\([0-9]*\\).*/\\1/p" | awk '{s += $1} END {print s + 0}'
}
run_case() {  # ranks_per_node
  local d=$tmp/k$1 out
  out=$(MOERUN_FAKE_RANKS_PER_NODE=$1 timeout 300 mpiexec -n 2 --oversubscribe "$MOERUN" train \
    "${TINY[@]}" --ep-size 2 --out "$d" 2>&1) || { bad "ranks per node $1: train failed"; show "$out"; return; }
  echo "$out" >"$d.log"
}
run_case 1
run_case 2
if [[ $fail -eq 0 ]]; then
  # the table: a header and one row per rank
  grep -qE 'rank +host +local_rank +ep_rank +edp_rank +device' "$tmp/k1.log" || bad "no topology table header"
  grep -qE '^\[r0 info\] +0 +fake-node0 +0 +0 +0 +cpu' "$tmp/k1.log" || bad "rank 0's row is wrong (k=1)"
  grep -qE '^\[r0 info\] +1 +fake-node1 +0 +1 +0 +cpu' "$tmp/k1.log" || bad "rank 1's row is wrong (k=1: its own node, local rank 0)"
  grep -qE '^\[r0 info\] +1 +fake-node0 +1 +1 +0 +cpu' "$tmp/k2.log" || bad "rank 1's row is wrong (k=2: node 0, local rank 1)"
  grep -q '"nodes":2' "$tmp/k1/metrics.jsonl" || bad "k=1: the run record does not say 2 nodes"
  grep -q '"nodes":1' "$tmp/k2/metrics.jsonl" || bad "k=2: the run record does not say 1 node"
  i1=$(sum_field "$tmp/k1/metrics.jsonl" intra_node); x1=$(sum_field "$tmp/k1/metrics.jsonl" inter_node)
  i2=$(sum_field "$tmp/k2/metrics.jsonl" intra_node); x2=$(sum_field "$tmp/k2/metrics.jsonl" inter_node)
  if [[ $i1 -ne 0 || $x1 -le 0 ]]; then bad "k=1: intra $i1 inter $x1, expected all inter-node"; fi
  if [[ $x2 -ne 0 || $i2 -le 0 ]]; then bad "k=2: intra $i2 inter $x2, expected all intra-node"; fi
  if [[ $x1 -ne $i2 ]]; then bad "the same routing moved $x1 bytes as inter-node but $i2 as intra-node"; fi
  grep -q 'a2a [0-9]*%' "$tmp/k1.log" || bad "the progress line has no all-to-all share"
  [[ $fail -eq 0 ]] && echo "ok:   2 fake nodes: $x1 bytes inter-node, 0 intra; 1 node: $i2 bytes intra-node, 0 inter"
fi
out=$(MOERUN_FAKE_RANKS_PER_NODE=0 timeout 120 "$MOERUN" train "${TINY[@]}" --out "$tmp/bad" 2>&1); rc=$?
if [[ $rc -ne 1 ]] || ! grep -q "MOERUN_FAKE_RANKS_PER_NODE must be a whole number >= 1 (got '0')" <<<"$out"; then
  bad "MOERUN_FAKE_RANKS_PER_NODE=0: exit $rc, expected 1 naming the variable"; show "$out"
fi
[[ $fail -eq 0 ]] && echo "all topology checks passed"
exit $fail
