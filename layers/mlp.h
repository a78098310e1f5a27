// MLP: the dense SwiGLU FFN of the first_k_dense blocks, as a module owning its weights,
// gradients and saved activations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/param.h"
#include "runtime/tensor.h"

namespace moerun {

class MLP {
 public:
  MLP(int64_t hidden, int64_t width);
  // x (N, H) -> y (N, H). Saves x and the pre-activations.
  Tensor forward(const Tensor& x);
  // dy (N, H) -> dx (N, H); accumulates dw13, dw2.
  Tensor backward(const Tensor& dy);
  void named_params(const std::string& prefix, std::vector<NamedParam>& out);
  void drop_saved() { saved_ = {}; }

  Tensor w13, dw13;  // (2F, H) rows W1 | W3
  Tensor w2, dw2;    // (H, F)

 private:
  struct Saved {
    Tensor x;   // (N, H)
    Tensor ab;  // (N, 2F)
  } saved_;
};

}  // namespace moerun
