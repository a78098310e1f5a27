// LM head: shape checks and backend choice.
#include "layers/lm_head.h"

#include "layers/backend.h"
#include "runtime/check.h"

namespace moerun {

Tensor lm_head_forward(const Tensor& x, const Tensor& w, Tensor logits) {
  MOERUN_REQUIRE(x.ndim() == 2 && w.ndim() == 2 && x.dim(1) == w.dim(1),
                 "LM head needs x (N, H) and w (V, H) (got {} and {})", x.shape_str(),
                 w.shape_str());
  const Device d = backend_of("lm_head_forward", {&x, &w, &logits});
  const std::vector<int64_t> shape = {x.dim(0), w.dim(0)};
  if (!logits.defined()) logits = Tensor::empty(shape, DType::kF32, d);
  MOERUN_REQUIRE(logits.shape() == shape, "logits {} must be ({}, {})", logits.shape_str(),
                 shape[0], shape[1]);
  switch (d) {
    case Device::kCpu:
      cpu::lm_head_forward(x, w, logits);
      return logits;
    case Device::kCuda:
      break;
  }
  no_backend("lm_head_forward", d);
}

Tensor lm_head_backward(const Tensor& x, const Tensor& w, const Tensor& dlogits, Tensor& dw,
                        Tensor dx) {
  MOERUN_REQUIRE(x.ndim() == 2 && w.ndim() == 2 && x.dim(1) == w.dim(1) &&
                     dw.shape() == w.shape() &&
                     dlogits.shape() == std::vector<int64_t>({x.dim(0), w.dim(0)}),
                 "LM head backward: x {}, w {}, dw {}, dlogits {} do not match", x.shape_str(),
                 w.shape_str(), dw.shape_str(), dlogits.shape_str());
  const Device d = backend_of("lm_head_backward", {&x, &w, &dlogits, &dw, &dx});
  if (!dx.defined()) dx = Tensor::empty(x.shape(), DType::kF32, d);
  MOERUN_REQUIRE(dx.shape() == x.shape(), "dx {} must be {}", dx.shape_str(), x.shape_str());
  switch (d) {
    case Device::kCpu:
      cpu::lm_head_backward(x, w, dlogits, dw, dx);
      return dx;
    case Device::kCuda:
      break;
  }
  no_backend("lm_head_backward", d);
}

}  // namespace moerun
