// RMSNorm over rows of H: y = w * x / sqrt(mean(x^2) + eps), normalisation in fp32 as HF does,
// with the mean of squares accumulated in double so long rows lose nothing.
#pragma once

#include <cstdint>

namespace moerun {

// x (N, H), w (H) -> y (N, H), overwritten; rstd (N) = 1/sqrt(mean(x^2) + eps) is saved for
// backward (it is all the backward needs besides x and w).
void rmsnorm_forward(const float* x, const float* w, int64_t N, int64_t H, float eps, float* y,
                     float* rstd);

// dy (N, H) -> dx (N, H), overwritten; dw (H) is accumulated into. x and rstd are the forward's.
void rmsnorm_backward(const float* x, const float* w, const float* rstd, const float* dy, int64_t N,
                      int64_t H, float* dw, float* dx);

}  // namespace moerun
