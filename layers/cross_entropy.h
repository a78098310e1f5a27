// Softmax cross-entropy over rows of logits, fused with its gradient (the loss is always the
// last op, so forward and backward are one pass over the (N, V) logits).
#pragma once

#include <cstdint>

namespace moerun {

// logits (N, V), targets (N) int32 in [0, V) -> mean over rows of -log softmax(logits)[target],
// summed in double. When dlogits (N, V) is not null it is overwritten with
//   dlogits = loss_scale * (softmax(logits) - onehot(target)) / N.
// dlogits may alias logits (the logits are then consumed). To average over tokens on several
// ranks, pass loss_scale = N / N_global. Throws on a target outside [0, V).
double cross_entropy_forward_backward(const float* logits, const int32_t* targets, int64_t N,
                                      int64_t V, float loss_scale, float* dlogits);

// Loss only (evaluation): the same mean loss, logits untouched.
inline double cross_entropy_loss(const float* logits, const int32_t* targets, int64_t N,
                                 int64_t V) {
  return cross_entropy_forward_backward(logits, targets, N, V, 1.0f, nullptr);
}

}  // namespace moerun
