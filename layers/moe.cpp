// MoELayer: the forward calls and their mirrored backward calls, in reverse order.
#include "layers/moe.h"

#include "layers/add.h"
#include "layers/swiglu.h"
#include "runtime/rng.h"
#include "runtime/timer.h"

namespace moerun {

void MoEGrads::zero() {
  for (Tensor* t : {&gate, &w13, &w2, &shared_w13, &shared_w2})
    if (t->defined()) t->zero();
}

namespace {
const MoEConfig& validated(const MoEConfig& cfg, int ep_size) {
  cfg.validate(ep_size);
  (void)expert_groups(cfg, ep_size);  // node-limited routing needs the node map: fail here
  return cfg;
}
void fill_normal(Tensor& t, Rng rng, float std) {
  for (float& v : t.span<float>()) v = static_cast<float>(rng.normal() * std);
}
}  // namespace

MoELayer::MoELayer(const MoEConfig& cfg, const Comm& ep)
    : cfg_(validated(cfg, ep.size())),
      ep_(&ep),
      e_local_(cfg.routed_experts / ep.size()),
      e_first_(ep.rank() * (cfg.routed_experts / ep.size())),
      dispatcher_(ep, cfg.routed_experts, cfg.hidden) {
  const int64_t H = cfg_.hidden, F = cfg_.expert_width, E = cfg_.routed_experts;
  params_.gate = Tensor::zeros({E, H});
  params_.w13 = Tensor::zeros({e_local_, 2 * F, H});
  params_.w2 = Tensor::zeros({e_local_, H, F});
  params_.bias = Tensor::zeros({E});
  grads_.gate = Tensor::zeros({E, H});
  grads_.w13 = Tensor::zeros({e_local_, 2 * F, H});
  grads_.w2 = Tensor::zeros({e_local_, H, F});
  if (cfg_.shared_experts > 0) {
    const int64_t SF = cfg_.shared_width();
    params_.shared_w13 = Tensor::zeros({2 * SF, H});
    params_.shared_w2 = Tensor::zeros({H, SF});
    grads_.shared_w13 = Tensor::zeros({2 * SF, H});
    grads_.shared_w2 = Tensor::zeros({H, SF});
  }
}

void MoELayer::init(uint64_t seed, float std) {
  const int64_t H = cfg_.hidden, F = cfg_.expert_width;
  fill_normal(params_.gate, Rng(seed, 0), std);
  if (cfg_.shared_experts > 0) {
    Rng rng(seed, 1);
    fill_normal(params_.shared_w13, rng, std);
    fill_normal(params_.shared_w2, Rng(seed, 2), std);
  }
  for (int64_t e = 0; e < e_local_; ++e) {
    const uint64_t g = static_cast<uint64_t>(e_first_ + e);
    Rng r13(seed, 1000 + 2 * g), r2(seed, 1001 + 2 * g);
    float* w13 = params_.w13.f32() + e * 2 * F * H;
    float* w2 = params_.w2.f32() + e * H * F;
    for (int64_t i = 0; i < 2 * F * H; ++i) w13[i] = static_cast<float>(r13.normal() * std);
    for (int64_t i = 0; i < H * F; ++i) w2[i] = static_cast<float>(r2.normal() * std);
  }
  params_.bias.zero();
}

Tensor MoELayer::infer(const Tensor& x) {
  // seq_len 0: the aux losses this routing would report are not used.
  const RouterOutput routing = router_forward(cfg_, ep_->size(), x, params_.gate, params_.bias, 0);
  const DispatchResult d = dispatcher_.dispatch(x, routing.dispatch_idx, routing.topk_weight);
  const ExpertsOut experts =
      experts_forward(params_.w13, params_.w2, d.recv_x, d.tokens_per_local_expert);
  Tensor y = dispatcher_.combine(experts.out, d.handle);
  if (cfg_.shared_experts > 0)
    add_into(y, swiglu_forward(x, params_.shared_w13, params_.shared_w2).out);
  return y;
}

Tensor MoELayer::forward(const Tensor& x, int64_t seq_len) {
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(1) == cfg_.hidden, "MoE input must be (T, {}), got {}",
                 cfg_.hidden, x.shape_str());
  Saved& s = saved_;
  s.x = x;
  s.seq_len = seq_len;
  {
    ScopedTimer timer(times_.router);
    s.routing = router_forward(cfg_, ep_->size(), x, params_.gate, params_.bias, seq_len);
  }
  s.dispatched = dispatcher_.dispatch(x, s.routing.dispatch_idx, s.routing.topk_weight);
  ExpertsOut experts;
  {
    ScopedTimer timer(times_.experts);
    experts = experts_forward(params_.w13, params_.w2, s.dispatched.recv_x,
                              s.dispatched.tokens_per_local_expert);
  }
  if (!recompute_ffn_) s.expert_ab = experts.ab;
  times_.expert_rows += s.dispatched.recv_x.dim(0);
  Tensor y = dispatcher_.combine(experts.out, s.dispatched.handle);
  if (cfg_.shared_experts > 0) {
    ScopedTimer timer(times_.shared);
    SwigluOut shared = swiglu_forward(x, params_.shared_w13, params_.shared_w2);
    if (!recompute_ffn_) s.shared_ab = shared.ab;
    add_into(y, shared.out);
  }
  stats_.tokens_per_expert = s.routing.tokens_per_expert;
  stats_.dropped = s.routing.dropped;
  stats_.aux_loss = s.routing.aux_loss;
  return y;
}

void MoELayer::drop_recomputable() {
  Saved& s = saved_;
  s.x = {};
  s.dispatched.recv_x = {};
  s.expert_ab = {};
  s.shared_ab = {};
}

void MoELayer::recompute(const Tensor& x) {
  Saved& s = saved_;
  const DispatchHandle& h = s.dispatched.handle;
  MOERUN_REQUIRE(h.K > 0 && x.ndim() == 2 && x.dim(0) == h.T && x.dim(1) == cfg_.hidden,
                 "MoE recompute of x {} without the forward's routing of {} tokens", x.shape_str(),
                 h.T);
  s.x = x;
  s.dispatched.recv_x = dispatcher_.dispatch(x, h);
}

Tensor MoELayer::backward(const Tensor& dy) {
  Saved& s = saved_;
  MOERUN_REQUIRE(
      s.x.defined() && dy.ndim() == 2 && dy.dim(0) == s.x.dim(0) && dy.dim(1) == cfg_.hidden,
      "dy {} does not match the forward input {}", dy.shape_str(), s.x.shape_str());
  // Recomputation (recompute_ffn_): the forward's calls on the same rows, so the pre-activations
  // are bitwise the forward's; each lives only for its own backward call, one at a time.
  Tensor dx;
  if (cfg_.shared_experts > 0) {
    ScopedTimer timer(times_.shared);
    if (recompute_ffn_) s.shared_ab = swiglu_forward(s.x, params_.shared_w13, params_.shared_w2).ab;
    dx = swiglu_backward(s.x, params_.shared_w13, params_.shared_w2, s.shared_ab, dy,
                         grads_.shared_w13, grads_.shared_w2);
    if (recompute_ffn_) s.shared_ab = {};
  } else {
    dx = Tensor::zeros(s.x.shape());
  }
  const DispatchHandle& handle = s.dispatched.handle;
  Tensor dy_perm = dispatcher_.combine_backward(dy, handle);
  ExpertsGrad experts;
  {
    ScopedTimer timer(times_.experts);
    if (recompute_ffn_)
      s.expert_ab = experts_forward(params_.w13, params_.w2, s.dispatched.recv_x,
                                    s.dispatched.tokens_per_local_expert)
                        .ab;
    experts = experts_backward(params_.w13, params_.w2, s.dispatched.recv_x,
                               s.dispatched.tokens_per_local_expert, s.expert_ab, dy_perm,
                               handle.perm_weight, grads_.w13, grads_.w2);
    if (recompute_ffn_) s.expert_ab = {};
  }
  DispatchBackward back =
      dispatcher_.dispatch_backward(experts.dx_perm, experts.drow_weight, handle);
  add_into(dx, back.dx);
  ScopedTimer timer(times_.router);
  router_backward(cfg_, ep_->size(), s.x, params_.gate, s.routing, back.dtopk_weight, s.seq_len,
                  grads_.gate, dx);
  return dx;
}

void MoELayer::named_params(const std::string& prefix, std::vector<NamedParam>& out) {
  out.push_back({prefix + "gate", &params_.gate, &grads_.gate, false, true});
  out.push_back({prefix + "w13", &params_.w13, &grads_.w13, true, true});
  out.push_back({prefix + "w2", &params_.w2, &grads_.w2, true, true});
  if (params_.shared_w13.defined()) {
    out.push_back({prefix + "shared_w13", &params_.shared_w13, &grads_.shared_w13, false, true});
    out.push_back({prefix + "shared_w2", &params_.shared_w2, &grads_.shared_w2, false, true});
  }
}

}  // namespace moerun
