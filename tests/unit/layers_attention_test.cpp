// Attention (RoPE, causal MHA): forward against a naive double-precision reference with HF's
// rotate_half written out, finite-difference gradients for x, wqkv and wo, and bad shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "layers/attention.h"
#include "layers/mha.h"
#include "runtime/check.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"
#include "tests/common/expect_close.h"
#include "tests/common/fd_check.h"
#include "tests/common/test_seed.h"

namespace moerun {
namespace {

using testing::expect_close;
using testing::fd_check;
using testing::TestSeed;

AttentionConfig mha_config(int64_t H, int64_t n_head, double rope_theta = 10000.0,
                           int64_t q_block = 64) {
  AttentionConfig cfg;
  cfg.H = H;
  cfg.n_head = n_head;
  cfg.rope_theta = rope_theta;
  cfg.q_block = q_block;
  return cfg;
}

Tensor randn(std::vector<int64_t> shape, Rng& rng, double scale) {
  Tensor t = Tensor::empty(std::move(shape));
  for (float& v : t.span<float>()) v = static_cast<float>(scale * rng.normal());
  return t;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.f32()[i]) * b.f32()[i];
  return s;
}

// Naive attention in double with RoPE as HF writes it: cos/sin tables are cat(freqs, freqs)
// over head_dim and q' = q cos + rotate_half(q) sin, rotate_half(q) = cat(-q2, q1).
std::vector<double> reference_attention(const Tensor& x, const Tensor& wqkv, const Tensor& wo,
                                        int64_t B, int64_t T, int64_t H, int64_t NH, double theta) {
  const int64_t D = H / NH, half = D / 2, N = B * T;
  auto proj = [&](int64_t i, int64_t o) {  // (x wqkv^T)[i][o]
    double s = 0.0;
    for (int64_t k = 0; k < H; ++k)
      s += static_cast<double>(x.f32()[i * H + k]) * wqkv.f32()[o * H + k];
    return s;
  };
  std::vector<double> q(N * H), kk(N * H), v(N * H);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t o = 0; o < H; ++o) {
      q[i * H + o] = proj(i, o);
      kk[i * H + o] = proj(i, H + o);
      v[i * H + o] = proj(i, 2 * H + o);
    }
  auto rope = [&](std::vector<double>& a) {
    std::vector<double> out(a.size());
    for (int64_t i = 0; i < N; ++i) {
      const double pos = static_cast<double>(i % T);
      for (int64_t h = 0; h < NH; ++h) {
        const double* src = &a[i * H + h * D];
        for (int64_t d = 0; d < D; ++d) {
          const int64_t j = d % half;  // emb = cat(freqs, freqs)
          const double ang =
              pos / std::pow(theta, static_cast<double>(2 * j) / static_cast<double>(D));
          const double rot = d < half ? -src[d + half] : src[d - half];
          out[i * H + h * D + d] = src[d] * std::cos(ang) + rot * std::sin(ang);
        }
      }
    }
    a = out;
  };
  rope(q);
  rope(kk);
  std::vector<double> att(N * H, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> s(t + 1);
        double m = -1e300;
        for (int64_t u = 0; u <= t; ++u) {
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d)
            acc += q[(b * T + t) * H + h * D + d] * kk[(b * T + u) * H + h * D + d];
          s[u] = acc * scale;
          m = std::max(m, s[u]);
        }
        double z = 0.0;
        for (int64_t u = 0; u <= t; ++u) z += (s[u] = std::exp(s[u] - m));
        for (int64_t u = 0; u <= t; ++u)
          for (int64_t d = 0; d < D; ++d)
            att[(b * T + t) * H + h * D + d] += s[u] / z * v[(b * T + u) * H + h * D + d];
      }
  std::vector<double> out(N * H, 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t o = 0; o < H; ++o) {
      double acc = 0.0;
      for (int64_t k = 0; k < H; ++k) acc += att[i * H + k] * wo.f32()[o * H + k];
      out[i * H + o] = acc;
    }
  return out;
}

struct Case {
  int64_t B, T, H, NH, q_block;
  double theta;
};

TEST(Attention, ForwardMatchesDoubleReference) {
  const Case cases[] = {{2, 5, 8, 2, 128, 10000.0},
                        {2, 5, 8, 2, 2, 10000.0},
                        {1, 37, 32, 4, 8, 500000.0},
                        {3, 19, 24, 2, 7, 10000.0},
                        {2, 1, 8, 1, 4, 10000.0}};
  const TestSeed seed(0xa77e);
  Rng rng(seed, 1);
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "B=" << c.B << " T=" << c.T << " H=" << c.H
                                      << " heads=" << c.NH << " q_block=" << c.q_block);
    const int64_t N = c.B * c.T;
    AttentionConfig cfg = mha_config(c.H, c.NH, c.theta, c.q_block);
    // Weights large enough that the softmax is far from uniform and RoPE angles matter.
    Tensor x = randn({N, c.H}, rng, 1.0);
    Tensor wqkv = randn({3 * c.H, c.H}, rng, 1.5 / std::sqrt(static_cast<double>(c.H)));
    Tensor wo = randn({c.H, c.H}, rng, 1.0 / std::sqrt(static_cast<double>(c.H)));
    MHASaved saved;
    const Tensor out = mha_forward(cfg, wqkv, wo, x, c.T, saved);
    const std::vector<double> ref = reference_attention(x, wqkv, wo, c.B, c.T, c.H, c.NH, c.theta);
    // fp32 projections (sums of H <= 32 products) and a softmax over <= 37 keys, against double:
    // ~1e-6 off for outputs of O(1), a little more where RoPE and the softmax amplify.
    expect_close(out, ref, 5e-6, 1e-5, "attention output");
  }
}

TEST(Attention, GradientsMatchFiniteDifferences) {
  const TestSeed seed(0xa77e);
  for (int64_t q_block : {int64_t{128}, int64_t{2}}) {
    SCOPED_TRACE(::testing::Message() << "q_block=" << q_block);
    const int64_t B = 2, T = 5, H = 8, NH = 2, N = B * T;
    Rng rng(seed, 2 + q_block);
    AttentionConfig cfg = mha_config(H, NH, 10000.0, q_block);
    Tensor x = randn({N, H}, rng, 1.0);
    Tensor wqkv = randn({3 * H, H}, rng, 0.5);
    Tensor wo = randn({H, H}, rng, 0.4);
    Tensor r = randn({N, H}, rng, 1.0);
    MHASaved saved;
    auto loss = [&] { return dot(mha_forward(cfg, wqkv, wo, x, T, saved), r); };
    loss();
    Tensor dwqkv = Tensor::zeros({3 * H, H});
    Tensor dwo = Tensor::zeros({H, H});
    Tensor dx = mha_backward(cfg, wqkv, wo, x, saved, r, dwqkv, dwo);
    // atol: the fp32 rounding of the 80 outputs over 2h = 0.02 (up to ~1e-4). rtol: x and wqkv
    // go through RoPE and the softmax (truncation h^2 f'''/6, up to ~3e-3 of the derivative
    // over 30 seeds); the loss is linear in wo, which leaves rounding only.
    fd_check("dx", x, dx, loss, rng, {.atol = 2e-4, .rtol = 1e-2});
    fd_check("dwqkv", wqkv, dwqkv, loss, rng, {.atol = 2e-4, .rtol = 1e-2, .samples = 60});
    fd_check("dwo", wo, dwo, loss, rng, {.atol = 2e-4, .rtol = 1e-4});

    // A second backward adds the same weight gradients again and rewrites dx.
    loss();
    Tensor dwqkv1 = dwqkv.clone(), dwo1 = dwo.clone(), dx1 = dx.clone();
    dx = mha_backward(cfg, wqkv, wo, x, saved, r, dwqkv, dwo);
    for (int64_t i = 0; i < dwqkv.numel(); ++i)
      EXPECT_NEAR(dwqkv.f32()[i], 2.0f * dwqkv1.f32()[i], 1e-5f * (1 + std::abs(dwqkv1.f32()[i])));
    for (int64_t i = 0; i < dwo.numel(); ++i)
      EXPECT_NEAR(dwo.f32()[i], 2.0f * dwo1.f32()[i], 1e-5f * (1 + std::abs(dwo1.f32()[i])));
    for (int64_t i = 0; i < dx.numel(); ++i) EXPECT_EQ(dx.f32()[i], dx1.f32()[i]);
  }
}

TEST(Attention, PositionsRestartForEachSequence) {
  // Two copies of one sequence must give the same outputs: RoPE positions and the causal mask
  // both restart at each sequence start.
  const int64_t T = 6, H = 16, NH = 4;
  const TestSeed seed(0xa77e);
  Rng rng(seed, 9);
  AttentionConfig cfg = mha_config(H, NH);
  Tensor seq = randn({T, H}, rng, 1.0);
  Tensor x = Tensor::empty({2 * T, H});
  for (int64_t i = 0; i < 2 * T * H; ++i) x.f32()[i] = seq.f32()[i % (T * H)];
  Tensor wqkv = randn({3 * H, H}, rng, 0.4);
  Tensor wo = randn({H, H}, rng, 0.3);
  MHASaved saved;
  const Tensor out = mha_forward(cfg, wqkv, wo, x, T, saved);
  for (int64_t i = 0; i < T * H; ++i)
    EXPECT_NEAR(out.f32()[i], out.f32()[T * H + i], 1e-6f * (1 + std::abs(out.f32()[i])));
}

TEST(Attention, RejectsBadShapes) {
  auto message_of = [](const AttentionConfig& cfg) -> std::string {
    try {
      cfg.validate();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message_of(mha_config(10, 3)).find("must divide by heads"), std::string::npos);
  EXPECT_NE(message_of(mha_config(12, 4)).find("even head_dim"), std::string::npos);
  EXPECT_NE(message_of(mha_config(8, 0)).find("heads must be > 0"), std::string::npos);
  EXPECT_NE(message_of(mha_config(8, 2, 10000.0, 0)).find("q_block"), std::string::npos);
  EXPECT_EQ(message_of(mha_config(8, 2)), "");

  // The forward validates too, before touching any buffer.
  const TestSeed seed(0xa77e);
  Rng rng(seed, 10);
  Tensor x = randn({5, 10}, rng, 1.0), w = randn({30, 10}, rng, 1.0),
         wo = randn({10, 10}, rng, 1.0);
  MHASaved saved;
  EXPECT_THROW(mha_forward(mha_config(10, 3), w, wo, x, 5, saved), Error);
  EXPECT_THROW(mha_forward(mha_config(10, 5), w, wo, x, 0, saved), Error);
  EXPECT_THROW(mha_forward(mha_config(10, 5), w, wo, x, 2, saved), Error);  // 5 rows, T = 2
  EXPECT_THROW(mha_forward(mha_config(10, 5), wo, wo, x, 5, saved), Error);
}

// The module behind the Attention interface: the ops' results on its own weights, gradients
// accumulated into its own buffers, named parameters, and saved activations it can drop.
TEST(Attention, MHAModuleOwnsItsStateBehindTheInterface) {
  const int64_t B = 2, T = 7, H = 16, NH = 4, N = B * T;
  const AttentionConfig cfg = mha_config(H, NH, 10000.0, 4);
  std::unique_ptr<Attention> attn = make_attention(cfg);
  attn->init(3, 100, 0.3f);
  std::vector<NamedParam> ps;
  attn->named_params("attn.", ps);
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_EQ(ps[0].name, "attn.wqkv");
  EXPECT_EQ(ps[1].name, "attn.wo");
  EXPECT_EQ(ps[0].value->shape(), (std::vector<int64_t>{3 * H, H}));
  EXPECT_TRUE(ps[0].is_matrix && !ps[0].is_expert);
  const TestSeed seed(0xa77e);
  Rng rng(seed, 11);
  const Tensor x = randn({N, H}, rng, 1.0), r = randn({N, H}, rng, 1.0);
  const Tensor y = attn->forward(x, T);
  MHASaved saved;
  const Tensor want = mha_forward(cfg, *ps[0].value, *ps[1].value, x, T, saved);
  for (int64_t i = 0; i < N * H; ++i) ASSERT_EQ(y.f32()[i], want.f32()[i]);
  Tensor dwqkv = Tensor::zeros({3 * H, H}), dwo = Tensor::zeros({H, H});
  const Tensor want_dx = mha_backward(cfg, *ps[0].value, *ps[1].value, x, saved, r, dwqkv, dwo);
  const Tensor dx = attn->backward(r);
  for (int64_t i = 0; i < N * H; ++i) ASSERT_EQ(dx.f32()[i], want_dx.f32()[i]);
  for (int64_t i = 0; i < dwqkv.numel(); ++i) ASSERT_EQ(ps[0].grad->f32()[i], dwqkv.f32()[i]);
  for (int64_t i = 0; i < dwo.numel(); ++i) ASSERT_EQ(ps[1].grad->f32()[i], dwo.f32()[i]);
  attn->drop_saved();
  EXPECT_THROW(attn->backward(r), Error);
}

// Generation: decode through the KV cache, in chunks of any size (one block of q_block rows or
// several, one row at a time), gives the double reference of the whole causal sequence; the
// cache holds k and v for every position; a position other than the cached count is an error.
TEST(Attention, MHADecodeMatchesDoubleReference) {
  struct DecodeCase {
    int64_t B, T, H, NH, q_block;
    std::vector<int64_t> chunks;  // sizes, summing to T
  };
  const DecodeCase cases[] = {{2, 10, 16, 2, 3, {7, 3}},
                              {1, 12, 8, 1, 64, {1, 1, 5, 1, 4}},
                              {3, 9, 24, 3, 2, {4, 1, 1, 1, 1, 1}}};
  const TestSeed seed(0xdec1);
  Rng rng(seed, 3);
  for (const DecodeCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "B=" << c.B << " T=" << c.T << " q_block=" << c.q_block);
    const int64_t H = c.H, N = c.B * c.T;
    const AttentionConfig cfg = mha_config(H, c.NH, 10000.0, c.q_block);
    MHA attn(cfg);
    attn.wqkv = randn({3 * H, H}, rng, 1.5 / std::sqrt(static_cast<double>(H)));
    attn.wo = randn({H, H}, rng, 1.0 / std::sqrt(static_cast<double>(H)));
    const Tensor x = randn({N, H}, rng, 1.0);
    const std::vector<double> ref =
        reference_attention(x, attn.wqkv, attn.wo, c.B, c.T, H, c.NH, 10000.0);
    attn.start_cache(c.B, c.T);
    EXPECT_EQ(attn.cache_bytes(), 2 * N * H * 4);
    int64_t pos = 0;
    for (int64_t t : c.chunks) {
      Tensor in = Tensor::empty({c.B * t, H});
      std::vector<double> want;
      for (int64_t b = 0; b < c.B; ++b) {
        const float* src = x.f32() + (b * c.T + pos) * H;
        std::copy(src, src + t * H, in.f32() + b * t * H);
        want.insert(want.end(), ref.begin() + (b * c.T + pos) * H,
                    ref.begin() + (b * c.T + pos + t) * H);
      }
      EXPECT_THROW(attn.decode(in, pos + 1), Error);  // not where the cache ends
      expect_close(attn.decode(in, pos), want, 5e-6, 1e-5, "decoded rows");
      pos += t;
    }
    EXPECT_THROW(attn.decode(Tensor::zeros({c.B, H}), pos), Error);  // the cache is full
    attn.start_cache(c.B, 1);  // a new cache replaces the old one
    EXPECT_EQ(attn.cache_bytes(), 2 * c.B * H * 4);
  }
}

}  // namespace
}  // namespace moerun
