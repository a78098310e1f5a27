// LM head GEMMs and the chunked head + loss (CPU).
#include "layers/lm_head.h"

#include <algorithm>

#include "layers/cross_entropy.h"
#include "runtime/blas.h"
#include "runtime/check.h"
#include "runtime/tensor.h"

namespace moerun {

void lm_head_forward(const float* x, const float* w, int64_t N, int64_t H, int64_t V,
                     float* logits) {
  sgemm(Trans::kNo, Trans::kYes, N, V, H, 1.0f, x, H, w, H, 0.0f, logits, V);
}

void lm_head_backward(const float* x, const float* w, const float* dlogits, int64_t N, int64_t H,
                      int64_t V, float* dw, float* dx) {
  // dx (N, H) = dlogits (N, V) w (V, H); dw (V, H) += dlogits^T (V, N) x (N, H)
  sgemm(Trans::kNo, Trans::kNo, N, H, V, 1.0f, dlogits, V, w, H, 0.0f, dx, H);
  sgemm(Trans::kYes, Trans::kNo, V, H, N, 1.0f, dlogits, V, x, H, 1.0f, dw, H);
}

double lm_head_cross_entropy(const float* x, const float* w, const int32_t* targets, int64_t N,
                             int64_t H, int64_t V, float loss_scale, float* dw, float* dx,
                             int64_t chunk_rows) {
  MOERUN_REQUIRE(N > 0 && H > 0 && V > 0, "bad LM head shape N={} H={} V={}", N, H, V);
  MOERUN_REQUIRE(chunk_rows > 0, "chunk_rows must be > 0 (got {})", chunk_rows);
  MOERUN_REQUIRE((dx == nullptr) == (dw == nullptr), "pass both dx and dw, or neither");
  const int64_t chunk = std::min(chunk_rows, N);
  Tensor logits_t = Tensor::empty({chunk, V});
  float* logits = logits_t.f32();
  double total = 0.0;
  for (int64_t i0 = 0; i0 < N; i0 += chunk) {
    const int64_t rows = std::min(chunk, N - i0);
    lm_head_forward(x + i0 * H, w, rows, H, V, logits);
    // The chunk's loss is a mean over its rows; rescale its gradient to a share of the mean
    // over all N rows.
    const float chunk_scale =
        static_cast<float>(static_cast<double>(loss_scale) * rows / static_cast<double>(N));
    const double mean = cross_entropy_forward_backward(logits, targets + i0, rows, V, chunk_scale,
                                                       dx != nullptr ? logits : nullptr);
    total += mean * static_cast<double>(rows);
    if (dx != nullptr) lm_head_backward(x + i0 * H, w, logits, rows, H, V, dw, dx + i0 * H);
  }
  return total / static_cast<double>(N);
}

}  // namespace moerun
