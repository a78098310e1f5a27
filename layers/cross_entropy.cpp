// Stable softmax cross-entropy: subtract the row max, sum exponentials in double.
#include "layers/cross_entropy.h"

#include <algorithm>
#include <cmath>

#include "runtime/check.h"

namespace moerun {

double cross_entropy_forward_backward(const float* logits, const int32_t* targets, int64_t N,
                                      int64_t V, float loss_scale, float* dlogits) {
  MOERUN_REQUIRE(N > 0 && V > 0, "cross-entropy needs N > 0 and V > 0 (got N={} V={})", N, V);
  for (int64_t i = 0; i < N; ++i) {
    MOERUN_REQUIRE(targets[i] >= 0 && targets[i] < V,
                   "target {} at row {} is outside the vocabulary [0, {})", targets[i], i, V);
  }
  const float gscale = static_cast<float>(static_cast<double>(loss_scale) / static_cast<double>(N));
  double total = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const float* l = logits + i * V;
    const int32_t t = targets[i];
    float m = l[0];
    for (int64_t j = 1; j < V; ++j) m = std::max(m, l[j]);
    const float lt = l[t];  // read before dlogits (possibly aliasing) overwrites it
    double sum = 0.0;
    if (dlogits == nullptr) {
      for (int64_t j = 0; j < V; ++j) sum += std::exp(l[j] - m);
    } else {
      // Keep the exponentials in dlogits so the gradient pass does not recompute them.
      float* g = dlogits + i * V;
      for (int64_t j = 0; j < V; ++j) {
        g[j] = std::exp(l[j] - m);
        sum += g[j];
      }
      const float c = static_cast<float>(1.0 / sum) * gscale;
      for (int64_t j = 0; j < V; ++j) g[j] *= c;
      g[t] -= gscale;
    }
    total += std::log(sum) + static_cast<double>(m) - static_cast<double>(lt);
  }
  return total / static_cast<double>(N);
}

}  // namespace moerun
