// AdamW with fp32 moments and decoupled weight decay on the tensors flagged for it, plus the
// double-precision sum of squares that global gradient-norm clipping adds up across tensors.
#pragma once

#include <cstdint>
#include <span>

namespace moerun {

// Decay matrices (projections, embeddings); leave norms' weights and biases alone.
enum class WeightDecay { kNone, kApply };

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // decoupled: p -= lr * weight_decay * p, on kApply tensors only
  // Throws moerun::Error naming the bad field.
  void validate() const;
};

// One parameter tensor as flat spans of equal length; m and v persist between steps.
struct AdamWParam {
  std::span<float> param;
  std::span<const float> grad;
  std::span<float> m;
  std::span<float> v;
  WeightDecay decay = WeightDecay::kNone;
};

class AdamW {
 public:
  explicit AdamW(const AdamWConfig& cfg);

  // Advances the step counter t, then for every tensor:
  //   g = grad_scale * grad            (grad_scale carries the clipping factor; no extra pass)
  //   p -= lr * weight_decay * p       (kApply tensors; uses p before the Adam update, as PyTorch)
  //   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
  //   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
  void step(std::span<const AdamWParam> params, double lr, double grad_scale = 1.0);

  int64_t steps() const { return t_; }
  // For resuming from a checkpoint: the number of steps already taken.
  void set_steps(int64_t t);
  const AdamWConfig& config() const { return cfg_; }

 private:
  AdamWConfig cfg_;
  int64_t t_ = 0;
};

// sum_i g_i^2 in double; add these over tensors (and ranks) for the global gradient norm.
double sum_of_squares(std::span<const float> g);

}  // namespace moerun
