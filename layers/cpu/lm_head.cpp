// LM head GEMMs on the CPU.
#include "layers/lm_head.h"
#include "runtime/blas.h"

namespace moerun::cpu {

void lm_head_forward(const Tensor& x, const Tensor& w, Tensor& logits) {
  const int64_t N = x.dim(0), H = x.dim(1), V = w.dim(0);
  sgemm(Trans::kNo, Trans::kYes, N, V, H, 1.0f, x.f32(), H, w.f32(), H, 0.0f, logits.f32(), V);
}

void lm_head_backward(const Tensor& x, const Tensor& w, const Tensor& dlogits, Tensor& dw,
                      Tensor& dx) {
  const int64_t N = x.dim(0), H = x.dim(1), V = w.dim(0);
  // dx (N, H) = dlogits (N, V) w (V, H); dw (V, H) += dlogits^T (V, N) x (N, H)
  sgemm(Trans::kNo, Trans::kNo, N, H, V, 1.0f, dlogits.f32(), V, w.f32(), H, 0.0f, dx.f32(), H);
  sgemm(Trans::kYes, Trans::kNo, V, H, N, 1.0f, dlogits.f32(), V, x.f32(), H, 1.0f, dw.f32(), H);
}

}  // namespace moerun::cpu
