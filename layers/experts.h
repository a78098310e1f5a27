// Routed experts: one SwiGLU per local expert over its contiguous segment of the permuted rows.
// (The always-on shared experts are one SwiGLU of width S*F over every token: layers/swiglu.h.)
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace moerun {

struct ExpertsOut {
  Tensor out;  // (n, H) unweighted expert outputs, permuted order
  Tensor ab;   // (n, 2F) pre-activations [x W1^T | x W3^T], saved for backward
};

struct ExpertsGrad {
  Tensor dx_perm;      // (n, H)
  Tensor drow_weight;  // (n): d loss / d gate weight of each permuted row
};

// x_perm (n, H) grouped by local expert (segment sizes tokens_per_local_expert);
// w13 (E_local, 2F, H), w2 (E_local, H, F) -> out (n, H), unweighted.
ExpertsOut experts_forward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                           const std::vector<int64_t>& tokens_per_local_expert);

// dout (n, H): gradient of the unweighted rows; row_weight (n): the gate weight each row was
// combined with. Accumulates dw13, dw2.
ExpertsGrad experts_backward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                             const std::vector<int64_t>& tokens_per_local_expert, const Tensor& ab,
                             const Tensor& dout, const Tensor& row_weight, Tensor& dw13,
                             Tensor& dw2);

namespace cpu {
void experts_forward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                     const std::vector<int64_t>& tokens_per_local_expert, Tensor& ab, Tensor& out);
void experts_backward(const Tensor& w13, const Tensor& w2, const Tensor& x_perm,
                      const std::vector<int64_t>& tokens_per_local_expert, const Tensor& ab,
                      const Tensor& dout, const Tensor& row_weight, Tensor& dw13, Tensor& dw2,
                      Tensor& dx_perm, Tensor& drow_weight);
}  // namespace cpu

}  // namespace moerun
