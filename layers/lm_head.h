// LM head op: logits = x W^T with W (V, H) (HF lm_head.weight, or embed_tokens when tied).
// The head with its loss, chunked so the (N, V) logits are never all in memory at once, is the
// LMHeadLoss module (layers/loss.h).
#pragma once

#include "runtime/tensor.h"

namespace moerun {

// x (N, H), w (V, H) -> logits (N, V), written into `logits` when given (e.g. a reused buffer).
Tensor lm_head_forward(const Tensor& x, const Tensor& w, Tensor logits = {});

// dlogits (N, V) -> dx (N, H), written into `dx` when given (e.g. a row range of a larger
// buffer); dw (V, H) accumulated into.
Tensor lm_head_backward(const Tensor& x, const Tensor& w, const Tensor& dlogits, Tensor& dw,
                        Tensor dx = {});

namespace cpu {
void lm_head_forward(const Tensor& x, const Tensor& w, Tensor& logits);
void lm_head_backward(const Tensor& x, const Tensor& w, const Tensor& dlogits, Tensor& dw,
                      Tensor& dx);
}  // namespace cpu

}  // namespace moerun
