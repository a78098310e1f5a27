// Router: scores s = G(x gate^T), top-K selection on s + bias (optionally group-limited),
// gate weights from the UNBIASED scores, optional capacity drops, and the auxiliary balance
// losses. The bias only selects; it never enters g and gets no gradient.
#pragma once

#include <cstdint>
#include <vector>

#include "layers/moe_config.h"
#include "runtime/tensor.h"

namespace moerun {

struct RouterOutput {
  Tensor scores;        // (T, E) s, unbiased
  Tensor topk_idx;      // (T, K) int32 experts selected by s + bias, best first
  Tensor topk_weight;   // (T, K) g; 0 where capacity dropped the pair
  Tensor dispatch_idx;  // (T, K) int32: topk_idx, or -1 where capacity dropped the pair
  std::vector<int64_t> tokens_per_expert;  // (E) kept (token, expert) pairs on this rank
  int64_t dropped = 0;
  double aux_loss = 0.0;  // this rank's share: expert + device + sequence-wise terms
};

// Group-limited routing in the one form the router applies: the group of every expert, how
// many groups a token keeps, and the group score (the sum of the group's score_top highest
// biased scores, fewer if the group is smaller; 1 = the max). Built from the options:
//   --n-group G --topk-group k      G contiguous equal groups, score max (1) or top2sum (2)
//   --max-devices-per-token M       groups = EP ranks, keep M, score max (V2)
//   --max-nodes-per-token M         groups = nodes of the EP group (cfg.ep_rank_node, any
//                                   layout, contiguous or not), keep M, score top ceil(K/M) (V3)
struct ExpertGroups {
  int64_t n_group = 1;
  int64_t keep = 1;
  int64_t score_top = 1;
  std::vector<int32_t> group_of_expert;  // (E) in [0, n_group); nodes numbered as first seen
  bool limits() const { return n_group > 1 && keep < n_group; }
};
ExpertGroups expert_groups(const MoEConfig& cfg, int ep_size);

// x (T, H), gate (E, H), bias (E). seq_len splits T for the sequence-wise loss (0 = all of T).
// ep_size defines the "devices" of the device-level loss (experts [d*E/R, (d+1)*E/R)).
RouterOutput router_forward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                            const Tensor& bias, int64_t seq_len);

// dtopk_weight (T, K): gradient of the loss w.r.t. g. Adds the aux-loss gradients, then
// accumulates dgate (E, H) += dlogits^T x and dx (T, H) += dlogits gate.
void router_backward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                     const RouterOutput& out, const Tensor& dtopk_weight, int64_t seq_len,
                     Tensor& dgate, Tensor& dx);

namespace cpu {
RouterOutput router_forward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                            const Tensor& bias, int64_t seq_len);
void router_backward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                     const RouterOutput& out, const Tensor& dtopk_weight, int64_t seq_len,
                     Tensor& dgate, Tensor& dx);
}  // namespace cpu

}  // namespace moerun
