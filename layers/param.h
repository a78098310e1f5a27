// NamedParam: a parameter as optimizers, gradient sync and checkpoints see it.
#pragma once

#include <string>

#include "runtime/tensor.h"

namespace moerun {

// Expert tensors hold only this rank's E_local experts (their gradients reduce over the
// expert-data-parallel group, not the world). value and grad point at views into the model's
// flat parameter and gradient buffers.
struct NamedParam {
  std::string name;  // HF-like: "layers.1.moe.w13"
  Tensor* value;
  Tensor* grad;
  bool is_expert;  // sharded over the EP group
  bool is_matrix;  // 2-D or more (weight decay applies); norm weights are not
};

}  // namespace moerun
