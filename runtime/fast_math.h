// Branch-free float exp and sigmoid that compilers vectorize (std::exp is a scalar libm call):
// Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r, and
// 2^n built in the exponent bits. Max relative error ~2 ulp for x in [-87, 88]; inputs are
// clamped to that range (e^-87 ~ 1.6e-38, e^88 ~ 1.6e38), which sigmoid never notices.
#pragma once

#include <bit>
#include <cstdint>

namespace moerun {

inline float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = __builtin_roundevenf(x * 1.44269504088896341f);  // x / ln2
  float r = x - n * 0.693359375f;                                  // ln2 high part (exact)
  r = r - n * -2.12194440e-4f;                                     // ln2 low part
  // e^r on |r| <= 0.347: Taylor coefficients 1/k!, Horner form.
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

inline float fast_sigmoidf(float x) {
  return 1.0f / (1.0f + fast_expf(-x));
}

}  // namespace moerun
