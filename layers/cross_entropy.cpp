// Cross-entropy: shape checks and backend choice.
#include "layers/cross_entropy.h"

#include "layers/backend.h"
#include "runtime/check.h"

namespace moerun {

namespace {
void check_shapes(const Tensor& logits, const Tensor& targets) {
  MOERUN_REQUIRE(logits.ndim() == 2 && logits.dim(0) > 0 && logits.dim(1) > 0,
                 "cross-entropy needs N > 0 and V > 0 (got logits {})", logits.shape_str());
  MOERUN_REQUIRE(targets.dtype() == DType::kI32 && targets.numel() == logits.dim(0),
                 "cross-entropy needs {} int32 targets (got {} {})", logits.dim(0),
                 to_string(targets.dtype()), targets.shape_str());
}
}  // namespace

CrossEntropyOut cross_entropy_forward(Tensor logits, const Tensor& targets) {
  check_shapes(logits, targets);
  const Device d = backend_of("cross_entropy_forward", {&logits, &targets});
  CrossEntropyOut out{0.0, logits, Tensor::empty({logits.dim(0)}, DType::kF32, d)};
  switch (d) {
    case Device::kCpu:
      out.loss = cpu::cross_entropy_forward(targets, out.exps, out.inv_sum);
      return out;
    case Device::kCuda:
      break;
  }
  no_backend("cross_entropy_forward", d);
}

Tensor cross_entropy_backward(Tensor exps, const Tensor& inv_sum, const Tensor& targets,
                              float loss_scale) {
  check_shapes(exps, targets);
  MOERUN_REQUIRE(inv_sum.numel() == exps.dim(0), "{} row normalisers for {} rows", inv_sum.numel(),
                 exps.dim(0));
  const Device d = backend_of("cross_entropy_backward", {&exps, &inv_sum, &targets});
  switch (d) {
    case Device::kCpu:
      cpu::cross_entropy_backward(inv_sum, targets, loss_scale, exps);
      return exps;
    case Device::kCuda:
      break;
  }
  no_backend("cross_entropy_backward", d);
}

}  // namespace moerun
