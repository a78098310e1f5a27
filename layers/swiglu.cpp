// SwiGLU op: shape checks and backend choice.
#include "layers/swiglu.h"

#include "layers/backend.h"
#include "runtime/check.h"

namespace moerun {

namespace {
void check_weights(const Tensor& x, const Tensor& w13, const Tensor& w2) {
  MOERUN_REQUIRE(x.ndim() == 2 && w2.ndim() == 2 && x.dim(1) == w2.dim(0) &&
                     w13.shape() == std::vector<int64_t>({2 * w2.dim(1), w2.dim(0)}),
                 "SwiGLU needs x (n, H), w13 (2F, H), w2 (H, F) (got {}, {}, {})", x.shape_str(),
                 w13.shape_str(), w2.shape_str());
}
}  // namespace

SwigluOut swiglu_forward(const Tensor& x, const Tensor& w13, const Tensor& w2) {
  check_weights(x, w13, w2);
  const Device d = backend_of("swiglu_forward", {&x, &w13, &w2});
  const int64_t n = x.dim(0), H = w2.dim(0), F = w2.dim(1);
  SwigluOut r{Tensor::empty({n, H}, DType::kF32, d), Tensor::empty({n, 2 * F}, DType::kF32, d)};
  switch (d) {
    case Device::kCpu:
      cpu::swiglu_forward(x, w13, w2, r.ab, r.out);
      return r;
    case Device::kCuda:
      break;
  }
  no_backend("swiglu_forward", d);
}

Tensor swiglu_backward(const Tensor& x, const Tensor& w13, const Tensor& w2, const Tensor& ab,
                       const Tensor& dout, Tensor& dw13, Tensor& dw2) {
  check_weights(x, w13, w2);
  MOERUN_REQUIRE(
      dout.shape() == x.shape() && ab.shape() == std::vector<int64_t>({x.dim(0), w13.dim(0)}) &&
          dw13.shape() == w13.shape() && dw2.shape() == w2.shape(),
      "SwiGLU backward: dout {}, ab {}, dw13 {}, dw2 {} do not match x {}", dout.shape_str(),
      ab.shape_str(), dw13.shape_str(), dw2.shape_str(), x.shape_str());
  const Device d = backend_of("swiglu_backward", {&x, &w13, &w2, &ab, &dout, &dw13, &dw2});
  Tensor dx = Tensor::empty(x.shape(), DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::swiglu_backward(x, w13, w2, ab, dout, dw13, dw2, dx);
      return dx;
    case Device::kCuda:
      break;
  }
  no_backend("swiglu_backward", d);
}

}  // namespace moerun
