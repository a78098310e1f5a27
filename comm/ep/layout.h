// DispatchLayout: where each (token, expert) pair goes, computed locally from dispatch_idx
// (no communication). A token is sent ONCE to each rank that holds any of its experts, with
// the list of (local expert, weight) pairs it needs there; the receiver replicates the row.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace moerun {

// One routed pair as it travels: row within the sender's segment for this rank, the expert's
// index on the receiving rank, the gate weight.
struct PairMsg {
  int32_t row;
  int32_t local_expert;
  float weight;
};
static_assert(sizeof(PairMsg) == 12);

struct DispatchLayout {
  int64_t ranks = 0;                     // R
  std::vector<int64_t> tokens_per_rank;  // (R) rows sent to each rank (distinct tokens)
  std::vector<int64_t> pairs_per_rank;   // (R) (token, expert) pairs sent to each rank
  std::vector<int64_t> send_row_token;   // (sum rows) token of each send row, rank-major
  std::vector<PairMsg> send_pairs;       // (sum pairs) rank-major, by row then k
  std::vector<int64_t> send_pair_slot;   // (sum pairs) t*K + k of each sent pair
};

// dispatch_idx (T, K) int32 global experts (-1 = dropped), topk_weight (T, K).
// Experts [r*E_local, (r+1)*E_local) live on rank r.
DispatchLayout make_dispatch_layout(const Tensor& dispatch_idx, const Tensor& topk_weight,
                                    int64_t E_local, int64_t R);

}  // namespace moerun
