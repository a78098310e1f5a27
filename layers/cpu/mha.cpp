// Causal multi-head attention with RoPE on the CPU: every matmul is an sgemm on strided views of
// the fused qkv buffer; softmax statistics (log-sum-exp per row) are saved so backward recomputes
// the probabilities block by block instead of storing T x T per head.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "layers/mha.h"
#include "runtime/blas.h"
#include "runtime/check.h"

namespace moerun::cpu {

namespace {

void ensure(Tensor& t, std::vector<int64_t> shape) {
  if (!t.defined() || t.shape() != shape) t = Tensor::empty(std::move(shape));
}

struct AttentionWeights {
  const float* wqkv;  // (3H, H) rows [0,H) q_proj, [H,2H) k_proj, [2H,3H) v_proj (HF out x in)
  const float* wo;    // (H, H) o_proj
};

struct AttentionGrads {
  float* dwqkv;  // (3H, H), accumulated into
  float* dwo;    // (H, H), accumulated into
};

enum class RopeDir { kForward, kInverse };

// Rotates q and k of every head in place. HF: q' = q cos + rotate_half(q) sin with
// rotate_half(q) = cat(-q2, q1), so the pair (j, j + d/2) turns by angle pos * inv_freq[j].
// The inverse (a rotation's transpose) maps d(q') back to d(q) in backward.
void rope_rotate(float* qkv, int64_t N, int64_t T, int64_t H, int64_t n_head, int64_t D,
                 const float* cos_t, const float* sin_t, RopeDir dir) {
  const int64_t half = D / 2;
  const float sgn = dir == RopeDir::kForward ? 1.0f : -1.0f;
  for (int64_t i = 0; i < N; ++i) {
    const float* c = cos_t + (i % T) * half;
    const float* s = sin_t + (i % T) * half;
    float* row = qkv + i * 3 * H;
    // q heads then k heads: 2 * n_head consecutive head-sized chunks at the row's start.
    for (int64_t hh = 0; hh < 2 * n_head; ++hh) {
      float* a = row + hh * D;
      float* b = a + half;
      for (int64_t j = 0; j < half; ++j) {
        const float x1 = a[j], x2 = b[j], sj = sgn * s[j];
        a[j] = x1 * c[j] - x2 * sj;
        b[j] = x2 * c[j] + x1 * sj;
      }
    }
  }
}

// cos/sin (T, D/2) of positions [first_pos, first_pos + T). Angles in double: pos *
// theta^(-2j/D) reaches ~1e5 radians at long context, where a float product would already be
// off by whole hundredths of a turn.
void rope_table(double theta, int64_t D, int64_t first_pos, int64_t T, float* cos_t, float* sin_t) {
  const int64_t half = D / 2;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < half; ++j) {
      const double inv_freq =
          std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(D));
      const double ang = static_cast<double>(first_pos + t) * inv_freq;
      cos_t[t * half + j] = static_cast<float>(std::cos(ang));
      sin_t[t * half + j] = static_cast<float>(std::sin(ang));
    }
  }
}

// One score row in place: softmax over its first nvalid entries, zeros up to kend (the causal
// mask). Returns the row's log-sum-exp.
float softmax_causal_row(float* srow, int64_t nvalid, int64_t kend) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < nvalid; ++j) m = std::max(m, srow[j]);
  double sum = 0.0;
  for (int64_t j = 0; j < nvalid; ++j) {
    srow[j] = std::exp(srow[j] - m);
    sum += srow[j];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t j = 0; j < nvalid; ++j) srow[j] *= inv;
  for (int64_t j = nvalid; j < kend; ++j) srow[j] = 0.0f;
  return m + static_cast<float>(std::log(sum));
}

}  // namespace

void mha_forward(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo,
                 const Tensor& x_t, int64_t B, int64_t T, MHASaved& saved, Tensor& out_t) {
  const float* x = x_t.f32();
  float* out = out_t.f32();
  const AttentionWeights w{wqkv.f32(), wo.f32()};
  const int64_t H = cfg.H, NH = cfg.n_head, D = cfg.head_dim(), half = D / 2;
  const int64_t N = B * T, H3 = 3 * H;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

  saved.B = B;
  saved.T = T;
  ensure(saved.qkv, {N, H3});
  ensure(saved.att, {N, H});
  ensure(saved.lse, {B, NH, T});
  ensure(saved.rope_cos, {T, half});
  ensure(saved.rope_sin, {T, half});
  float* qkv = saved.qkv.f32();
  float* att = saved.att.f32();
  float* lse = saved.lse.f32();
  float* cos_t = saved.rope_cos.f32();
  float* sin_t = saved.rope_sin.f32();

  rope_table(cfg.rope_theta, D, 0, T, cos_t, sin_t);

  // qkv (N, 3H) = x (N, H) wqkv^T
  sgemm(Trans::kNo, Trans::kYes, N, H3, H, 1.0f, x, H, w.wqkv, H, 0.0f, qkv, H3);
  rope_rotate(qkv, N, T, H, NH, D, cos_t, sin_t, RopeDir::kForward);

  const int64_t qb = std::min(cfg.q_block, T);
  std::vector<float> S(static_cast<size_t>(qb * T));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NH; ++h) {
      const float* Q = qkv + b * T * H3 + h * D;  // (T, D), row stride 3H
      const float* K = Q + H;
      const float* V = Q + 2 * H;
      float* O = att + b * T * H + h * D;  // (T, D), row stride H
      float* L = lse + (b * NH + h) * T;
      for (int64_t i0 = 0; i0 < T; i0 += qb) {
        const int64_t rows = std::min(qb, T - i0);
        const int64_t kend = i0 + rows;  // causal: this block sees keys [0, kend)
        // S (rows, kend) = scale * Q[i0:i0+rows] K[0:kend]^T
        sgemm(Trans::kNo, Trans::kYes, rows, kend, D, scale, Q + i0 * H3, H3, K, H3, 0.0f, S.data(),
              kend);
        for (int64_t r = 0; r < rows; ++r)
          L[i0 + r] = softmax_causal_row(S.data() + r * kend, i0 + r + 1, kend);
        // O[i0:i0+rows] = P V[0:kend]
        sgemm(Trans::kNo, Trans::kNo, rows, D, kend, 1.0f, S.data(), kend, V, H3, 0.0f, O + i0 * H,
              H);
      }
    }
  }

  // out (N, H) = att (N, H) wo^T
  sgemm(Trans::kNo, Trans::kYes, N, H, H, 1.0f, att, H, w.wo, H, 0.0f, out, H);
}

void mha_backward(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo,
                  const Tensor& x_t, const MHASaved& saved, const Tensor& dout_t, Tensor& dwqkv,
                  Tensor& dwo, Tensor& dx_t) {
  const float* x = x_t.f32();
  const float* dout = dout_t.f32();
  float* dx = dx_t.f32();
  const AttentionWeights w{wqkv.f32(), wo.f32()};
  const AttentionGrads grads{dwqkv.f32(), dwo.f32()};
  const int64_t B = saved.B, T = saved.T;
  const int64_t H = cfg.H, NH = cfg.n_head, D = cfg.head_dim();
  const int64_t N = B * T, H3 = 3 * H;
  MOERUN_REQUIRE(saved.qkv.defined() && saved.qkv.shape() == std::vector<int64_t>({N, H3}) &&
                     saved.lse.shape() == std::vector<int64_t>({B, NH, T}),
                 "attention backward needs the saved state of a forward with the same config");
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const float* qkv = saved.qkv.f32();
  const float* att = saved.att.f32();
  const float* lse = saved.lse.f32();

  // Output projection, reversed: datt (N, H) = dout wo; dwo += dout^T att.
  Tensor datt_t = Tensor::empty({N, H});
  float* datt = datt_t.f32();
  sgemm(Trans::kNo, Trans::kNo, N, H, H, 1.0f, dout, H, w.wo, H, 0.0f, datt, H);
  sgemm(Trans::kYes, Trans::kNo, H, H, N, 1.0f, dout, H, att, H, 1.0f, grads.dwo, H);

  // dk and dv gather from every later query block, so the buffer starts at zero.
  Tensor dqkv_t = Tensor::zeros({N, H3});
  float* dqkv = dqkv_t.f32();

  const int64_t qb = std::min(cfg.q_block, T);
  std::vector<float> P(static_cast<size_t>(qb * T));
  std::vector<float> dP(static_cast<size_t>(qb * T));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NH; ++h) {
      const int64_t off = b * T * H3 + h * D;
      const float* Q = qkv + off;
      const float* K = Q + H;
      const float* V = Q + 2 * H;
      float* dQ = dqkv + off;
      float* dK = dQ + H;
      float* dV = dQ + 2 * H;
      const float* O = att + b * T * H + h * D;
      const float* dO = datt + b * T * H + h * D;
      const float* L = lse + (b * NH + h) * T;
      for (int64_t i0 = 0; i0 < T; i0 += qb) {
        const int64_t rows = std::min(qb, T - i0);
        const int64_t kend = i0 + rows;
        // Recompute P = exp(scale Q K^T - lse) from the saved row statistics.
        sgemm(Trans::kNo, Trans::kYes, rows, kend, D, scale, Q + i0 * H3, H3, K, H3, 0.0f, P.data(),
              kend);
        // dP (rows, kend) = dO V^T
        sgemm(Trans::kNo, Trans::kYes, rows, kend, D, 1.0f, dO + i0 * H, H, V, H3, 0.0f, dP.data(),
              kend);
        for (int64_t r = 0; r < rows; ++r) {
          float* prow = P.data() + r * kend;
          float* dsrow = dP.data() + r * kend;
          const int64_t nvalid = i0 + r + 1;
          const float l = L[i0 + r];
          // softmax backward: dS = P (dP - sum_j P_j dP_j), and sum_j P_j dP_j = dO . O.
          const float* orow = O + (i0 + r) * H;
          const float* dorow = dO + (i0 + r) * H;
          double delta = 0.0;
          for (int64_t d = 0; d < D; ++d) delta += static_cast<double>(orow[d]) * dorow[d];
          const float df = static_cast<float>(delta);
          for (int64_t j = 0; j < nvalid; ++j) {
            prow[j] = std::exp(prow[j] - l);
            dsrow[j] = prow[j] * (dsrow[j] - df);
          }
          for (int64_t j = nvalid; j < kend; ++j) prow[j] = dsrow[j] = 0.0f;
        }
        // dQ[block] = scale dS K; each query row lives in one block, so beta = 0.
        sgemm(Trans::kNo, Trans::kNo, rows, D, kend, scale, dP.data(), kend, K, H3, 0.0f,
              dQ + i0 * H3, H3);
        // dK[0:kend] += scale dS^T Q[block]; dV[0:kend] += P^T dO[block]
        sgemm(Trans::kYes, Trans::kNo, kend, D, rows, scale, dP.data(), kend, Q + i0 * H3, H3, 1.0f,
              dK, H3);
        sgemm(Trans::kYes, Trans::kNo, kend, D, rows, 1.0f, P.data(), kend, dO + i0 * H, H, 1.0f,
              dV, H3);
      }
    }
  }

  rope_rotate(dqkv, N, T, H, NH, D, saved.rope_cos.f32(), saved.rope_sin.f32(), RopeDir::kInverse);

  // qkv projection, reversed: dx (N, H) = dqkv wqkv; dwqkv += dqkv^T x.
  sgemm(Trans::kNo, Trans::kNo, N, H, H3, 1.0f, dqkv, H3, w.wqkv, H, 0.0f, dx, H);
  sgemm(Trans::kYes, Trans::kNo, H3, H, N, 1.0f, dqkv, H3, x, H, 1.0f, grads.dwqkv, H);
}

// Generation: the forward's arithmetic for t new rows per sequence, with keys and values of the
// earlier positions read from the cache (laid out (batch, n_head, max_len, D) so each head's keys
// are one contiguous GEMM operand).
void mha_decode(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo, const Tensor& x_t,
                int64_t t, MHACache& cache, Tensor& out_t) {
  const int64_t H = cfg.H, NH = cfg.n_head, D = cfg.head_dim(), half = D / 2;
  const int64_t B = cache.batch, N = B * t, H3 = 3 * H, Lmax = cache.max_len, pos = cache.len;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  std::vector<float> qkv(static_cast<size_t>(N * H3));
  std::vector<float> att(static_cast<size_t>(N * H));
  std::vector<float> cos_t(static_cast<size_t>(t * half)), sin_t(static_cast<size_t>(t * half));
  float* kc = cache.k.f32();
  float* vc = cache.v.f32();

  rope_table(cfg.rope_theta, D, pos, t, cos_t.data(), sin_t.data());
  sgemm(Trans::kNo, Trans::kYes, N, H3, H, 1.0f, x_t.f32(), H, wqkv.f32(), H, 0.0f, qkv.data(), H3);
  rope_rotate(qkv.data(), N, t, H, NH, D, cos_t.data(), sin_t.data(), RopeDir::kForward);

  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < t; ++i) {
      const float* row = qkv.data() + (b * t + i) * H3;
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t at = ((b * NH + h) * Lmax + pos + i) * D;
        std::copy(row + H + h * D, row + H + (h + 1) * D, kc + at);
        std::copy(row + 2 * H + h * D, row + 2 * H + (h + 1) * D, vc + at);
      }
    }
  }

  const int64_t qb = std::min(cfg.q_block, t);
  std::vector<float> S(static_cast<size_t>(qb * (pos + t)));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NH; ++h) {
      const float* Q = qkv.data() + b * t * H3 + h * D;  // (t, D), row stride 3H
      const float* K = kc + (b * NH + h) * Lmax * D;     // (pos + t, D), row stride D
      const float* V = vc + (b * NH + h) * Lmax * D;
      float* O = att.data() + b * t * H + h * D;  // (t, D), row stride H
      for (int64_t i0 = 0; i0 < t; i0 += qb) {
        const int64_t rows = std::min(qb, t - i0);
        const int64_t kend = pos + i0 + rows;
        sgemm(Trans::kNo, Trans::kYes, rows, kend, D, scale, Q + i0 * H3, H3, K, D, 0.0f, S.data(),
              kend);
        for (int64_t r = 0; r < rows; ++r)
          softmax_causal_row(S.data() + r * kend, pos + i0 + r + 1, kend);
        sgemm(Trans::kNo, Trans::kNo, rows, D, kend, 1.0f, S.data(), kend, V, D, 0.0f, O + i0 * H,
              H);
      }
    }
  }

  sgemm(Trans::kNo, Trans::kYes, N, H, H, 1.0f, att.data(), H, wo.f32(), H, 0.0f, out_t.f32(), H);
  cache.len = pos + t;
}

}  // namespace moerun::cpu
