// Stable softmax cross-entropy on the CPU: subtract the row max, sum exponentials in double.
#include <algorithm>
#include <cmath>

#include "layers/cross_entropy.h"
#include "runtime/check.h"

namespace moerun::cpu {

namespace {
void check_targets(const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t i = 0; i < N; ++i) {
    MOERUN_REQUIRE(targets[i] >= 0 && targets[i] < V,
                   "target {} at row {} is outside the vocabulary [0, {})", targets[i], i, V);
  }
}
}  // namespace

double cross_entropy_forward(const Tensor& targets_t, Tensor& logits_t, Tensor& inv_sum_t) {
  const int64_t N = logits_t.dim(0), V = logits_t.dim(1);
  const int32_t* targets = targets_t.data<int32_t>();
  check_targets(targets, N, V);
  float* inv_sum = inv_sum_t.f32();
  double total = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    float* g = logits_t.f32() + i * V;
    float m = g[0];
    for (int64_t j = 1; j < V; ++j) m = std::max(m, g[j]);
    const float lt = g[targets[i]];  // read before the exps overwrite it
    double sum = 0.0;
    for (int64_t j = 0; j < V; ++j) {
      g[j] = std::exp(g[j] - m);
      sum += g[j];
    }
    inv_sum[i] = static_cast<float>(1.0 / sum);
    total += std::log(sum) + static_cast<double>(m) - static_cast<double>(lt);
  }
  return total / static_cast<double>(N);
}

void cross_entropy_backward(const Tensor& inv_sum_t, const Tensor& targets_t, float loss_scale,
                            Tensor& exps_t) {
  const int64_t N = exps_t.dim(0), V = exps_t.dim(1);
  const int32_t* targets = targets_t.data<int32_t>();
  check_targets(targets, N, V);  // backward may get targets the forward never saw
  const float* inv_sum = inv_sum_t.f32();
  const float gscale = static_cast<float>(static_cast<double>(loss_scale) / static_cast<double>(N));
  for (int64_t i = 0; i < N; ++i) {
    float* g = exps_t.f32() + i * V;
    const float c = inv_sum[i] * gscale;
    for (int64_t j = 0; j < V; ++j) g[j] *= c;
    g[targets[i]] -= gscale;
  }
}

}  // namespace moerun::cpu
