// Grouped SwiGLU over the local experts' segments (one GEMM chain per expert).
#include "layers/experts.h"

#include "layers/swiglu.h"

namespace moerun {

namespace {
SwigluWeights expert_weights(const Tensor& w13, const Tensor& w2, int64_t e) {
  const int64_t F = w2.dim(2), H = w2.dim(1);
  return SwigluWeights{w13.f32() + e * 2 * F * H, w2.f32() + e * H * F, H, F};
}
}  // namespace

Tensor experts_forward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                       const std::vector<int64_t>& counts, ExpertActivations& act) {
  const int64_t n = x_perm.dim(0), H = w2.dim(1), F = w2.dim(2);
  MOERUN_REQUIRE(static_cast<int64_t>(counts.size()) == w13.dim(0),
                 "expert segments ({}) != local experts ({})", counts.size(), w13.dim(0));
  act.ab = Tensor::empty({n, 2 * F});
  Tensor out = Tensor::empty({n, H});
  int64_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    swiglu_forward(x_perm.row(row), counts[e], expert_weights(w13, w2, static_cast<int64_t>(e)),
                   act.ab.row(row), out.row(row));
    row += counts[e];
  }
  MOERUN_REQUIRE(row == n, "expert segments cover {} rows of {}", row, n);
  return out;
}

Tensor experts_backward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                        const std::vector<int64_t>& counts, const ExpertActivations& act,
                        const Tensor& dout, const std::vector<float>& row_weight, Tensor& dw13,
                        Tensor& dw2, std::vector<float>& d_row_weight) {
  const int64_t n = x_perm.dim(0), H = w2.dim(1), F = w2.dim(2);
  Tensor dx = Tensor::empty({n, H});
  d_row_weight.resize(static_cast<size_t>(n));
  int64_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const auto ei = static_cast<int64_t>(e);
    swiglu_backward(x_perm.row(row), counts[e], expert_weights(w13, w2, ei), act.ab.row(row),
                    dout.row(row), row_weight.data() + row, dw13.f32() + ei * 2 * F * H,
                    dw2.f32() + ei * H * F, dx.row(row), d_row_weight.data() + row);
    row += counts[e];
  }
  return dx;
}

Tensor shared_forward(const Tensor& w13, const Tensor& w2, const Tensor& x,
                      ExpertActivations& act) {
  const int64_t n = x.dim(0), H = w2.dim(0), F = w2.dim(1);
  act.ab = Tensor::empty({n, 2 * F});
  Tensor out = Tensor::empty({n, H});
  swiglu_forward(x.f32(), n, SwigluWeights{w13.f32(), w2.f32(), H, F}, act.ab.f32(), out.f32());
  return out;
}

Tensor shared_backward(const Tensor& w13, const Tensor& w2, const Tensor& x,
                       const ExpertActivations& act, const Tensor& dout, Tensor& dw13,
                       Tensor& dw2) {
  const int64_t n = x.dim(0), H = w2.dim(0), F = w2.dim(1);
  Tensor dx = Tensor::empty({n, H});
  swiglu_backward(x.f32(), n, SwigluWeights{w13.f32(), w2.f32(), H, F}, act.ab.f32(), dout.f32(),
                  nullptr, dw13.f32(), dw2.f32(), dx.f32(), nullptr);
  return dx;
}

}  // namespace moerun
