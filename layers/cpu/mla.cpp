// Multi-head latent attention on the CPU: projections are sgemms over the fused buffers, RoPE
// turns the rope parts in place, and scores are formed per (sequence, head, query block) as two
// sgemms (nope part against the head's expanded k_nope, rope part against the shared k_rope).
// The softmax row statistics (log-sum-exp) are saved so backward recomputes the probabilities
// block by block. Decode keeps DeepSeek-V2's latent cache; it attends either with wkv_b absorbed
// into the query and the output (generation: few new tokens, long cache) or by expanding the
// cached keys and values as forward does (a prompt's prefill), whichever costs fewer FLOPs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "layers/mla.h"
#include "layers/rmsnorm.h"
#include "layers/rope.h"
#include "runtime/blas.h"
#include "runtime/check.h"

namespace moerun::cpu {

namespace {

void ensure(Tensor& t, std::vector<int64_t> shape) {
  if (!t.defined() || t.shape() != shape) t = Tensor::empty(std::move(shape));
}

// The sizes every kernel uses, from the config.
struct Dims {
  int64_t H, NH, C, Rq, dn, dr, dv, dq, dkv, half;
  explicit Dims(const AttentionConfig& cfg)
      : H(cfg.H),
        NH(cfg.n_head),
        C(cfg.mla.kv_lora_rank),
        Rq(cfg.mla.q_lora_rank),
        dn(cfg.mla.qk_nope_head_dim),
        dr(cfg.mla.qk_rope_head_dim),
        dv(cfg.mla.v_head_dim),
        dq(cfg.mla.qk_head_dim()),
        dkv(cfg.mla.qk_nope_head_dim + cfg.mla.v_head_dim),
        half(cfg.mla.qk_rope_head_dim / 2) {}
};

enum class RopeDir { kForward, kInverse };

// Turns one rope vector (dr values) in place by the angles of cos/sin (half values each, already
// times the attention factor). Interleaved (V2/V3): pairs (v[2j], v[2j+1]), the layout kept
// (V3's HF code writes the turned pairs de-interleaved; q and k are permuted alike, so the scores
// are the same). rotate_half: pairs (v[j], v[j + half]). The inverse applies the transpose,
// which maps d(out) to d(in) in backward.
void rope_vec(float* v, int64_t half, const float* c, const float* s, bool interleave,
              RopeDir dir) {
  const float sgn = dir == RopeDir::kForward ? 1.0f : -1.0f;
  const int64_t step = interleave ? 2 : 1, other = interleave ? 1 : half;
  for (int64_t j = 0; j < half; ++j) {
    float* a = v + j * step;
    float* b = a + other;
    const float x1 = *a, x2 = *b, sj = sgn * s[j];
    *a = x1 * c[j] - x2 * sj;
    *b = x2 * c[j] + x1 * sj;
  }
}

// RoPE on rows [0, n) of q (every head's rope part) and k_rope; row i uses table row i % T.
void rope_rows(const Dims& d, bool interleave, float* q, float* k_rope, int64_t n, int64_t T,
               const float* cos_t, const float* sin_t, RopeDir dir) {
  for (int64_t i = 0; i < n; ++i) {
    const float* c = cos_t + (i % T) * d.half;
    const float* s = sin_t + (i % T) * d.half;
    if (q != nullptr)
      for (int64_t h = 0; h < d.NH; ++h)
        rope_vec(q + i * d.NH * d.dq + h * d.dq + d.dn, d.half, c, s, interleave, dir);
    if (k_rope != nullptr) rope_vec(k_rope + i * d.dr, d.half, c, s, interleave, dir);
  }
}

// The projections of n rows of x up to q (before RoPE) and the kv latent pieces: q_a, q_a_rstd,
// q_latent (q_lora only), q, c_kv, kv_rstd, kv_latent, k_rope (before RoPE). All preallocated.
struct Projections {
  Tensor q_a, q_a_rstd, q_latent, q, c_kv, kv_rstd, kv_latent, k_rope;
};

void project(const AttentionConfig& cfg, const Dims& d, const MLAWeights& w, const float* x,
             int64_t n, Projections& p) {
  if (d.Rq == 0) {
    sgemm(Trans::kNo, Trans::kYes, n, d.NH * d.dq, d.H, 1.0f, x, d.H, w.wq.f32(), d.H, 0.0f,
          p.q.f32(), d.NH * d.dq);
  } else {
    sgemm(Trans::kNo, Trans::kYes, n, d.Rq, d.H, 1.0f, x, d.H, w.wq_a.f32(), d.H, 0.0f, p.q_a.f32(),
          d.Rq);
    rmsnorm_forward(p.q_a, w.q_norm, cfg.norm_eps, p.q_latent, p.q_a_rstd);
    sgemm(Trans::kNo, Trans::kYes, n, d.NH * d.dq, d.Rq, 1.0f, p.q_latent.f32(), d.Rq, w.wq_b.f32(),
          d.Rq, 0.0f, p.q.f32(), d.NH * d.dq);
  }
  // kv_a (n, C + dr) = x wkv_a^T, split into c_kv and k_rope.
  const int64_t ka = d.C + d.dr;
  std::vector<float> kv_a(static_cast<size_t>(n * ka));
  sgemm(Trans::kNo, Trans::kYes, n, ka, d.H, 1.0f, x, d.H, w.wkv_a.f32(), d.H, 0.0f, kv_a.data(),
        ka);
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(p.c_kv.f32() + i * d.C, kv_a.data() + i * ka, sizeof(float) * d.C);
    std::memcpy(p.k_rope.f32() + i * d.dr, kv_a.data() + i * ka + d.C, sizeof(float) * d.dr);
  }
  rmsnorm_forward(p.c_kv, w.kv_norm, cfg.norm_eps, p.kv_latent, p.kv_rstd);
}

// One head's keys and values over positions [0, kend) and its queries, as strided views.
struct HeadView {
  const float* q;  // (rows, dq) stride ldq: [q_nope | q_rope]
  int64_t ldq;
  const float* kv;  // (kend, dn + dv) stride ldkv: [k_nope | v]
  int64_t ldkv;
  const float* k_rope;  // (kend, dr) stride dr
  float* o;             // (rows, dv) stride ldo
  int64_t ldo;
};

// S (rows, kend) = scale (Q_nope K_nope^T + Q_rope K_rope^T).
void scores(const Dims& d, const HeadView& hv, int64_t rows, int64_t kend, float scale, float* S) {
  sgemm(Trans::kNo, Trans::kYes, rows, kend, d.dn, scale, hv.q, hv.ldq, hv.kv, hv.ldkv, 0.0f, S,
        kend);
  sgemm(Trans::kNo, Trans::kYes, rows, kend, d.dr, scale, hv.q + d.dn, hv.ldq, hv.k_rope, d.dr,
        1.0f, S, kend);
}

// Causal softmax in place over S (rows, kend), kend = pos0 + rows: row r holds the scores of the
// query at position pos0 + r and sees keys [0, pos0 + r]; the rest of the row becomes 0. Writes
// each row's log-sum-exp when lse is not null.
void softmax_rows(float* S, int64_t rows, int64_t pos0, float* lse) {
  const int64_t kend = pos0 + rows;
  for (int64_t r = 0; r < rows; ++r) {
    float* srow = S + r * kend;
    const int64_t nvalid = pos0 + r + 1;
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
    if (lse != nullptr) lse[r] = m + static_cast<float>(std::log(sum));
  }
}

// One sequence's cache over positions [0, kend): the normalised latents and the rope keys.
struct Latents {
  const float* kv_latent;  // (kend, C)
  const float* k_rope;     // (kend, dr)
};

// Attention of t queries Q (t, NH*dq) at positions pos .. pos + t - 1 over a sequence's cached
// latents, wkv_b absorbed (DeepSeek-V2's inference form). Per head h, with W_uk = wkv_b rows
// [h(dn+dv), +dn) and W_uv = the next dv rows, both (., C):
//   q_nope . (W_uk c_j) = (q_nope W_uk) . c_j      scores against the latents
//   sum_j p_j (W_uv c_j) = W_uv (sum_j p_j c_j)     values from the same latents
// so no cached position's key or value is expanded: O(t * len * C) per head.
void attend_absorbed(const Dims& d, const MLAWeights& w, const float* Q, const Latents& lat,
                     int64_t t, int64_t pos, float scale, float* att) {
  const int64_t kend = pos + t, LQ = d.NH * d.dq, LO = d.NH * d.dv;
  std::vector<float> q_lat(static_cast<size_t>(t * d.C)), o_lat(q_lat.size());
  std::vector<float> S(static_cast<size_t>(t * kend));
  for (int64_t h = 0; h < d.NH; ++h) {
    const float* Qh = Q + h * d.dq;                       // (t, dq) stride LQ
    const float* W_uk = w.wkv_b.f32() + h * d.dkv * d.C;  // (dn, C)
    const float* W_uv = W_uk + d.dn * d.C;                // (dv, C)
    // q_lat (t, C) = Q_nope W_uk
    sgemm(Trans::kNo, Trans::kNo, t, d.C, d.dn, 1.0f, Qh, LQ, W_uk, d.C, 0.0f, q_lat.data(), d.C);
    // S (t, kend) = scale (q_lat latent^T + Q_rope k_rope^T)
    sgemm(Trans::kNo, Trans::kYes, t, kend, d.C, scale, q_lat.data(), d.C, lat.kv_latent, d.C, 0.0f,
          S.data(), kend);
    sgemm(Trans::kNo, Trans::kYes, t, kend, d.dr, scale, Qh + d.dn, LQ, lat.k_rope, d.dr, 1.0f,
          S.data(), kend);
    softmax_rows(S.data(), t, pos, nullptr);
    // o_lat (t, C) = P latent; att_h (t, dv) = o_lat W_uv^T
    sgemm(Trans::kNo, Trans::kNo, t, d.C, kend, 1.0f, S.data(), kend, lat.kv_latent, d.C, 0.0f,
          o_lat.data(), d.C);
    sgemm(Trans::kNo, Trans::kYes, t, d.dv, d.C, 1.0f, o_lat.data(), d.C, W_uv, d.C, 0.0f,
          att + h * d.dv, LO);
  }
}

// The same attention as forward computes it: k_nope and v of every cached position expanded
// with wkv_b (kend x NH*(dn+dv)), then per head and block of qb queries the scores over
// [k_nope | k_rope] up to the block's last position, and P v.
void attend_expanded(const Dims& d, const MLAWeights& w, const float* Q, const Latents& lat,
                     int64_t t, int64_t pos, int64_t qb, float scale, float* att) {
  const int64_t kend = pos + t, LQ = d.NH * d.dq, LKV = d.NH * d.dkv, LO = d.NH * d.dv;
  qb = std::min(qb, t);
  std::vector<float> kv(static_cast<size_t>(kend * LKV));
  std::vector<float> S(static_cast<size_t>(qb * kend));
  sgemm(Trans::kNo, Trans::kYes, kend, LKV, d.C, 1.0f, lat.kv_latent, d.C, w.wkv_b.f32(), d.C, 0.0f,
        kv.data(), LKV);
  for (int64_t h = 0; h < d.NH; ++h) {
    for (int64_t i0 = 0; i0 < t; i0 += qb) {
      const int64_t rows = std::min(qb, t - i0), bend = pos + i0 + rows;
      const HeadView hv{Q + i0 * LQ + h * d.dq,   LQ, kv.data() + h * d.dkv, LKV, lat.k_rope,
                        att + i0 * LO + h * d.dv, LO};
      scores(d, hv, rows, bend, scale, S.data());
      softmax_rows(S.data(), rows, pos + i0, nullptr);
      sgemm(Trans::kNo, Trans::kNo, rows, d.dv, bend, 1.0f, S.data(), bend, hv.kv + d.dn, LKV, 0.0f,
            hv.o, LO);
    }
  }
}

// GEMM FLOPs of the two forms for t queries over kend keys: absorbing costs per head
// t C (dn + dv) + 2 t kend C (+ the rope part, alike in both); expanding costs kend C NH (dn+dv)
// once, then t kend (dn + dv) per head. Long caches with few new tokens (generation) absorb;
// a prompt's prefill expands when 2C > dn + dv.
bool absorbed_is_cheaper(const Dims& d, int64_t t, int64_t kend) {
  const double T = double(t), K = double(kend), C = double(d.C), NH = double(d.NH);
  const double absorbed = NH * (T * C * double(d.dkv) + 2.0 * T * K * C);
  const double expanded = K * C * NH * double(d.dkv) + NH * T * K * double(d.dn + d.dv);
  return absorbed < expanded;
}

}  // namespace

void mla_forward(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x_t, int64_t B,
                 int64_t T, MLASaved& saved, Tensor& out_t) {
  const Dims d(cfg);
  const int64_t N = B * T, LQ = d.NH * d.dq, LKV = d.NH * d.dkv, LO = d.NH * d.dv;
  const float scale = static_cast<float>(mla_softmax_scale(d.dq, cfg.rope_scaling));

  saved.B = B;
  saved.T = T;
  if (d.Rq > 0) {
    ensure(saved.q_a, {N, d.Rq});
    ensure(saved.q_a_rstd, {N});
    ensure(saved.q_latent, {N, d.Rq});
  } else {
    saved.q_a = saved.q_a_rstd = saved.q_latent = Tensor();
  }
  ensure(saved.q, {N, LQ});
  ensure(saved.c_kv, {N, d.C});
  ensure(saved.kv_rstd, {N});
  ensure(saved.kv_latent, {N, d.C});
  ensure(saved.k_rope, {N, d.dr});
  ensure(saved.kv, {N, LKV});
  ensure(saved.att, {N, LO});
  ensure(saved.lse, {B, d.NH, T});
  ensure(saved.rope_cos, {T, d.half});
  ensure(saved.rope_sin, {T, d.half});

  Projections p{saved.q_a,  saved.q_a_rstd, saved.q_latent,  saved.q,
                saved.c_kv, saved.kv_rstd,  saved.kv_latent, saved.k_rope};
  project(cfg, d, w, x_t.f32(), N, p);
  // kv (N, NH*(dn+dv)) = kv_latent wkv_b^T
  sgemm(Trans::kNo, Trans::kYes, N, LKV, d.C, 1.0f, saved.kv_latent.f32(), d.C, w.wkv_b.f32(), d.C,
        0.0f, saved.kv.f32(), LKV);

  const std::vector<double> inv_freq = rope_inv_freq(d.dr, cfg.rope_theta, cfg.rope_scaling);
  rope_tables(inv_freq, 0, T, rope_attention_factor(cfg.rope_scaling), saved.rope_cos.f32(),
              saved.rope_sin.f32());
  rope_rows(d, cfg.mla.rope_interleave, saved.q.f32(), saved.k_rope.f32(), N, T,
            saved.rope_cos.f32(), saved.rope_sin.f32(), RopeDir::kForward);

  const int64_t qb = std::min(cfg.q_block, T);
  std::vector<float> S(static_cast<size_t>(qb * T));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < d.NH; ++h) {
      float* L = saved.lse.f32() + (b * d.NH + h) * T;
      for (int64_t i0 = 0; i0 < T; i0 += qb) {
        const int64_t rows = std::min(qb, T - i0);
        const HeadView hv{saved.q.f32() + (b * T + i0) * LQ + h * d.dq,
                          LQ,
                          saved.kv.f32() + b * T * LKV + h * d.dkv,
                          LKV,
                          saved.k_rope.f32() + b * T * d.dr,
                          saved.att.f32() + (b * T + i0) * LO + h * d.dv,
                          LO};
        scores(d, hv, rows, i0 + rows, scale, S.data());
        softmax_rows(S.data(), rows, i0, L + i0);
        // O = P V
        sgemm(Trans::kNo, Trans::kNo, rows, d.dv, i0 + rows, 1.0f, S.data(), i0 + rows,
              hv.kv + d.dn, hv.ldkv, 0.0f, hv.o, hv.ldo);
      }
    }
  }

  // out (N, H) = att wo^T
  sgemm(Trans::kNo, Trans::kYes, N, d.H, LO, 1.0f, saved.att.f32(), LO, w.wo.f32(), LO, 0.0f,
        out_t.f32(), d.H);
}

void mla_backward(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x_t,
                  const MLASaved& saved, const Tensor& dout_t, MLAWeights& dw, Tensor& dx_t) {
  const Dims d(cfg);
  const int64_t B = saved.B, T = saved.T, N = B * T;
  const int64_t LQ = d.NH * d.dq, LKV = d.NH * d.dkv, LO = d.NH * d.dv;
  MOERUN_REQUIRE(saved.q.defined() && saved.q.shape() == std::vector<int64_t>({N, LQ}) &&
                     saved.kv.shape() == std::vector<int64_t>({N, LKV}) &&
                     saved.lse.shape() == std::vector<int64_t>({B, d.NH, T}) &&
                     saved.q_a.defined() == (d.Rq > 0),
                 "MLA backward needs the saved state of a forward with the same config");
  const float scale = static_cast<float>(mla_softmax_scale(d.dq, cfg.rope_scaling));
  const float* x = x_t.f32();
  const float* dout = dout_t.f32();
  const float* q = saved.q.f32();
  const float* kv = saved.kv.f32();
  const float* k_rope = saved.k_rope.f32();
  const float* att = saved.att.f32();
  const float* lse = saved.lse.f32();

  // Output projection, reversed: datt (N, LO) = dout wo; dwo += dout^T att.
  Tensor datt_t = Tensor::empty({N, LO});
  float* datt = datt_t.f32();
  sgemm(Trans::kNo, Trans::kNo, N, LO, d.H, 1.0f, dout, d.H, w.wo.f32(), LO, 0.0f, datt, LO);
  sgemm(Trans::kYes, Trans::kNo, d.H, LO, N, 1.0f, dout, d.H, att, LO, 1.0f, dw.wo.f32(), LO);

  // dq rows are written once per block; dkv and dk_rope gather from every later query block
  // (dk_rope from every head too), so those start at zero.
  Tensor dq_t = Tensor::empty({N, LQ});
  Tensor dkv_t = Tensor::zeros({N, LKV});
  Tensor dk_rope_t = Tensor::zeros({N, d.dr});
  float* dq = dq_t.f32();
  float* dkv = dkv_t.f32();
  float* dk_rope = dk_rope_t.f32();

  const int64_t qb = std::min(cfg.q_block, T);
  std::vector<float> P(static_cast<size_t>(qb * T));
  std::vector<float> dP(static_cast<size_t>(qb * T));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < d.NH; ++h) {
      const float* Q = q + b * T * LQ + h * d.dq;      // (T, dq) stride LQ
      const float* KV = kv + b * T * LKV + h * d.dkv;  // (T, dn + dv) stride LKV
      const float* KR = k_rope + b * T * d.dr;         // (T, dr)
      float* dQ = dq + b * T * LQ + h * d.dq;
      float* dKV = dkv + b * T * LKV + h * d.dkv;
      float* dKR = dk_rope + b * T * d.dr;
      const float* O = att + b * T * LO + h * d.dv;
      const float* dO = datt + b * T * LO + h * d.dv;
      const float* L = lse + (b * d.NH + h) * T;
      for (int64_t i0 = 0; i0 < T; i0 += qb) {
        const int64_t rows = std::min(qb, T - i0);
        const int64_t kend = i0 + rows;
        const HeadView hv{Q + i0 * LQ, LQ, KV, LKV, KR, nullptr, 0};
        scores(d, hv, rows, kend, scale, P.data());
        // dP (rows, kend) = dO V^T
        sgemm(Trans::kNo, Trans::kYes, rows, kend, d.dv, 1.0f, dO + i0 * LO, LO, KV + d.dn, LKV,
              0.0f, dP.data(), kend);
        for (int64_t r = 0; r < rows; ++r) {
          float* prow = P.data() + r * kend;
          float* dsrow = dP.data() + r * kend;
          const int64_t nvalid = i0 + r + 1;
          const float l = L[i0 + r];
          // softmax backward: dS = P (dP - sum_j P_j dP_j), and sum_j P_j dP_j = dO . O.
          const float* orow = O + (i0 + r) * LO;
          const float* dorow = dO + (i0 + r) * LO;
          double delta = 0.0;
          for (int64_t k = 0; k < d.dv; ++k) delta += static_cast<double>(orow[k]) * dorow[k];
          const float df = static_cast<float>(delta);
          for (int64_t j = 0; j < nvalid; ++j) {
            prow[j] = std::exp(prow[j] - l);
            dsrow[j] = prow[j] * (dsrow[j] - df);
          }
          for (int64_t j = nvalid; j < kend; ++j) prow[j] = dsrow[j] = 0.0f;
        }
        // dQ[block] = scale dS [K_nope | K_rope]; each query row lives in one block (beta 0).
        sgemm(Trans::kNo, Trans::kNo, rows, d.dn, kend, scale, dP.data(), kend, KV, LKV, 0.0f,
              dQ + i0 * LQ, LQ);
        sgemm(Trans::kNo, Trans::kNo, rows, d.dr, kend, scale, dP.data(), kend, KR, d.dr, 0.0f,
              dQ + i0 * LQ + d.dn, LQ);
        // dK_nope[0:kend] += scale dS^T Q_nope; dK_rope += scale dS^T Q_rope (all heads);
        // dV[0:kend] += P^T dO.
        sgemm(Trans::kYes, Trans::kNo, kend, d.dn, rows, scale, dP.data(), kend, Q + i0 * LQ, LQ,
              1.0f, dKV, LKV);
        sgemm(Trans::kYes, Trans::kNo, kend, d.dr, rows, scale, dP.data(), kend, Q + i0 * LQ + d.dn,
              LQ, 1.0f, dKR, d.dr);
        sgemm(Trans::kYes, Trans::kNo, kend, d.dv, rows, 1.0f, P.data(), kend, dO + i0 * LO, LO,
              1.0f, dKV + d.dn, LKV);
      }
    }
  }

  rope_rows(d, cfg.mla.rope_interleave, dq, dk_rope, N, T, saved.rope_cos.f32(),
            saved.rope_sin.f32(), RopeDir::kInverse);

  // kv_b, reversed: dkv_latent (N, C) = dkv wkv_b; dwkv_b += dkv^T kv_latent.
  Tensor dkv_latent = Tensor::empty({N, d.C});
  sgemm(Trans::kNo, Trans::kNo, N, d.C, LKV, 1.0f, dkv, LKV, w.wkv_b.f32(), d.C, 0.0f,
        dkv_latent.f32(), d.C);
  sgemm(Trans::kYes, Trans::kNo, LKV, d.C, N, 1.0f, dkv, LKV, saved.kv_latent.f32(), d.C, 1.0f,
        dw.wkv_b.f32(), d.C);
  Tensor dc_kv = Tensor::empty({N, d.C});
  rmsnorm_backward(saved.c_kv, w.kv_norm, saved.kv_rstd, dkv_latent, dw.kv_norm, dc_kv);

  // kv_a, reversed: dkv_a = [dc_kv | dk_rope]; dx = dkv_a wkv_a; dwkv_a += dkv_a^T x.
  const int64_t ka = d.C + d.dr;
  std::vector<float> dkv_a(static_cast<size_t>(N * ka));
  for (int64_t i = 0; i < N; ++i) {
    std::memcpy(dkv_a.data() + i * ka, dc_kv.f32() + i * d.C, sizeof(float) * d.C);
    std::memcpy(dkv_a.data() + i * ka + d.C, dk_rope + i * d.dr, sizeof(float) * d.dr);
  }
  float* dx = dx_t.f32();
  sgemm(Trans::kNo, Trans::kNo, N, d.H, ka, 1.0f, dkv_a.data(), ka, w.wkv_a.f32(), d.H, 0.0f, dx,
        d.H);
  sgemm(Trans::kYes, Trans::kNo, ka, d.H, N, 1.0f, dkv_a.data(), ka, x, d.H, 1.0f, dw.wkv_a.f32(),
        d.H);

  // The q path, reversed; dx accumulates.
  if (d.Rq == 0) {
    sgemm(Trans::kNo, Trans::kNo, N, d.H, LQ, 1.0f, dq, LQ, w.wq.f32(), d.H, 1.0f, dx, d.H);
    sgemm(Trans::kYes, Trans::kNo, LQ, d.H, N, 1.0f, dq, LQ, x, d.H, 1.0f, dw.wq.f32(), d.H);
  } else {
    Tensor dq_latent = Tensor::empty({N, d.Rq});
    sgemm(Trans::kNo, Trans::kNo, N, d.Rq, LQ, 1.0f, dq, LQ, w.wq_b.f32(), d.Rq, 0.0f,
          dq_latent.f32(), d.Rq);
    sgemm(Trans::kYes, Trans::kNo, LQ, d.Rq, N, 1.0f, dq, LQ, saved.q_latent.f32(), d.Rq, 1.0f,
          dw.wq_b.f32(), d.Rq);
    Tensor dq_a = Tensor::empty({N, d.Rq});
    rmsnorm_backward(saved.q_a, w.q_norm, saved.q_a_rstd, dq_latent, dw.q_norm, dq_a);
    sgemm(Trans::kNo, Trans::kNo, N, d.H, d.Rq, 1.0f, dq_a.f32(), d.Rq, w.wq_a.f32(), d.H, 1.0f, dx,
          d.H);
    sgemm(Trans::kYes, Trans::kNo, d.Rq, d.H, N, 1.0f, dq_a.f32(), d.Rq, x, d.H, 1.0f,
          dw.wq_a.f32(), d.H);
  }
}

void mla_decode(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x_t, int64_t pos,
                MLACache& cache, Tensor& out_t) {
  const Dims d(cfg);
  const int64_t nb = cache.batch, t = x_t.dim(0) / nb, n = nb * t, kend = pos + t;
  const int64_t LQ = d.NH * d.dq, LO = d.NH * d.dv;
  const float scale = static_cast<float>(mla_softmax_scale(d.dq, cfg.rope_scaling));

  Projections p;
  if (d.Rq > 0) {
    p.q_a = Tensor::empty({n, d.Rq});
    p.q_a_rstd = Tensor::empty({n});
    p.q_latent = Tensor::empty({n, d.Rq});
  }
  p.q = Tensor::empty({n, LQ});
  p.c_kv = Tensor::empty({n, d.C});
  p.kv_rstd = Tensor::empty({n});
  p.kv_latent = Tensor::empty({n, d.C});
  p.k_rope = Tensor::empty({n, d.dr});
  project(cfg, d, w, x_t.f32(), n, p);

  // RoPE at positions pos .. pos + t - 1 of each sequence (row i is position pos + i % t).
  std::vector<float> cos_t(static_cast<size_t>(t * d.half)), sin_t(cos_t.size());
  rope_tables(rope_inv_freq(d.dr, cfg.rope_theta, cfg.rope_scaling), pos, t,
              rope_attention_factor(cfg.rope_scaling), cos_t.data(), sin_t.data());
  rope_rows(d, cfg.mla.rope_interleave, p.q.f32(), p.k_rope.f32(), n, t, cos_t.data(), sin_t.data(),
            RopeDir::kForward);

  // Append to the cache.
  for (int64_t b = 0; b < nb; ++b) {
    std::memcpy(cache.kv_latent.f32() + (b * cache.max_len + pos) * d.C,
                p.kv_latent.f32() + b * t * d.C, sizeof(float) * t * d.C);
    std::memcpy(cache.k_rope.f32() + (b * cache.max_len + pos) * d.dr,
                p.k_rope.f32() + b * t * d.dr, sizeof(float) * t * d.dr);
  }

  Tensor att_t = Tensor::empty({n, LO});
  const bool absorb = cache.path == MLADecodePath::kAbsorb ||
                      (cache.path == MLADecodePath::kAuto && absorbed_is_cheaper(d, t, kend));
  for (int64_t b = 0; b < nb; ++b) {
    const Latents lat{cache.kv_latent.f32() + b * cache.max_len * d.C,
                      cache.k_rope.f32() + b * cache.max_len * d.dr};
    const float* Q = p.q.f32() + b * t * LQ;
    float* att = att_t.f32() + b * t * LO;
    if (absorb)
      attend_absorbed(d, w, Q, lat, t, pos, scale, att);
    else
      attend_expanded(d, w, Q, lat, t, pos, cfg.q_block, scale, att);
  }
  sgemm(Trans::kNo, Trans::kYes, n, d.H, LO, 1.0f, att_t.f32(), LO, w.wo.f32(), LO, 0.0f,
        out_t.f32(), d.H);
}

}  // namespace moerun::cpu
