// RoPE frequency tables: plain and YaRN (HF transformers modeling_rope_utils is the reference).
#include "layers/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "runtime/check.h"

namespace moerun {

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

std::vector<double> rope_inv_freq(int64_t dim, double theta, const RopeScaling& scaling) {
  MOERUN_REQUIRE(dim > 0 && dim % 2 == 0, "RoPE needs an even rotary dim > 0 (got {})", dim);
  const int64_t half = dim / 2;
  const double d = static_cast<double>(dim);
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t j = 0; j < half; ++j)
    inv[j] = 1.0 / std::pow(theta, 2.0 * static_cast<double>(j) / d);
  if (!scaling.yarn) return inv;

  // The dimension index at which the wavelength makes num_rotations turns over the original
  // context; below `low` frequencies stay (extrapolate), above `high` they are divided by factor.
  auto correction_dim = [&](double num_rotations) {
    return d *
           std::log(static_cast<double>(scaling.original_max_position) /
                    (num_rotations * 2.0 * std::numbers::pi)) /
           (2.0 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(scaling.beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(scaling.beta_slow)), d - 1.0);
  if (low == high) high += 0.001;  // as HF: no division by zero in the ramp
  for (int64_t j = 0; j < half; ++j) {
    const double ramp = std::clamp((static_cast<double>(j) - low) / (high - low), 0.0, 1.0);
    const double extrapolation = 1.0 - ramp;
    inv[j] = inv[j] / scaling.factor * (1.0 - extrapolation) + inv[j] * extrapolation;
  }
  return inv;
}

double rope_attention_factor(const RopeScaling& scaling) {
  if (!scaling.yarn) return 1.0;
  if (scaling.mscale != 0.0 && scaling.mscale_all_dim != 0.0)
    return yarn_get_mscale(scaling.factor, scaling.mscale) /
           yarn_get_mscale(scaling.factor, scaling.mscale_all_dim);
  return yarn_get_mscale(scaling.factor, 1.0);
}

double mla_softmax_scale(int64_t qk_head_dim, const RopeScaling& scaling) {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim));
  if (scaling.yarn && scaling.mscale_all_dim != 0.0) {
    const double m = yarn_get_mscale(scaling.factor, scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

void rope_tables(const std::vector<double>& inv_freq, int64_t pos0, int64_t T,
                 double attention_factor, float* cos_t, float* sin_t) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  for (int64_t t = 0; t < T; ++t) {
    const double pos = static_cast<double>(pos0 + t);
    for (int64_t j = 0; j < half; ++j) {
      const double ang = pos * inv_freq[j];
      cos_t[t * half + j] = static_cast<float>(std::cos(ang) * attention_factor);
      sin_t[t * half + j] = static_cast<float>(std::sin(ang) * attention_factor);
    }
  }
}

}  // namespace moerun
