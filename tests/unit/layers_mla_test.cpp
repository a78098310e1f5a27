// Multi-head latent attention (layers/mla): forward against a float64 reference written here
// with plain loops, against HF transformers' own DeepseekV2/V3Attention (golden files of
// tests/golden/make_mla_golden.py), finite-difference gradients of every parameter and the
// input, decode against forward's rows, the module's parameters, and bad configs.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "layers/attention.h"
#include "layers/mla.h"
#include "layers/rope.h"
#include "runtime/blas.h"
#include "runtime/check.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"
#include "tests/common/expect_close.h"
#include "tests/common/fd_check.h"
#include "tests/common/golden_file.h"
#include "tests/common/test_seed.h"

namespace moerun {
namespace {

using testing::expect_close;
using testing::fd_check;
using testing::golden_path;
using testing::GoldenFile;
using testing::TestSeed;

struct Sizes {
  int64_t H = 16, n_head = 2, q_lora = 0, kv_lora = 8, nope = 6, rope = 4, v = 5;
  bool interleave = true;
  bool yarn = false;
  int64_t q_block = 64;
};

AttentionConfig mla_config(const Sizes& s) {
  AttentionConfig cfg;
  cfg.kind = AttentionKind::kMLA;
  cfg.H = s.H;
  cfg.n_head = s.n_head;
  cfg.q_block = s.q_block;
  cfg.mla.q_lora_rank = s.q_lora;
  cfg.mla.kv_lora_rank = s.kv_lora;
  cfg.mla.qk_nope_head_dim = s.nope;
  cfg.mla.qk_rope_head_dim = s.rope;
  cfg.mla.v_head_dim = s.v;
  cfg.mla.rope_interleave = s.interleave;
  if (s.yarn) {
    // A short original context so that the ramp between beta_fast and beta_slow falls inside
    // the few rotary dims of a test (its ends are then visible in the frequencies).
    cfg.rope_scaling = {.yarn = true,
                        .factor = 4.0,
                        .original_max_position = 64,
                        .beta_fast = 32.0,
                        .beta_slow = 1.0,
                        .mscale = 0.707,
                        .mscale_all_dim = 0.707};
  }
  return cfg;
}

Tensor randn(std::vector<int64_t> shape, Rng& rng, double scale, double mean = 0.0) {
  Tensor t = Tensor::empty(std::move(shape));
  for (float& v : t.span<float>()) v = static_cast<float>(mean + scale * rng.normal());
  return t;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.f32()[i]) * b.f32()[i];
  return s;
}

// Random weights in the module's parameters: matrices ~ N(0, 1.2/sqrt(fan_in)) so the softmax
// is far from uniform, norm weights around 1 (not all ones, so their gradients matter).
void randomize(MLA& m, Rng& rng) {
  std::vector<NamedParam> ps;
  m.named_params("", ps);
  for (NamedParam& p : ps) {
    if (p.is_matrix)
      *p.value = randn(p.value->shape(), rng, 1.2 / std::sqrt(double(p.value->dim(1))));
    else
      *p.value = randn(p.value->shape(), rng, 0.2, 1.0);
  }
}

// ---- float64 reference, written out from the HF modeling code ----------------------------

using Mat = std::vector<double>;  // row-major

// y (n, out) = x (n, in) w^T for w (out, in) f32.
Mat linear(const Mat& x, int64_t n, const Tensor& w) {
  const int64_t out = w.dim(0), in = w.dim(1);
  Mat y(n * out, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0;
      for (int64_t k = 0; k < in; ++k) s += x[i * in + k] * w.f32()[o * in + k];
      y[i * out + o] = s;
    }
  return y;
}

Mat rmsnorm(const Mat& x, int64_t n, const Tensor& w, double eps) {
  const int64_t d = w.dim(0);
  Mat y(x.size());
  for (int64_t i = 0; i < n; ++i) {
    double ms = 0.0;
    for (int64_t k = 0; k < d; ++k) ms += x[i * d + k] * x[i * d + k];
    const double r = 1.0 / std::sqrt(ms / double(d) + eps);
    for (int64_t k = 0; k < d; ++k) y[i * d + k] = w.f32()[k] * x[i * d + k] * r;
  }
  return y;
}

double mscale_of(double scale, double m) {
  return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
}

// HF _compute_yarn_parameters / default RoPE for the rope dim, in double.
std::vector<double> ref_inv_freq(const AttentionConfig& cfg) {
  const int64_t dim = cfg.mla.qk_rope_head_dim;
  const double base = cfg.rope_theta;
  std::vector<double> inv(dim / 2);
  for (int64_t j = 0; j < dim / 2; ++j) inv[j] = std::pow(base, -double(2 * j) / double(dim));
  const RopeScaling& s = cfg.rope_scaling;
  if (!s.yarn) return inv;
  auto corr = [&](double rot) {
    return dim * std::log(double(s.original_max_position) / (rot * 2 * std::numbers::pi)) /
           (2 * std::log(base));
  };
  const double low = std::max(std::floor(corr(s.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(s.beta_slow)), double(dim - 1));
  if (low == high) high += 0.001;
  for (int64_t j = 0; j < dim / 2; ++j) {
    const double ramp = std::min(1.0, std::max(0.0, (j - low) / (high - low)));
    const double extra = 1.0 - ramp;
    inv[j] = (inv[j] / s.factor) * (1.0 - extra) + inv[j] * extra;
  }
  return inv;
}

// V3 convention: cos/sin = cat(freqs, freqs) * attention factor; interleaved pairs come out
// de-interleaved [x_even' | x_odd'] (apply_rotary_pos_emb_interleave), else rotate_half.
void ref_rope(double* v, int64_t dim, double pos, const std::vector<double>& inv, double af,
              bool interleave) {
  std::vector<double> out(dim);
  const int64_t half = dim / 2;
  for (int64_t j = 0; j < half; ++j) {
    const double c = std::cos(pos * inv[j]) * af, s = std::sin(pos * inv[j]) * af;
    const double x1 = interleave ? v[2 * j] : v[j];
    const double x2 = interleave ? v[2 * j + 1] : v[j + half];
    out[j] = x1 * c - x2 * s;
    out[j + half] = x2 * c + x1 * s;
  }
  for (int64_t j = 0; j < dim; ++j) v[j] = out[j];
}

Mat reference_mla(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x, int64_t B,
                  int64_t T) {
  const MLAConfig& m = cfg.mla;
  const int64_t N = B * T, NH = cfg.n_head, dn = m.qk_nope_head_dim, dr = m.qk_rope_head_dim,
                dv = m.v_head_dim, dq = dn + dr, C = m.kv_lora_rank;
  Mat xd(x.f32(), x.f32() + x.numel());
  Mat q = m.q_lora_rank == 0
              ? linear(xd, N, w.wq)
              : linear(rmsnorm(linear(xd, N, w.wq_a), N, w.q_norm, cfg.norm_eps), N, w.wq_b);
  Mat kva = linear(xd, N, w.wkv_a);
  Mat c(N * C), kr(N * dr);
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t k = 0; k < C; ++k) c[i * C + k] = kva[i * (C + dr) + k];
    for (int64_t k = 0; k < dr; ++k) kr[i * dr + k] = kva[i * (C + dr) + C + k];
  }
  Mat kv = linear(rmsnorm(c, N, w.kv_norm, cfg.norm_eps), N, w.wkv_b);
  const std::vector<double> inv = ref_inv_freq(cfg);
  const RopeScaling& s = cfg.rope_scaling;
  double af = 1.0, scale = 1.0 / std::sqrt(double(dq));
  if (s.yarn) {
    af = (s.mscale != 0 && s.mscale_all_dim != 0)
             ? mscale_of(s.factor, s.mscale) / mscale_of(s.factor, s.mscale_all_dim)
             : mscale_of(s.factor, 1.0);
    if (s.mscale_all_dim != 0) scale *= std::pow(mscale_of(s.factor, s.mscale_all_dim), 2);
  }
  for (int64_t i = 0; i < N; ++i) {
    const double pos = double(i % T);
    for (int64_t h = 0; h < NH; ++h)
      ref_rope(&q[i * NH * dq + h * dq + dn], dr, pos, inv, af, m.rope_interleave);
    ref_rope(&kr[i * dr], dr, pos, inv, af, m.rope_interleave);
  }
  Mat att(N * NH * dv, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t i = b * T + t;
        std::vector<double> sc(t + 1);
        double mx = -1e300;
        for (int64_t u = 0; u <= t; ++u) {
          const int64_t j = b * T + u;
          double acc = 0.0;
          for (int64_t k = 0; k < dn; ++k)
            acc += q[i * NH * dq + h * dq + k] * kv[j * NH * (dn + dv) + h * (dn + dv) + k];
          for (int64_t k = 0; k < dr; ++k) acc += q[i * NH * dq + h * dq + dn + k] * kr[j * dr + k];
          sc[u] = acc * scale;
          mx = std::max(mx, sc[u]);
        }
        double z = 0.0;
        for (int64_t u = 0; u <= t; ++u) z += (sc[u] = std::exp(sc[u] - mx));
        for (int64_t u = 0; u <= t; ++u)
          for (int64_t k = 0; k < dv; ++k)
            att[i * NH * dv + h * dv + k] +=
                sc[u] / z * kv[(b * T + u) * NH * (dn + dv) + h * (dn + dv) + dn + k];
      }
  return linear(att, N, w.wo);
}

struct Case {
  const char* what;
  Sizes s;
  int64_t B, T;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"plain interleaved", {}, 2, 5},
      {"q_lora rotate_half, q_block 2",
       {.H = 12,
        .n_head = 3,
        .q_lora = 10,
        .kv_lora = 6,
        .nope = 4,
        .rope = 6,
        .v = 4,
        .interleave = false,
        .q_block = 2},
       2,
       7},
      {"q_lora yarn, q_block 3",
       {.H = 16,
        .n_head = 2,
        .q_lora = 8,
        .kv_lora = 8,
        .nope = 4,
        .rope = 8,
        .v = 6,
        .yarn = true,
        .q_block = 3},
       2,
       8},
      {"yarn rotate_half, one token", {.interleave = false, .yarn = true}, 3, 1},
  };
  return all;
}

TEST(MLA, ForwardMatchesDoubleReference) {
  const TestSeed seed(0x3a1a);
  Rng rng(seed, 1);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.what);
    const AttentionConfig cfg = mla_config(c.s);
    MLA m(cfg);
    randomize(m, rng);
    const Tensor x = randn({c.B * c.T, cfg.H}, rng, 1.0);
    MLASaved saved;
    const Tensor out = mla_forward(cfg, m.w, x, c.T, saved);
    // fp32 projections over <= 16 terms, two RMSNorms and a softmax over <= 8 keys against
    // double: ~1e-6 for outputs of O(1).
    expect_close(out, reference_mla(cfg, m.w, x, c.B, c.T), 5e-6, 1e-5, "mla output");
  }
}

TEST(MLA, YarnTablesAreHFs) {
  // Values from transformers 5.24 (_compute_yarn_parameters, dim 8, theta 10000, factor 4,
  // original 64, beta 32/1; yarn_get_mscale): the ramp spans dims [0, 2].
  AttentionConfig cfg = mla_config({.rope = 8, .yarn = true});
  const std::vector<double> inv = rope_inv_freq(8, 10000.0, cfg.rope_scaling);
  ASSERT_EQ(inv.size(), 4u);
  const std::vector<double> ref = ref_inv_freq(cfg);
  expect_close(inv, ref, 0.0, 1e-14, "yarn inv_freq");
  EXPECT_DOUBLE_EQ(inv[0], 1.0);                                   // below the ramp: extrapolated
  EXPECT_NEAR(inv[3], std::pow(10000.0, -0.75) / 4.0, 1e-15);      // above: interpolated
  EXPECT_NEAR(inv[1], 0.1 * (0.5 + 0.5 / 4.0), 1e-15);             // halfway up the ramp
  EXPECT_DOUBLE_EQ(rope_attention_factor(cfg.rope_scaling), 1.0);  // mscale == mscale_all_dim
  const double m = 0.1 * 0.707 * std::log(4.0) + 1.0;
  EXPECT_NEAR(mla_softmax_scale(12, cfg.rope_scaling), m * m / std::sqrt(12.0), 1e-15);
  cfg.rope_scaling.mscale_all_dim = 0.0;
  EXPECT_NEAR(rope_attention_factor(cfg.rope_scaling), 0.1 * std::log(4.0) + 1.0, 1e-15);
  EXPECT_NEAR(mla_softmax_scale(12, cfg.rope_scaling), 1.0 / std::sqrt(12.0), 1e-15);
  cfg.rope_scaling.yarn = false;
  EXPECT_DOUBLE_EQ(rope_attention_factor(cfg.rope_scaling), 1.0);
}

TEST(MLA, GradientsMatchFiniteDifferences) {
  const TestSeed seed(0x3a1a);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.what);
    Rng rng(seed, 2);
    const AttentionConfig cfg = mla_config(c.s);
    MLA m(cfg);
    randomize(m, rng);
    const int64_t N = c.B * c.T;
    Tensor x = randn({N, cfg.H}, rng, 1.0);
    const Tensor r = randn({N, cfg.H}, rng, 1.0);
    MLASaved saved;
    auto loss = [&] { return dot(mla_forward(cfg, m.w, x, c.T, saved), r); };
    loss();
    Tensor dx = mla_backward(cfg, m.w, x, saved, r, m.dw);
    // atol: the fp32 rounding of the loss over 2h. rtol: everything but wo goes through RMSNorm,
    // RoPE and the softmax (truncation h^2 f'''/6, a few 1e-3 of the derivative at h = 1e-2).
    fd_check("dx", x, dx, loss, rng, {.atol = 3e-4, .rtol = 1e-2, .samples = 40});
    std::vector<NamedParam> ps;
    m.named_params("", ps);
    for (NamedParam& p : ps)
      fd_check(p.name, *p.value, *p.grad, loss, rng,
               {.atol = 3e-4, .rtol = p.name == "wo" ? 1e-4 : 1e-2, .samples = 40});

    // A second backward adds the same weight gradients again and rewrites dx.
    std::vector<Tensor> first;
    for (NamedParam& p : ps) first.push_back(p.grad->clone());
    loss();
    const Tensor dx2 = mla_backward(cfg, m.w, x, saved, r, m.dw);
    for (size_t k = 0; k < ps.size(); ++k)
      for (int64_t i = 0; i < first[k].numel(); ++i)
        ASSERT_NEAR(ps[k].grad->f32()[i], 2.0f * first[k].f32()[i],
                    1e-5f * (1 + std::abs(first[k].f32()[i])))
            << ps[k].name;
    for (int64_t i = 0; i < dx.numel(); ++i) ASSERT_EQ(dx.f32()[i], dx2.f32()[i]);
  }
}

// ---- transformers itself --------------------------------------------------------------------

class MLAGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(MLAGolden, MatchesTransformers) {
  const GoldenFile g(golden_path(GetParam()));
  Sizes s;
  s.H = g.i64("config.H");
  s.n_head = g.i64("config.n_head");
  s.q_lora = g.i64("config.q_lora_rank");
  s.kv_lora = g.i64("config.kv_lora_rank");
  s.nope = g.i64("config.qk_nope_head_dim");
  s.rope = g.i64("config.qk_rope_head_dim");
  s.v = g.i64("config.v_head_dim");
  s.interleave = g.i64("config.rope_interleave") != 0;
  s.q_block = 4;  // several blocks per sequence
  AttentionConfig cfg = mla_config(s);
  cfg.rope_theta = g.f64("config.rope_theta");
  cfg.norm_eps = static_cast<float>(g.f64("config.norm_eps"));
  if (g.i64("config.yarn") != 0) {
    cfg.rope_scaling = {.yarn = true,
                        .factor = g.f64("yarn.factor"),
                        .original_max_position =
                            static_cast<int64_t>(g.f64("yarn.original_max_position_embeddings")),
                        .beta_fast = g.f64("yarn.beta_fast"),
                        .beta_slow = g.f64("yarn.beta_slow"),
                        .mscale = g.f64("yarn.mscale"),
                        .mscale_all_dim = g.f64("yarn.mscale_all_dim")};
  }
  const int64_t T = g.i64("config.T");
  MLA m(cfg);
  std::vector<NamedParam> ps;
  m.named_params("", ps);
  for (NamedParam& p : ps) {
    ASSERT_TRUE(g.has(p.name)) << p.name;
    *p.value = g.f32(p.name);
  }
  const Tensor x = g.f32("x");
  const Tensor out = m.forward(x, T);
  // fp32 here against transformers in float64 (whose RoPE angles and softmax run in fp32).
  expect_close(out, g.entry("out").values, 1e-6, 1e-5, "out");
  // A gradient element is a sum over tokens (and heads) whose terms cancel, so its rounding
  // follows the size of the terms, not of the sum: atol is 1e-5 of the tensor's largest value.
  auto grad_close = [](const Tensor& got, const std::vector<double>& ref, const std::string& what) {
    double big = 0.0;
    for (double v : ref) big = std::max(big, std::abs(v));
    expect_close(got, ref, 1e-5 * big, 1e-5, what);
  };
  const Tensor dx = m.backward(g.f32("dy"));
  grad_close(dx, g.entry("dx").values, "dx");
  for (NamedParam& p : ps) grad_close(*p.grad, g.entry("d" + p.name).values, p.name);
}

INSTANTIATE_TEST_SUITE_P(Golden, MLAGolden,
                         ::testing::Values("mla_v3_plain.bin", "mla_v3_qlora_yarn.bin",
                                           "mla_v3_rotate_half.bin", "mla_v2_yarn.bin"));

// ---- decode -------------------------------------------------------------------------------

TEST(MLA, DecodeMatchesForwardRows) {
  const TestSeed seed(0x3a1a);
  Rng rng(seed, 3);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.what);
    const int64_t B = 2, T = 9, max_len = 12;
    const AttentionConfig cfg = mla_config(c.s);
    MLA m(cfg);
    randomize(m, rng);
    const Tensor x = randn({B * T, cfg.H}, rng, 1.0);
    const Tensor want = m.forward(x, T);
    EXPECT_EQ(m.cache_bytes(), 0);
    m.start_cache(B, max_len);
    EXPECT_EQ(m.cache_bytes(), B * max_len * (cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim) * 4);
    // Positions one at a time, and in chunks of 4, 1, 3, 1 tokens (a prefill, then more), by
    // each path and by the module (kAuto).
    for (const std::vector<int64_t>& chunks :
         {std::vector<int64_t>(T, 1), std::vector<int64_t>{4, 1, 3, 1}}) {
      for (MLADecodePath path :
           {MLADecodePath::kAbsorb, MLADecodePath::kExpand, MLADecodePath::kAuto}) {
        SCOPED_TRACE(::testing::Message()
                     << "path " << static_cast<int>(path) << ", " << chunks.size() << " chunks");
        MLACache cache = mla_start_cache(cfg, B, max_len, path);
        if (path == MLADecodePath::kAuto) m.start_cache(B, max_len);
        int64_t pos = 0;
        for (int64_t t : chunks) {
          Tensor xs = Tensor::empty({B * t, cfg.H});
          for (int64_t b = 0; b < B; ++b)
            for (int64_t r = 0; r < t; ++r)
              for (int64_t k = 0; k < cfg.H; ++k)
                xs.f32()[(b * t + r) * cfg.H + k] = x.f32()[(b * T + pos + r) * cfg.H + k];
          const Tensor ys = path == MLADecodePath::kAuto ? m.decode(xs, pos)
                                                         : mla_decode(cfg, m.w, xs, pos, cache);
          std::vector<double> got, ref;
          for (int64_t b = 0; b < B; ++b)
            for (int64_t r = 0; r < t; ++r)
              for (int64_t k = 0; k < cfg.H; ++k) {
                got.push_back(ys.f32()[(b * t + r) * cfg.H + k]);
                ref.push_back(want.f32()[(b * T + pos + r) * cfg.H + k]);
              }
          // The same sums in another order (absorbed: wkv_b applied after the softmax):
          // rounding only.
          expect_close(got, ref, 1e-6, 1e-5, "decoded rows at " + std::to_string(pos));
          pos += t;
        }
        EXPECT_EQ(pos, T);
      }
    }
  }
}

TEST(MLA, DecodeRefusesOutOfOrderPositions) {
  const AttentionConfig cfg = mla_config({});
  MLA m(cfg);
  const TestSeed seed(0x3a1a);
  Rng rng(seed, 4);
  randomize(m, rng);
  const Tensor x2 = randn({2, cfg.H}, rng, 1.0);
  EXPECT_THROW(m.decode(x2, 0), Error);  // no cache yet
  m.start_cache(2, 3);
  EXPECT_THROW(m.decode(x2, 1), Error);  // the cache holds 0 positions
  m.decode(x2, 0);
  EXPECT_THROW(m.decode(x2, 0), Error);
  EXPECT_THROW(m.decode(randn({6, cfg.H}, rng, 1.0), 1), Error);  // 1 + 3 > max_len 3
  EXPECT_THROW(m.decode(randn({3, cfg.H}, rng, 1.0), 1), Error);  // 3 rows for batch 2
  m.decode(randn({4, cfg.H}, rng, 1.0), 1);
  EXPECT_THROW(m.decode(x2, 3), Error);  // full
  m.start_cache(1, 4);                   // a new cache starts over
  m.decode(randn({1, cfg.H}, rng, 1.0), 0);
}

// ---- the module and bad configs ----------------------------------------------------------

TEST(MLA, ModuleParamsNamesShapesAndInit) {
  const Sizes s{.H = 16, .n_head = 2, .q_lora = 12, .kv_lora = 8, .nope = 6, .rope = 4, .v = 5};
  const AttentionConfig cfg = mla_config(s);
  std::unique_ptr<Attention> attn = make_attention(cfg);
  attn->init(7, 40, 0.02f);
  std::vector<NamedParam> ps;
  attn->named_params("layers.0.attn.", ps);
  struct Want {
    const char* name;
    std::vector<int64_t> shape;
    bool is_matrix;
    uint64_t stream;
  };
  const std::vector<Want> want = {
      {"wq_a", {12, 16}, true, 40},     {"q_norm", {12}, false, 0},
      {"wq_b", {2 * 10, 12}, true, 44}, {"wkv_a", {8 + 4, 16}, true, 45},
      {"kv_norm", {8}, false, 0},       {"wkv_b", {2 * 11, 8}, true, 46},
      {"wo", {16, 2 * 5}, true, 41}};
  ASSERT_EQ(ps.size(), want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    SCOPED_TRACE(want[k].name);
    EXPECT_EQ(ps[k].name, std::string("layers.0.attn.") + want[k].name);
    EXPECT_EQ(ps[k].value->shape(), want[k].shape);
    EXPECT_EQ(ps[k].grad->shape(), want[k].shape);
    EXPECT_FALSE(ps[k].is_expert);
    EXPECT_EQ(ps[k].is_matrix, want[k].is_matrix);
    if (!want[k].is_matrix) {
      for (float v : ps[k].value->span<float>()) ASSERT_EQ(v, 1.0f);
    } else {
      Rng rng(7, want[k].stream);
      for (float v : ps[k].value->span<float>())
        ASSERT_EQ(v, static_cast<float>(rng.normal() * 0.02f));
    }
  }
  // Without q_lora there is one wq, from stream + 0.
  Sizes plain = s;
  plain.q_lora = 0;
  std::unique_ptr<Attention> attn2 = make_attention(mla_config(plain));
  std::vector<NamedParam> ps2;
  attn2->named_params("", ps2);
  ASSERT_EQ(ps2.size(), 5u);
  EXPECT_EQ(ps2[0].name, "wq");
  EXPECT_EQ(ps2[0].value->shape(), (std::vector<int64_t>{20, 16}));

  // The interface drops its saved state.
  const TestSeed seed(0x3a1a);
  Rng rng(seed, 5);
  const Tensor x = randn({6, 16}, rng, 1.0);
  attn->forward(x, 3);
  attn->backward(x);
  attn->drop_saved();
  EXPECT_THROW(attn->backward(x), Error);
}

std::string message_of(const AttentionConfig& cfg) {
  try {
    cfg.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(MLA, RejectsBadConfigsNamingTheOption) {
  const Sizes ok{};
  EXPECT_EQ(message_of(mla_config(ok)), "");
  // MLA's head sizes are free of H: 16 hidden over 3 heads is fine.
  EXPECT_EQ(message_of(mla_config({.H = 16, .n_head = 3})), "");
  struct Bad {
    Sizes s;
    const char* needle;
  };
  const std::vector<Bad> bad = {
      {{.kv_lora = 0}, "--kv-lora-rank"},   {{.q_lora = -1}, "--q-lora-rank"},
      {{.nope = 0}, "--qk-nope-head-dim"},  {{.rope = 0}, "--qk-rope-head-dim"},
      {{.rope = 5}, "--qk-rope-head-dim"},  {{.v = 0}, "--v-head-dim"},
      {{.n_head = 0}, "heads must be > 0"}, {{.q_block = 0}, "q_block"},
  };
  for (const Bad& b : bad)
    EXPECT_NE(message_of(mla_config(b.s)).find(b.needle), std::string::npos) << b.needle;

  AttentionConfig yarn = mla_config({.yarn = true});
  EXPECT_EQ(message_of(yarn), "");
  yarn.rope_scaling.factor = 0.5;
  EXPECT_NE(message_of(yarn).find("--rope-scaling-factor"), std::string::npos);
  yarn = mla_config({.yarn = true});
  yarn.rope_scaling.beta_slow = 0.0;
  EXPECT_NE(message_of(yarn).find("beta_slow"), std::string::npos);
  yarn = mla_config({.yarn = true});
  yarn.rope_scaling.original_max_position = 0;
  EXPECT_NE(message_of(yarn).find("original_max_position"), std::string::npos);

  // MHA refuses YaRN and keeps its own checks.
  AttentionConfig mha;
  mha.H = 16;
  mha.n_head = 2;
  EXPECT_EQ(message_of(mha), "");
  mha.rope_scaling.yarn = true;
  EXPECT_NE(message_of(mha).find("--attention mla"), std::string::npos);

  // The module and the ops validate before touching a buffer.
  EXPECT_THROW(MLA{mla_config({.kv_lora = 0})}, Error);
  EXPECT_THROW(MLA{mha}, Error);
  const AttentionConfig cfg = mla_config(ok);
  MLA m(cfg);
  const TestSeed seed(0x3a1a);
  Rng rng(seed, 6);
  MLASaved saved;
  EXPECT_THROW(mla_forward(cfg, m.w, randn({5, 16}, rng, 1.0), 2, saved), Error);  // 5 rows
  EXPECT_THROW(mla_forward(cfg, m.w, randn({4, 12}, rng, 1.0), 2, saved), Error);  // H 12
  EXPECT_THROW(mla_forward(cfg, m.w, randn({4, 16}, rng, 1.0), 0, saved), Error);
  MLAWeights wrong = m.w;
  wrong.wkv_b = Tensor::zeros({22, 9});
  EXPECT_THROW(mla_forward(cfg, wrong, randn({4, 16}, rng, 1.0), 2, saved), Error);
  EXPECT_THROW(
      mla_backward(cfg, m.w, randn({4, 16}, rng, 1.0), saved, randn({4, 16}, rng, 1.0), m.dw),
      Error);  // no forward saved
}

// ---- speed (not a test: run with --gtest_also_run_disabled_tests --gtest_filter=*Bench*) ------

// MLA forward + backward against MHA of the same hidden size and heads, side by side in one
// run: a tiny size and DeepSeek-V2-Lite's per-layer attention (H 2048, 16 heads, kv_lora 512,
// nope 128, rope 64, v 128, no q_lora). Prints a table; asserts nothing about time.
TEST(MLA, DISABLED_BenchForwardBackwardVsMHA) {
  struct Size {
    const char* name;
    Sizes s;
    int64_t B, T;
  };
  const Size sizes[] = {
      {"tiny", {.H = 64, .n_head = 4, .kv_lora = 32, .nope = 16, .rope = 8, .v = 16}, 4, 64},
      {"v2-lite layer",
       {.H = 2048, .n_head = 16, .kv_lora = 512, .nope = 128, .rope = 64, .v = 128},
       1,
       512},
  };
  auto best_of = [](int reps, auto&& fn) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  Rng rng(1, 1);
  std::printf("%-14s %5s %5s %12s %12s %12s %12s\n", "size", "B", "T", "mha fwd ms", "mha f+b ms",
              "mla fwd ms", "mla f+b ms");
  for (const Size& z : sizes) {
    const int reps = z.s.H > 256 ? 3 : 20;
    AttentionConfig mla_cfg = mla_config(z.s);
    AttentionConfig mha_cfg;
    mha_cfg.H = z.s.H;
    mha_cfg.n_head = z.s.n_head;
    std::unique_ptr<Attention> mha = make_attention(mha_cfg), mla = make_attention(mla_cfg);
    mha->init(1, 0, 0.02f);
    mla->init(1, 0, 0.02f);
    const Tensor x = randn({z.B * z.T, z.s.H}, rng, 1.0);
    double t[4];
    int k = 0;
    for (Attention* a : {mha.get(), mla.get()}) {
      t[k++] = best_of(reps, [&] { a->forward(x, z.T); });
      t[k++] = best_of(reps, [&] {
        a->forward(x, z.T);
        a->backward(x);
      });
    }
    // Forward FLOPs (GEMMs only; the causal half of the scores); backward does twice as many.
    const double N = double(z.B * z.T), H = double(z.s.H), NH = double(z.s.n_head);
    const double causal = double(z.B) * double(z.T) * double(z.T + 1) / 2.0;
    const double D = H / NH, dq = double(z.s.nope + z.s.rope), C = double(z.s.kv_lora);
    const double mha_f = 2 * N * 4 * H * H + 2 * NH * causal * 2 * D;
    const double mla_f =
        2 * N * (H * NH * dq + H * (C + z.s.rope) + C * NH * (z.s.nope + z.s.v) + NH * z.s.v * H) +
        2 * NH * causal * (dq + z.s.v);
    std::printf("%-14s %5lld %5lld %12.3f %12.3f %12.3f %12.3f   GFLOP/s f+b: mha %.1f mla %.1f\n",
                z.name, static_cast<long long>(z.B), static_cast<long long>(z.T), t[0] * 1e3,
                t[1] * 1e3, t[2] * 1e3, t[3] * 1e3, 3 * mha_f / t[1] * 1e-9,
                3 * mla_f / t[3] * 1e-9);
  }
  // Decode at the V2-Lite size: a 448-token prefill through decode, then 64 single tokens.
  {
    const Size& z = sizes[1];
    std::unique_ptr<Attention> mla = make_attention(mla_config(z.s));
    mla->init(1, 0, 0.02f);
    mla->start_cache(1, 512);
    const auto t0 = std::chrono::steady_clock::now();
    mla->decode(randn({448, z.s.H}, rng, 1.0), 0);
    const auto t1 = std::chrono::steady_clock::now();
    for (int64_t p = 448; p < 512; ++p) mla->decode(randn({1, z.s.H}, rng, 1.0), p);
    const auto t2 = std::chrono::steady_clock::now();
    std::printf("v2-lite decode: prefill 448 tokens %.1f ms, then %.3f ms/token (cache %.2f MB)\n",
                std::chrono::duration<double>(t1 - t0).count() * 1e3,
                std::chrono::duration<double>(t2 - t1).count() * 1e3 / 64,
                mla->cache_bytes() / 1e6);
  }
  // The floor: a plain sgemm of the V2-Lite q projection's shape, in the same run.
  const double sg = time_sgemm(512, 3072, 2048, 3);
  std::printf("sgemm 512x3072x2048: %.1f GFLOP/s (%s)\n", 2.0 * 512 * 3072 * 2048 / sg * 1e-9,
              blas_core());
}

}  // namespace
}  // namespace moerun
