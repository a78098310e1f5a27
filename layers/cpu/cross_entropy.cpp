// Stable softmax cross-entropy on the CPU: subtract the row max, sum exponentials in double.
// Forward and backward compute each row's max, exponentials and sum in the same order, so the
// gradient is what a fused single pass would give, bit for bit.
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

double cross_entropy_forward(const Tensor& logits_t, const Tensor& targets_t) {
  const int64_t N = logits_t.dim(0), V = logits_t.dim(1);
  const float* logits = logits_t.f32();
  const int32_t* targets = targets_t.data<int32_t>();
  check_targets(targets, N, V);
  double total = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const float* l = logits + i * V;
    float m = l[0];
    for (int64_t j = 1; j < V; ++j) m = std::max(m, l[j]);
    double sum = 0.0;
    for (int64_t j = 0; j < V; ++j) sum += std::exp(l[j] - m);
    total += std::log(sum) + static_cast<double>(m) - static_cast<double>(l[targets[i]]);
  }
  return total / static_cast<double>(N);
}

void cross_entropy_backward(const Tensor& targets_t, float loss_scale, Tensor& logits_t) {
  const int64_t N = logits_t.dim(0), V = logits_t.dim(1);
  float* g_all = logits_t.f32();
  const int32_t* targets = targets_t.data<int32_t>();
  check_targets(targets, N, V);
  const float gscale = static_cast<float>(static_cast<double>(loss_scale) / static_cast<double>(N));
  for (int64_t i = 0; i < N; ++i) {
    float* g = g_all + i * V;
    float m = g[0];
    for (int64_t j = 1; j < V; ++j) m = std::max(m, g[j]);
    double sum = 0.0;
    for (int64_t j = 0; j < V; ++j) {
      g[j] = std::exp(g[j] - m);
      sum += g[j];
    }
    const float c = static_cast<float>(1.0 / sum) * gscale;
    for (int64_t j = 0; j < V; ++j) g[j] *= c;
    g[targets[i]] -= gscale;
  }
}

}  // namespace moerun::cpu
