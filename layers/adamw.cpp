// AdamW update (CPU, fp32 state, step constants in double).
#include "layers/adamw.h"

#include <cmath>

#include "runtime/check.h"

namespace moerun {

void AdamWConfig::validate() const {
  MOERUN_REQUIRE(beta1 >= 0.0 && beta1 < 1.0, "AdamW beta1 must be in [0, 1) (got {})", beta1);
  MOERUN_REQUIRE(beta2 >= 0.0 && beta2 < 1.0, "AdamW beta2 must be in [0, 1) (got {})", beta2);
  MOERUN_REQUIRE(eps > 0.0, "AdamW eps must be > 0 (got {})", eps);
  MOERUN_REQUIRE(weight_decay >= 0.0, "AdamW weight_decay must be >= 0 (got {})", weight_decay);
}

AdamW::AdamW(const AdamWConfig& cfg) : cfg_(cfg) {
  cfg_.validate();
}

void AdamW::set_steps(int64_t t) {
  MOERUN_REQUIRE(t >= 0, "AdamW step count must be >= 0 (got {})", t);
  t_ = t;
}

void AdamW::step(std::span<const AdamWParam> params, double lr, double grad_scale) {
  MOERUN_REQUIRE(std::isfinite(lr) && lr >= 0.0,
                 "AdamW learning rate must be finite, >= 0 (got {})", lr);
  MOERUN_REQUIRE(std::isfinite(grad_scale), "AdamW grad_scale must be finite (got {})", grad_scale);
  for (size_t k = 0; k < params.size(); ++k) {
    const AdamWParam& p = params[k];
    const size_t n = p.param.size();
    MOERUN_REQUIRE(p.grad.size() == n && p.m.size() == n && p.v.size() == n,
                   "AdamW tensor {}: param {}, grad {}, m {}, v {} elements differ", k, n,
                   p.grad.size(), p.m.size(), p.v.size());
  }
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, static_cast<double>(t_));
  // Folded constants: p -= step * m / (sqrt(v) * inv_sqrt_bc2 + eps), the PyTorch arrangement.
  const float b1 = static_cast<float>(cfg_.beta1), b2 = static_cast<float>(cfg_.beta2);
  const float c1 = static_cast<float>(1.0 - cfg_.beta1), c2 = static_cast<float>(1.0 - cfg_.beta2);
  const float step_size = static_cast<float>(lr / bc1);
  const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  const float eps = static_cast<float>(cfg_.eps);
  const float gs = static_cast<float>(grad_scale);
  for (const AdamWParam& p : params) {
    const float keep =
        p.decay == WeightDecay::kApply ? static_cast<float>(1.0 - lr * cfg_.weight_decay) : 1.0f;
    float* w = p.param.data();
    const float* g = p.grad.data();
    float* m = p.m.data();
    float* v = p.v.data();
    const size_t n = p.param.size();
    for (size_t i = 0; i < n; ++i) {
      const float gi = g[i] * gs;
      const float mi = b1 * m[i] + c1 * gi;
      const float vi = b2 * v[i] + c2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      w[i] = w[i] * keep - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
    }
  }
}

double sum_of_squares(std::span<const float> g) {
  // Four accumulators: independent add chains, and a little less rounding drift on long spans.
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const size_t n = g.size();
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(g[i]) * g[i];
    s1 += static_cast<double>(g[i + 1]) * g[i + 1];
    s2 += static_cast<double>(g[i + 2]) * g[i + 2];
    s3 += static_cast<double>(g[i + 3]) * g[i + 3];
  }
  for (; i < n; ++i) s0 += static_cast<double>(g[i]) * g[i];
  return (s0 + s1) + (s2 + s3);
}

}  // namespace moerun
