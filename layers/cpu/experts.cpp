// Grouped SwiGLU over the local experts' segments on the CPU (one GEMM chain per expert).
#include "layers/experts.h"
#include "layers/cpu/swiglu.h"

namespace moerun::cpu {

namespace {
SwigluWeights expert_weights(const Tensor& w13, const Tensor& w2, int64_t e) {
  const int64_t F = w2.dim(2), H = w2.dim(1);
  return SwigluWeights{w13.f32() + e * 2 * F * H, w2.f32() + e * H * F, H, F};
}
}  // namespace

void experts_forward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                     const std::vector<int64_t>& counts, Tensor& ab, Tensor& out) {
  int64_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    swiglu_rows_forward(x_perm.row(row), counts[e],
                        expert_weights(w13, w2, static_cast<int64_t>(e)), ab.row(row),
                        out.row(row));
    row += counts[e];
  }
}

void experts_backward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                      const std::vector<int64_t>& counts, const Tensor& ab, const Tensor& dout,
                      const Tensor& row_weight, Tensor& dw13, Tensor& dw2, Tensor& dx_perm,
                      Tensor& drow_weight) {
  const int64_t H = w2.dim(1), F = w2.dim(2);
  const float* rw = row_weight.f32();
  float* drw = drow_weight.f32();
  int64_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const auto ei = static_cast<int64_t>(e);
    swiglu_rows_backward(x_perm.row(row), counts[e], expert_weights(w13, w2, ei), ab.row(row),
                         dout.row(row), rw + row, dw13.f32() + ei * 2 * F * H,
                         dw2.f32() + ei * H * F, dx_perm.row(row), drw + row);
    row += counts[e];
  }
}

}  // namespace moerun::cpu
