// RoPE frequency tables as pure functions: the plain inverse frequencies, YaRN's (DeepSeek-V2/V3
// configs, computed as HF transformers' _compute_yarn_parameters does), the attention factor that
// scales cos/sin, and the MLA softmax scale with YaRN's mscale_all_dim correction.
#pragma once

#include <cstdint>
#include <vector>

#include "layers/attention.h"

namespace moerun {

// YaRN's magnitude correction: 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1.
double yarn_get_mscale(double scale, double mscale);

// inv_freq[j], j < dim/2, for a rotary dimension dim (even): theta^(-2j/dim), or with YaRN the
// blend of extrapolated (theta^(-2j/dim)) and interpolated (that / factor) frequencies over the
// linear ramp between the correction dims of beta_fast and beta_slow rotations (floored and
// ceiled, HF's truncate = true). Computed in double (HF computes in fp32).
std::vector<double> rope_inv_freq(int64_t dim, double theta, const RopeScaling& scaling);

// What multiplies cos and sin: 1 without YaRN; with it get_mscale(factor, mscale) /
// get_mscale(factor, mscale_all_dim) when both are non-zero, else get_mscale(factor, 1).
double rope_attention_factor(const RopeScaling& scaling);

// MLA's score scale: qk_head_dim^-0.5, times get_mscale(factor, mscale_all_dim)^2 when YaRN is on
// and mscale_all_dim is non-zero (HF's yarn_apply_mscale).
double mla_softmax_scale(int64_t qk_head_dim, const RopeScaling& scaling);

// cos/sin (T, inv_freq.size()) row-major for positions pos0 .. pos0 + T - 1, each times
// attention_factor. Angles in double: pos * inv_freq reaches ~1e5 radians at long context.
void rope_tables(const std::vector<double>& inv_freq, int64_t pos0, int64_t T,
                 double attention_factor, float* cos_t, float* sin_t);

}  // namespace moerun
