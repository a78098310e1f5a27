// Routed experts: one SwiGLU per local expert over its contiguous segment of the permuted
// rows; and the always-on shared experts (one SwiGLU of width S*F over every token).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace moerun {

struct ExpertActivations {
  Tensor ab;  // (n, 2F) pre-activations [x W1^T | x W3^T], saved for backward
};

// x_perm (n, H) grouped by local expert (segment sizes tokens_per_local_expert);
// w13 (E_local, 2F, H), w2 (E_local, H, F) -> out (n, H), unweighted.
Tensor experts_forward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                       const std::vector<int64_t>& tokens_per_local_expert, ExpertActivations& act);

// dout (n, H): gradient of the unweighted rows; row_weight (n): the gate weight each row was
// combined with. Accumulates dw13, dw2; returns dx_perm (n, H); writes d_row_weight (n).
Tensor experts_backward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                        const std::vector<int64_t>& tokens_per_local_expert,
                        const ExpertActivations& act, const Tensor& dout,
                        const std::vector<float>& row_weight, Tensor& dw13, Tensor& dw2,
                        std::vector<float>& d_row_weight);

// Shared experts: w13 (2*S*F, H), w2 (H, S*F); x (T, H) -> out (T, H).
Tensor shared_forward(const Tensor& w13, const Tensor& w2, const Tensor& x, ExpertActivations& act);
Tensor shared_backward(const Tensor& w13, const Tensor& w2, const Tensor& x,
                       const ExpertActivations& act, const Tensor& dout, Tensor& dw13, Tensor& dw2);

}  // namespace moerun
