// Softmax cross-entropy over rows of logits: the loss, and its gradient as a separate call (the
// gradient recomputes the row statistics, so forward keeps nothing but the logits).
#pragma once

#include "runtime/tensor.h"

namespace moerun {

// logits (N, V), targets (N) int32 in [0, V) -> mean over rows of -log softmax(logits)[target],
// summed in double. Throws on a target outside [0, V).
double cross_entropy_forward(const Tensor& logits, const Tensor& targets);

// -> dlogits (N, V) = loss_scale * (softmax(logits) - onehot(target)) / N, written over the
// logits' storage (the logits are consumed; pass a clone to keep them). To average over tokens
// on several ranks, pass loss_scale = N / N_global.
Tensor cross_entropy_backward(Tensor logits, const Tensor& targets, float loss_scale);

namespace cpu {
double cross_entropy_forward(const Tensor& logits, const Tensor& targets);
void cross_entropy_backward(const Tensor& targets, float loss_scale, Tensor& logits);
}  // namespace cpu

}  // namespace moerun
