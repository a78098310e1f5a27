// SwiGLU FFN op: out = (silu(x W1^T) * (x W3^T)) W2^T, with W1 and W3 fused into one (2F, H)
// matrix. The dense FFN (MLP) and the shared experts are one SwiGLU each; the routed experts
// run it per expert segment (layers/experts.h).
#pragma once

#include "runtime/tensor.h"

namespace moerun {

struct SwigluOut {
  Tensor out;  // (n, H)
  Tensor ab;   // (n, 2F) pre-activations [x W1^T | x W3^T], saved for backward
};

// x (n, H), w13 (2F, H) rows W1 | W3, w2 (H, F) -> out (n, H), ab (n, 2F).
SwigluOut swiglu_forward(const Tensor& x, const Tensor& w13, const Tensor& w2);

// dout (n, H) -> dx (n, H); dw13 (2F, H) and dw2 (H, F) are accumulated into.
Tensor swiglu_backward(const Tensor& x, const Tensor& w13, const Tensor& w2, const Tensor& ab,
                       const Tensor& dout, Tensor& dw13, Tensor& dw2);

namespace cpu {
void swiglu_forward(const Tensor& x, const Tensor& w13, const Tensor& w2, Tensor& ab, Tensor& out);
void swiglu_backward(const Tensor& x, const Tensor& w13, const Tensor& w2, const Tensor& ab,
                     const Tensor& dout, Tensor& dw13, Tensor& dw2, Tensor& dx);
}  // namespace cpu

}  // namespace moerun
