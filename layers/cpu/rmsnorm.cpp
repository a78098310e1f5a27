// RMSNorm forward and backward (CPU, fp32 data, double reductions).
//   y_j  = w_j x_j r,  r = (mean(x^2) + eps)^(-1/2)
//   dw_j += dy_j x_j r
//   dx_j = r (g_j - x_j r^2 mean_k(g_k x_k)),  g = dy * w
#include <cmath>

#include "layers/rmsnorm.h"
#include "runtime/check.h"

namespace moerun::cpu {

namespace {
// Four double accumulators: breaks the add dependency chain so the loop runs at memory speed.
double dot_double(const float* a, const float* b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    s0 += static_cast<double>(a[j]) * b[j];
    s1 += static_cast<double>(a[j + 1]) * b[j + 1];
    s2 += static_cast<double>(a[j + 2]) * b[j + 2];
    s3 += static_cast<double>(a[j + 3]) * b[j + 3];
  }
  for (; j < n; ++j) s0 += static_cast<double>(a[j]) * b[j];
  return (s0 + s1) + (s2 + s3);
}
}  // namespace

void rmsnorm_forward(const Tensor& x_t, const Tensor& w_t, float eps, Tensor& y_t, Tensor& rstd_t) {
  const int64_t N = x_t.dim(0), H = x_t.dim(1);
  const float* x = x_t.f32();
  const float* w = w_t.f32();
  float* y = y_t.f32();
  float* rstd = rstd_t.f32();
  MOERUN_REQUIRE(H > 0 && N >= 0, "bad RMSNorm shape N={} H={}", N, H);
  MOERUN_REQUIRE(eps >= 0.0f, "RMSNorm eps must be >= 0 (got {})", eps);
  for (int64_t i = 0; i < N; ++i) {
    const float* xi = x + i * H;
    float* yi = y + i * H;
    const double ms = dot_double(xi, xi, H) / static_cast<double>(H);
    const float r = static_cast<float>(1.0 / std::sqrt(ms + static_cast<double>(eps)));
    rstd[i] = r;
    // HF order: normalise first (x * r in fp32), then scale by the weight.
    for (int64_t j = 0; j < H; ++j) yi[j] = w[j] * (xi[j] * r);
  }
}

void rmsnorm_backward(const Tensor& x_t, const Tensor& w_t, const Tensor& rstd_t,
                      const Tensor& dy_t, Tensor& dw_t, Tensor& dx_t) {
  const int64_t N = x_t.dim(0), H = x_t.dim(1);
  const float* x = x_t.f32();
  const float* w = w_t.f32();
  const float* rstd = rstd_t.f32();
  const float* dy = dy_t.f32();
  float* dw = dw_t.f32();
  float* dx = dx_t.f32();
  MOERUN_REQUIRE(H > 0 && N >= 0, "bad RMSNorm shape N={} H={}", N, H);
  for (int64_t i = 0; i < N; ++i) {
    const float* xi = x + i * H;
    const float* dyi = dy + i * H;
    float* dxi = dx + i * H;
    const float r = rstd[i];
    // mean_k(dy_k w_k x_k), in double: it is a cancelling sum when dy has mixed signs.
    double gx0 = 0, gx1 = 0;
    int64_t j = 0;
    for (; j + 2 <= H; j += 2) {
      gx0 += static_cast<double>(dyi[j] * w[j]) * xi[j];
      gx1 += static_cast<double>(dyi[j + 1] * w[j + 1]) * xi[j + 1];
    }
    for (; j < H; ++j) gx0 += static_cast<double>(dyi[j] * w[j]) * xi[j];
    const float c = static_cast<float>((gx0 + gx1) / static_cast<double>(H)) * r * r;
    for (j = 0; j < H; ++j) {
      const float xr = xi[j] * r;
      dw[j] += dyi[j] * xr;
      dxi[j] = r * (dyi[j] * w[j] - xi[j] * c);
    }
  }
}

}  // namespace moerun::cpu
