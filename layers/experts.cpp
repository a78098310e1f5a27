// Routed experts: shape checks and backend choice.
#include "layers/experts.h"

#include "layers/backend.h"
#include "runtime/check.h"

namespace moerun {

namespace {
void check_shapes(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                  const std::vector<int64_t>& counts) {
  MOERUN_REQUIRE(
      w2.ndim() == 3 && w13.shape() == std::vector<int64_t>({w2.dim(0), 2 * w2.dim(2), w2.dim(1)}),
      "experts need w13 (E_local, 2F, H) and w2 (E_local, H, F) (got {} and {})", w13.shape_str(),
      w2.shape_str());
  MOERUN_REQUIRE(x_perm.ndim() == 2 && x_perm.dim(1) == w2.dim(1), "expert rows {} must be (n, {})",
                 x_perm.shape_str(), w2.dim(1));
  MOERUN_REQUIRE(static_cast<int64_t>(counts.size()) == w13.dim(0),
                 "expert segments ({}) != local experts ({})", counts.size(), w13.dim(0));
  int64_t rows = 0;
  for (int64_t c : counts) rows += c;
  MOERUN_REQUIRE(rows == x_perm.dim(0), "expert segments cover {} rows of {}", rows, x_perm.dim(0));
}
}  // namespace

ExpertsOut experts_forward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                           const std::vector<int64_t>& counts) {
  check_shapes(w13, w2, x_perm, counts);
  const Device d = backend_of("experts_forward", {&w13, &w2, &x_perm});
  const int64_t n = x_perm.dim(0), H = w2.dim(1), F = w2.dim(2);
  ExpertsOut r{Tensor::empty({n, H}, DType::kF32, d), Tensor::empty({n, 2 * F}, DType::kF32, d)};
  switch (d) {
    case Device::kCpu:
      cpu::experts_forward(w13, w2, x_perm, counts, r.ab, r.out);
      return r;
    case Device::kCuda:
      break;
  }
  no_backend("experts_forward", d);
}

ExpertsGrad experts_backward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                             const std::vector<int64_t>& counts, const Tensor& ab,
                             const Tensor& dout, const Tensor& row_weight, Tensor& dw13,
                             Tensor& dw2) {
  check_shapes(w13, w2, x_perm, counts);
  const int64_t n = x_perm.dim(0), H = w2.dim(1), F = w2.dim(2);
  MOERUN_REQUIRE(
      dout.shape() == x_perm.shape() && ab.shape() == std::vector<int64_t>({n, 2 * F}) &&
          row_weight.numel() == n && dw13.shape() == w13.shape() && dw2.shape() == w2.shape(),
      "experts backward: dout {}, ab {}, row_weight {}, dw13 {}, dw2 {} do not match",
      dout.shape_str(), ab.shape_str(), row_weight.shape_str(), dw13.shape_str(), dw2.shape_str());
  const Device d =
      backend_of("experts_backward", {&w13, &w2, &x_perm, &ab, &dout, &row_weight, &dw13, &dw2});
  ExpertsGrad g{Tensor::empty({n, H}, DType::kF32, d), Tensor::empty({n}, DType::kF32, d)};
  switch (d) {
    case Device::kCpu:
      cpu::experts_backward(w13, w2, x_perm, counts, ab, dout, row_weight, dw13, dw2, g.dx_perm,
                            g.drow_weight);
      return g;
    case Device::kCuda:
      break;
  }
  no_backend("experts_backward", d);
}

}  // namespace moerun
