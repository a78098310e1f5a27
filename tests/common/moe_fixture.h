// Moving the double-precision reference layer's data in and out of a float MoELayer.
#pragma once

#include <vector>

#include "layers/moe.h"
#include "tests/common/moe_reference.h"

namespace moerun::testing {

inline Tensor to_tensor(const std::vector<double>& v, std::vector<int64_t> shape,
                        int64_t offset = 0) {
  Tensor t = Tensor::empty(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i)
    t.f32()[i] = static_cast<float>(v[static_cast<size_t>(offset + i)]);
  return t;
}

inline std::vector<double> to_vec(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = t.f32()[i];
  return v;
}

inline std::vector<double> slice(const std::vector<double>& v, int64_t begin, int64_t n) {
  return {v.begin() + begin, v.begin() + begin + n};
}

// Copies the reference weights into the layer: its own experts only, the rest replicated.
inline void load_layer(MoELayer& layer, const RefLayer& L) {
  const MoEConfig& c = L.cfg;
  const int64_t H = c.hidden, F = c.expert_width, E = c.routed_experts, SF = c.shared_width();
  const int64_t El = layer.local_experts(), e0 = layer.first_expert();
  MoEParams& p = layer.params();
  p.gate = to_tensor(L.gate, {E, H});
  p.bias = to_tensor(L.bias, {E});
  p.w13 = to_tensor(L.w13, {El, 2 * F, H}, e0 * 2 * F * H);
  p.w2 = to_tensor(L.w2, {El, H, F}, e0 * H * F);
  if (SF > 0) {
    p.shared_w13 = to_tensor(L.sw13, {2 * SF, H});
    p.shared_w2 = to_tensor(L.sw2, {H, SF});
  }
  layer.grads().zero();
}

}  // namespace moerun::testing
