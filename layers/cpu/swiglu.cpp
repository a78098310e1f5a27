// SwiGLU forward/backward on the CPU over OpenBLAS: one fused up-projection GEMM, one
// down-projection GEMM, and in backward the three gradient GEMMs; the elementwise parts run in
// place in scratch.
#include <cmath>
#include <vector>

#include "layers/cpu/swiglu.h"
#include "layers/swiglu.h"
#include "runtime/blas.h"
#include "runtime/fast_math.h"

namespace moerun::cpu {

namespace {
inline float sigmoidf(float a) {
  return fast_sigmoidf(a);  // vectorizes; std::exp is a scalar libm call per element
}

// Scratch reused across calls (single-threaded per rank).
std::vector<float>& scratch(int slot, size_t n) {
  thread_local std::vector<float> buf[3];
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot];
}
}  // namespace

void swiglu_rows_forward(const float* x, int64_t n, const SwigluWeights& w, float* ab, float* out) {
  const int64_t H = w.H, F = w.F;
  if (n == 0) return;
  // ab (n, 2F) = x (n, H) * w13^T (H, 2F)
  sgemm(Trans::kNo, Trans::kYes, n, 2 * F, H, 1.0f, x, H, w.w13, H, 0.0f, ab, 2 * F);
  std::vector<float>& hbuf = scratch(0, static_cast<size_t>(n * F));
  float* h = hbuf.data();
  for (int64_t i = 0; i < n; ++i) {
    const float* a = ab + i * 2 * F;
    const float* b = a + F;
    float* hi = h + i * F;
    for (int64_t j = 0; j < F; ++j) hi[j] = a[j] * sigmoidf(a[j]) * b[j];
  }
  // out (n, H) = h (n, F) * w2^T (F, H)
  sgemm(Trans::kNo, Trans::kYes, n, H, F, 1.0f, h, F, w.w2, F, 0.0f, out, H);
}

void swiglu_rows_backward(const float* x, int64_t n, const SwigluWeights& w, const float* ab,
                          const float* dout, const float* row_weight, float* dw13, float* dw2,
                          float* dx, float* d_row_weight) {
  const int64_t H = w.H, F = w.F;
  if (n == 0) return;
  float* h = scratch(0, static_cast<size_t>(n * F)).data();  // silu(a) * b, recomputed
  float* g = scratch(1, static_cast<size_t>(n * F)).data();  // dout * w2 (unweighted)
  float* dab = scratch(2, static_cast<size_t>(n * 2 * F)).data();
  for (int64_t i = 0; i < n; ++i) {
    const float* a = ab + i * 2 * F;
    const float* b = a + F;
    float* hi = h + i * F;
    for (int64_t j = 0; j < F; ++j) hi[j] = a[j] * sigmoidf(a[j]) * b[j];
  }
  // g (n, F) = dout (n, H) * w2 (H, F)
  sgemm(Trans::kNo, Trans::kNo, n, F, H, 1.0f, dout, H, w.w2, F, 0.0f, g, F);
  if (row_weight != nullptr) {
    // d_row_weight = dout . out = dout . (h w2^T) = (dout w2) . h
    for (int64_t i = 0; i < n; ++i) {
      double s = 0.0;
      const float* gi = g + i * F;
      const float* hi = h + i * F;
      for (int64_t j = 0; j < F; ++j) s += static_cast<double>(gi[j]) * hi[j];
      d_row_weight[i] = static_cast<float>(s);
    }
    // The row weight scales everything downstream of out; fold it into h (for dw2) and g.
    for (int64_t i = 0; i < n; ++i) {
      const float wi = row_weight[i];
      float* hi = h + i * F;
      float* gi = g + i * F;
      for (int64_t j = 0; j < F; ++j) {
        hi[j] *= wi;
        gi[j] *= wi;
      }
    }
  }
  // dw2 (H, F) += dout^T (H, n) * (w h) (n, F)
  sgemm(Trans::kYes, Trans::kNo, H, F, n, 1.0f, dout, H, h, F, 1.0f, dw2, F);
  for (int64_t i = 0; i < n; ++i) {
    const float* a = ab + i * 2 * F;
    const float* b = a + F;
    const float* gi = g + i * F;
    float* da = dab + i * 2 * F;
    float* db = da + F;
    for (int64_t j = 0; j < F; ++j) {
      const float s = sigmoidf(a[j]);
      const float silu = a[j] * s;
      db[j] = gi[j] * silu;
      da[j] = gi[j] * b[j] * (s * (1.0f + a[j] * (1.0f - s)));
    }
  }
  // dw13 (2F, H) += dab^T (2F, n) * x (n, H);  dx (n, H) = dab (n, 2F) * w13 (2F, H)
  sgemm(Trans::kYes, Trans::kNo, 2 * F, H, n, 1.0f, dab, 2 * F, x, H, 1.0f, dw13, H);
  sgemm(Trans::kNo, Trans::kNo, n, H, 2 * F, 1.0f, dab, 2 * F, w.w13, H, 0.0f, dx, H);
}

void swiglu_forward(const Tensor& x, const Tensor& w13, const Tensor& w2, Tensor& ab, Tensor& out) {
  swiglu_rows_forward(x.f32(), x.dim(0), {w13.f32(), w2.f32(), w2.dim(0), w2.dim(1)}, ab.f32(),
                      out.f32());
}

void swiglu_backward(const Tensor& x, const Tensor& w13, const Tensor& w2, const Tensor& ab,
                     const Tensor& dout, Tensor& dw13, Tensor& dw2, Tensor& dx) {
  swiglu_rows_backward(x.f32(), x.dim(0), {w13.f32(), w2.f32(), w2.dim(0), w2.dim(1)}, ab.f32(),
                       dout.f32(), nullptr, dw13.f32(), dw2.f32(), dx.f32(), nullptr);
}

}  // namespace moerun::cpu
