// The CPU SwiGLU kernel on contiguous rows, shared by the dense FFN, the shared experts and each
// routed expert's segment (layers/cpu/experts.cpp). W1 and W3 are fused into one (2F, H)
// matrix so the up-projection is a single GEMM.
#pragma once

#include <cstdint>

namespace moerun::cpu {

struct SwigluWeights {
  const float* w13;  // (2F, H): rows [0,F) = W1 (gate_proj), rows [F,2F) = W3 (up_proj)
  const float* w2;   // (H, F) down_proj
  int64_t H;
  int64_t F;
};

// x (n, H) -> out (n, H), overwritten. ab (n, 2F) receives [x W1^T | x W3^T] for backward.
void swiglu_rows_forward(const float* x, int64_t n, const SwigluWeights& w, float* ab, float* out);

// dout (n, H) is the gradient of the UNWEIGHTED output rows. With row_weight (n) the rows
// contributed row_weight[i] * out[i]: the weight scales the parameter and input gradients,
// and d_row_weight[i] = dout[i] . out[i] is written. Pass nullptr for both to mean weight 1.
// dx (n, H) is overwritten; dw13 (2F, H) and dw2 (H, F) are accumulated into.
void swiglu_rows_backward(const float* x, int64_t n, const SwigluWeights& w, const float* ab,
                          const float* dout, const float* row_weight, float* dw13, float* dw2,
                          float* dx, float* d_row_weight);

}  // namespace moerun::cpu
