// MoELayer: one DeepSeekMoE layer with its routed experts sharded over the EP group.
//   y = SharedExperts(x) + sum_k g_k Expert_{idx_k}(x)      (the block adds the residual)
// Forward and backward mirror each other: router -> dispatch -> experts -> combine, and back.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "comm/ep/dispatcher.h"
#include "layers/experts.h"
#include "layers/moe_config.h"
#include "layers/param.h"
#include "layers/router.h"
#include "runtime/tensor.h"

namespace moerun {

struct MoEParams {
  Tensor gate;        // (E, H) router weight, replicated on every rank
  Tensor w13;         // (E_local, 2F, H): rows [0,F) = W1 (gate_proj), rows [F,2F) = W3 (up_proj)
  Tensor w2;          // (E_local, H, F) down_proj
  Tensor shared_w13;  // (2*S*F, H) shared experts fused as one SwiGLU (absent when S = 0)
  Tensor shared_w2;   // (H, S*F)
  Tensor bias;  // (E) fp32 loss-free bias: selection only, no gradient, bit-identical on ranks
};

struct MoEGrads {
  Tensor gate, w13, w2, shared_w13, shared_w2;  // same shapes as MoEParams; backward accumulates
  void zero();
};

// What one forward routed: this rank's per-expert counts (dropped pairs excluded) and drops.
struct RoutingStats {
  std::vector<int64_t> tokens_per_expert;  // (E) local tokens routed to each global expert
  int64_t dropped = 0;                     // (token, expert) pairs over capacity on this rank
  double aux_loss = 0.0;                   // this rank's auxiliary balance loss (0 unless alphas)
};

// Seconds spent in the local compute of forward+backward, accumulated (benchmarks, metrics).
struct MoETimes {
  double router = 0.0, experts = 0.0, shared = 0.0;
  int64_t expert_rows = 0;  // permuted rows through the routed experts (forward passes)
};

class MoELayer {
 public:
  // Validates cfg against the EP size before any communication; ep must outlive the layer.
  MoELayer(const MoEConfig& cfg, const Comm& ep);

  // Normal(0, std) weights drawn by GLOBAL expert index, so every EP layout gets the same model.
  void init(uint64_t seed, float std);

  // x (T, H) -> y (T, H); T may differ across ranks (even 0). seq_len splits T into sequences for
  // the sequence-wise aux loss (0 = one sequence). Saves what backward needs.
  Tensor forward(const Tensor& x, int64_t seq_len = 0);
  // dy (T, H) -> dx (T, H); accumulates parameter gradients into grads().
  Tensor backward(const Tensor& dy);
  // Generation: x (T, H) -> y (T, H) by the same routing (the bias only chooses), dispatch,
  // experts, combine and shared experts as forward, touching no saved state, stats, load counts
  // or bias, so it may run between a forward and its backward. A collective on the EP group.
  Tensor infer(const Tensor& x);
  // Appends prefix + "gate", "w13", "w2" (expert), "shared_w13", "shared_w2" (when S > 0). The
  // bias is not a parameter: it has no gradient and is set by the balancing rule.
  void named_params(const std::string& prefix, std::vector<NamedParam>& out);
  // Frees the saved activations (recomputation rebuilds them with forward).
  void drop_saved() { saved_ = {}; }

  // Activation recomputation (Model's --recompute). With recompute_ffn, forward keeps no SwiGLU
  // pre-activations (routed (n_pairs, 2F), shared (T, 2SF)) and backward recomputes them from
  // the kept dispatched rows and input: no extra communication.
  void set_recompute_ffn(bool on) { recompute_ffn_ = on; }
  // Frees the input and every activation, keeping the routing and the dispatch handle (indices,
  // weights and counts, no rows), so that recompute() neither re-routes nor counts twice.
  void drop_recomputable();
  // Rebuilds what backward needs after drop_recomputable() from the same input x (T, H): the
  // rows are re-dispatched with the kept handle (one token all-to-all, no layout exchange; the
  // bytes count in dispatcher().times()). Routing, stats() and the load counts are untouched.
  // A collective on the EP group.
  void recompute(const Tensor& x);

  const MoEConfig& config() const { return cfg_; }
  MoEParams& params() { return params_; }
  const MoEParams& params() const { return params_; }
  MoEGrads& grads() { return grads_; }
  const RoutingStats& stats() const { return stats_; }
  const RouterOutput& routing() const { return saved_.routing; }
  int64_t local_experts() const { return e_local_; }
  MoETimes& times() { return times_; }
  Dispatcher& dispatcher() { return dispatcher_; }
  int64_t first_expert() const { return e_first_; }

 private:
  MoEConfig cfg_;
  const Comm* ep_;
  int64_t e_local_, e_first_;
  MoEParams params_;
  MoEGrads grads_;
  Dispatcher dispatcher_;
  RoutingStats stats_;
  MoETimes times_;
  bool recompute_ffn_ = false;
  struct Saved {
    Tensor x;  // (T, H)
    int64_t seq_len = 0;
    RouterOutput routing;
    DispatchResult dispatched;  // recv_x (n_pairs, H) and the handle
    Tensor expert_ab;           // (n_pairs, 2F) routed experts' pre-activations (not kept
                                // with recompute_ffn_)
    Tensor shared_ab;           // (T, 2*S*F) shared experts' pre-activations (idem)
  } saved_;
};

}  // namespace moerun
