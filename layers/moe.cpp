// MoELayer: the forward calls and their mirrored backward calls, in reverse order.
#include "layers/moe.h"

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

Tensor MoELayer::forward(const Tensor& x, int64_t seq_len) {
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(1) == cfg_.hidden, "MoE input must be (T, {}), got {}",
                 cfg_.hidden, x.shape_str());
  x_ = x;
  seq_len_ = seq_len;
  {
    ScopedTimer timer(times_.router);
    routing_ = router_forward(cfg_, ep_->size(), x, params_.gate, params_.bias, seq_len);
  }
  dispatched_ = dispatcher_.dispatch(x, routing_.dispatch_idx, routing_.topk_weight);
  Tensor out_perm;
  {
    ScopedTimer timer(times_.experts);
    out_perm = experts_forward(params_.w13, params_.w2, dispatched_.recv_x,
                               dispatched_.tokens_per_local_expert, expert_act_);
  }
  times_.expert_rows += dispatched_.recv_x.dim(0);
  Tensor y = dispatcher_.combine(out_perm, dispatched_.handle);
  if (cfg_.shared_experts > 0) {
    ScopedTimer timer(times_.shared);
    Tensor shared = shared_forward(params_.shared_w13, params_.shared_w2, x, shared_act_);
    float* py = y.f32();
    const float* ps = shared.f32();
    for (int64_t i = 0; i < y.numel(); ++i) py[i] += ps[i];
  }
  stats_.tokens_per_expert = routing_.tokens_per_expert;
  stats_.dropped = routing_.dropped;
  stats_.aux_loss = routing_.aux_loss;
  return y;
}

Tensor MoELayer::backward(const Tensor& dy) {
  MOERUN_REQUIRE(dy.ndim() == 2 && dy.dim(0) == x_.dim(0) && dy.dim(1) == cfg_.hidden,
                 "dy {} does not match the forward input {}", dy.shape_str(), x_.shape_str());
  Tensor dx;
  if (cfg_.shared_experts > 0) {
    ScopedTimer timer(times_.shared);
    dx = shared_backward(params_.shared_w13, params_.shared_w2, x_, shared_act_, dy,
                         grads_.shared_w13, grads_.shared_w2);
  } else {
    dx = Tensor::zeros(x_.shape());
  }
  Tensor dy_perm = dispatcher_.combine_backward(dy, dispatched_.handle);
  std::vector<float> dweight_perm;
  Tensor dx_perm;
  {
    ScopedTimer timer(times_.experts);
    dx_perm = experts_backward(params_.w13, params_.w2, dispatched_.recv_x,
                               dispatched_.tokens_per_local_expert, expert_act_, dy_perm,
                               dispatched_.handle.perm_weight, grads_.w13, grads_.w2, dweight_perm);
  }
  DispatchBackward back = dispatcher_.dispatch_backward(dx_perm, dweight_perm, dispatched_.handle);
  float* pdx = dx.f32();
  const float* pb = back.dx.f32();
  for (int64_t i = 0; i < dx.numel(); ++i) pdx[i] += pb[i];
  ScopedTimer timer(times_.router);
  router_backward(cfg_, ep_->size(), x_, params_.gate, routing_, back.dtopk_weight, seq_len_,
                  grads_.gate, dx);
  return dx;
}

}  // namespace moerun
