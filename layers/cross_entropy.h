// Softmax cross-entropy over rows of logits, forward and backward as two calls. The forward
// keeps what the backward needs (the softmax numerators over the logits' own storage, and one
// normaliser per row), so the pair does the work of one fused pass, bit for bit.
#pragma once

#include "runtime/tensor.h"

namespace moerun {

struct CrossEntropyOut {
  double loss = 0.0;  // mean over rows of -log softmax(logits)[target], summed in double
  Tensor exps;        // (N, V) exp(logit - row max), in the logits' storage
  Tensor inv_sum;     // (N) f32: 1 / sum of the row's exps
};

// logits (N, V), targets (N) int32 in [0, V). The logits are consumed (overwritten with the
// exps); pass a clone to keep them. Throws on a target outside [0, V).
CrossEntropyOut cross_entropy_forward(Tensor logits, const Tensor& targets);

// -> dlogits (N, V) = loss_scale * (softmax(logits) - onehot(target)) / N, written over the
// exps' storage. To average over tokens on several ranks, pass loss_scale = N / N_global.
Tensor cross_entropy_backward(Tensor exps, const Tensor& inv_sum, const Tensor& targets,
                              float loss_scale);

namespace cpu {
double cross_entropy_forward(const Tensor& targets, Tensor& logits, Tensor& inv_sum);
void cross_entropy_backward(const Tensor& inv_sum, const Tensor& targets, float loss_scale,
                            Tensor& exps);
}  // namespace cpu

}  // namespace moerun
