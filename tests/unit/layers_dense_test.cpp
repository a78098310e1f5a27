// Dense layer pieces: embedding, RMSNorm, cross-entropy, LM head and AdamW. References are
// double loops in the test, finite differences for every gradient, and hand-derived updates.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "layers/adamw.h"
#include "layers/cross_entropy.h"
#include "layers/embedding.h"
#include "layers/lm_head.h"
#include "layers/loss.h"
#include "layers/rmsnorm.h"
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

Tensor randn(std::vector<int64_t> shape, Rng& rng, double scale) {
  Tensor t = Tensor::empty(std::move(shape));
  for (float& v : t.span<float>()) v = static_cast<float>(scale * rng.normal());
  return t;
}

Tensor random_ids(int64_t n, int64_t V, Rng& rng) {
  Tensor t = Tensor::empty({n}, DType::kI32);
  for (int32_t& v : t.span<int32_t>()) v = static_cast<int32_t>(rng.next_u64() % V);
  return t;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.f32()[i]) * b.f32()[i];
  return s;
}

bool close(double a, double b, double atol, double rtol) {
  return std::abs(a - b) <= atol + rtol * std::abs(b);
}

// The loss alone, and the gradient for loss_scale * loss, leaving the logits as they are.
double ce_loss(const Tensor& logits, const Tensor& targets) {
  return cross_entropy_forward(logits.clone(), targets).loss;
}
Tensor ce_grad(const Tensor& logits, const Tensor& targets, float loss_scale) {
  const CrossEntropyOut o = cross_entropy_forward(logits.clone(), targets);
  return cross_entropy_backward(o.exps, o.inv_sum, targets, loss_scale);
}

template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---- embedding ----------------------------------------------------------------------------------

TEST(Embedding, ForwardGathersAndBackwardScatterAdds) {
  const int64_t V = 11, H = 6, N = 17;
  const TestSeed seed(0xe1b);
  Rng rng(seed, 1);
  Tensor table = randn({V, H}, rng, 1.0);
  Tensor ids = random_ids(N, V, rng);
  ids.data<int32_t>()[3] = ids.data<int32_t>()[9];  // a repeated id must add up in backward
  Tensor out;
  auto loss_fn = [&](const Tensor& r) {
    out = embedding_forward(table, ids);
    return dot(out, r);
  };
  Tensor r = randn({N, H}, rng, 1.0);
  loss_fn(r);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < H; ++j)
      ASSERT_EQ(out.f32()[i * H + j], table.f32()[ids.data<int32_t>()[i] * H + j]);

  Tensor dtable = randn({V, H}, rng, 1.0);  // backward accumulates onto what is there
  const Tensor before = dtable.clone();
  embedding_backward(ids, r, dtable);
  Tensor grad = Tensor::empty({V, H});
  for (int64_t i = 0; i < V * H; ++i) grad.f32()[i] = dtable.f32()[i] - before.f32()[i];
  // The loss is linear in the table, so the differences are exact up to double rounding; grad
  // rounds twice in fp32 (accumulate onto before, subtract it) at |values| < ~4: ~5e-7.
  fd_check("dtable", table, grad, [&] { return loss_fn(r); }, rng,
           {.atol = 2e-6, .rtol = 1e-6, .samples = 66});
}

TEST(Embedding, RejectsIdsOutsideVocabulary) {
  const int64_t V = 5, H = 3;
  const TestSeed seed(0xe1b);
  Rng rng(seed, 2);
  Tensor table = randn({V, H}, rng, 1.0);
  Tensor out = Tensor::empty({3, H});
  for (int32_t bad : {-1, 5, 1 << 30}) {
    const std::vector<int32_t> ids = {0, bad, 4};
    const Tensor idt = Tensor::from_host<int32_t>(ids, {3});
    const std::string msg = error_message([&] { embedding_forward(table, idt); });
    EXPECT_NE(msg.find(fmt::format("token id {} at position 1", bad)), std::string::npos) << msg;
    EXPECT_THROW(embedding_backward(idt, out, table), Error);
  }
}

// ---- RMSNorm ------------------------------------------------------------------------------------

TEST(RMSNorm, ForwardMatchesDoubleReference) {
  const int64_t N = 7, H = 33;
  const float eps = 1e-6f;
  const TestSeed seed(0x4a5);
  Rng rng(seed, 1);
  Tensor x = randn({N, H}, rng, 3.0), w = randn({H}, rng, 1.0);
  const RMSNormOut o = rmsnorm_forward(x, w, eps);
  std::vector<double> ref_rstd(N), ref_y(N * H);
  for (int64_t i = 0; i < N; ++i) {
    double ms = 0.0;
    for (int64_t j = 0; j < H; ++j)
      ms += static_cast<double>(x.f32()[i * H + j]) * x.f32()[i * H + j];
    ref_rstd[i] = 1.0 / std::sqrt(ms / H + eps);
    for (int64_t j = 0; j < H; ++j)
      ref_y[i * H + j] = w.f32()[j] * x.f32()[i * H + j] * ref_rstd[i];
  }
  // A mean of 33 squares and one product per output in fp32: a few ulps of each value.
  expect_close(o.rstd, ref_rstd, 0.0, 1e-6, "rstd");
  expect_close(o.y, ref_y, 1e-6, 1e-5, "y");
}

TEST(RMSNorm, GradientsMatchFiniteDifferences) {
  const int64_t N = 6, H = 10;
  const float eps = 1e-5f;
  const TestSeed seed(0x4a5);
  Rng rng(seed, 2);
  Tensor x = randn({N, H}, rng, 1.0), w = randn({H}, rng, 1.0), r = randn({N, H}, rng, 1.0);
  Tensor rstd;
  auto loss = [&] {
    RMSNormOut o = rmsnorm_forward(x, w, eps);
    rstd = o.rstd;
    return dot(o.y, r);
  };
  loss();
  Tensor dw = Tensor::zeros({H});
  const Tensor dx = rmsnorm_backward(x, w, rstd, r, dw);
  // atol: the fp32 rounding of the 60 outputs (~6e-8 x |y r| x sqrt(60)) over 2h = 0.02 is
  // ~3e-5. rtol: dx bends through rstd (truncation h^2 f'''/6, up to ~1e-3 of the derivative);
  // the loss is linear in w, so dw has no truncation error at all.
  fd_check("dx", x, dx, loss, rng, {.atol = 1e-4, .rtol = 2e-3, .samples = 60});
  fd_check("dw", w, dw, loss, rng, {.atol = 1e-4, .rtol = 1e-4});
}

// ---- cross-entropy and LM head -----------------------------------------------------------------

TEST(CrossEntropy, LossAndGradientMatchDoubleReference) {
  const int64_t N = 9, V = 13;
  const float loss_scale = 0.37f;
  const TestSeed seed(0xce);
  Rng rng(seed, 1);
  Tensor logits = randn({N, V}, rng, 2.0);
  Tensor targets = random_ids(N, V, rng);
  const double loss = ce_loss(logits, targets);
  const Tensor dlogits = ce_grad(logits, targets, loss_scale);
  double ref = 0.0;
  std::vector<double> ref_dlogits(N * V);
  for (int64_t i = 0; i < N; ++i) {
    const float* l = logits.f32() + i * V;
    double z = 0.0;
    for (int64_t j = 0; j < V; ++j) z += std::exp(static_cast<double>(l[j]));
    const int32_t t = targets.data<int32_t>()[i];
    ref += std::log(z) - l[t];
    for (int64_t j = 0; j < V; ++j)
      ref_dlogits[i * V + j] =
          loss_scale * (std::exp(static_cast<double>(l[j])) / z - (j == t)) / N;
  }
  // An fp32 softmax over 13 logits: a few ulps of each probability, of O(0.1) here.
  expect_close(dlogits, ref_dlogits, 1e-7, 1e-5, "dlogits");
  EXPECT_TRUE(close(loss, ref / N, 0.0, 1e-6)) << loss << " vs " << ref / N;

  // Forward keeps the softmax numerators in the logits' storage; backward writes the gradient
  // over them.
  Tensor inplace = logits.clone();
  const CrossEntropyOut o = cross_entropy_forward(inplace, targets);
  EXPECT_EQ(o.loss, loss);
  EXPECT_EQ(o.exps.f32(), inplace.f32());
  EXPECT_EQ(o.inv_sum.shape(), (std::vector<int64_t>{N}));
  const Tensor d2 = cross_entropy_backward(o.exps, o.inv_sum, targets, loss_scale);
  EXPECT_EQ(d2.f32(), inplace.f32());
  for (int64_t i = 0; i < N * V; ++i) EXPECT_EQ(inplace.f32()[i], dlogits.f32()[i]);
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  const int64_t N = 5, V = 7;
  const TestSeed seed(0xce);
  Rng rng(seed, 2);
  Tensor logits = randn({N, V}, rng, 1.5);
  Tensor targets = random_ids(N, V, rng);
  const Tensor dlogits = ce_grad(logits, targets, 1.0f);
  // A mean of 5 log-sum-exps: smooth (truncation ~1e-5 of the derivative) and rounded little
  // (differences off by 5e-7 at most over 30 seeds), so gradients of ~0.1 must match to 2e-5,
  // plus a floor for the entries near 0.
  fd_check("dlogits", logits, dlogits, [&] { return ce_loss(logits, targets); }, rng,
           {.atol = 2e-6, .rtol = 2e-5});
}

TEST(CrossEntropy, StableForHugeLogits) {
  // exp(1e4) overflows any float; the max subtraction must keep loss and gradient finite.
  const int64_t N = 2, V = 3;
  const std::vector<float> lv = {1e4f, 1e4f - 1.0f, -1e4f, -3e4f, -3e4f, -3e4f};
  const std::vector<int32_t> tv = {1, 2};
  const Tensor logits = Tensor::from_host<float>(lv, {N, V});
  const Tensor targets = Tensor::from_host<int32_t>(tv, {N});
  const double loss = ce_loss(logits, targets);
  const Tensor dt = ce_grad(logits, targets, 1.0f);
  const std::span<const float> d = dt.span<float>();
  const double row0 = std::log(1.0 + std::exp(-1.0)) + 1.0;  // target one below the max
  const double row1 = std::log(3.0);
  EXPECT_NEAR(loss, (row0 + row1) / 2, 1e-6);
  for (float g : d) EXPECT_TRUE(std::isfinite(g));
  EXPECT_NEAR(d[5], (1.0 / 3 - 1) / 2, 1e-7);
}

TEST(CrossEntropy, RejectsTargetsOutsideVocabulary) {
  Tensor logits = Tensor::empty({2, 4});
  logits.fill(0.5f);
  for (int32_t bad : {-1, 4}) {
    const std::vector<int32_t> tv = {1, bad};
    const Tensor targets = Tensor::from_host<int32_t>(tv, {2});
    const std::string msg = error_message([&] { cross_entropy_forward(logits.clone(), targets); });
    Tensor inv_sum = Tensor::empty({2});
    inv_sum.fill(0.25f);
    EXPECT_THROW(cross_entropy_backward(logits.clone(), inv_sum, targets, 1.0f), Error);
    EXPECT_NE(msg.find(fmt::format("target {} at row 1", bad)), std::string::npos) << msg;
  }
}

TEST(LmHead, GradientsMatchFiniteDifferences) {
  const int64_t N = 6, H = 8, V = 11;
  const TestSeed seed(0x1e);
  Rng rng(seed, 1);
  Tensor x = randn({N, H}, rng, 1.0), w = randn({V, H}, rng, 0.5), r = randn({N, V}, rng, 1.0);
  auto loss = [&] { return dot(lm_head_forward(x, w), r); };
  loss();
  Tensor dw = Tensor::zeros({V, H});
  const Tensor dx = lm_head_backward(x, w, r, dw);
  // The loss is linear in x and in w: no truncation error, only the fp32 rounding of the 66
  // logits (sums of 8 products) over 2h = 0.02, a few 1e-5.
  fd_check("dx", x, dx, loss, rng, {.atol = 2e-4, .rtol = 1e-4});
  fd_check("dw", w, dw, loss, rng, {.atol = 2e-4, .rtol = 1e-4});
}

TEST(LmHead, ChunkedHeadAndLossModuleMatchesUnfused) {
  const int64_t N = 10, H = 12, V = 17;
  const float loss_scale = 2.5f;
  const TestSeed seed(0x1e);
  Rng rng(seed, 2);
  Tensor x = randn({N, H}, rng, 1.0), w = randn({V, H}, rng, 0.6);
  Tensor targets = random_ids(N, V, rng);

  const double loss = ce_loss(lm_head_forward(x, w), targets);
  const Tensor dlogits = ce_grad(lm_head_forward(x, w), targets, loss_scale);
  Tensor dw = randn({V, H}, rng, 1.0);  // the module accumulates onto what is there
  const Tensor dw_start = dw.clone();
  const Tensor dx = lm_head_backward(x, w, dlogits, dw);

  for (int64_t chunk : {int64_t{3}, int64_t{10}, int64_t{64}}) {
    // The logits kept by forward, or none (backward recomputes them): the same bits either way.
    Tensor dx_saved, dw_saved;
    for (int64_t budget : {LMHeadLoss::kMaxSavedLogitsBytes, int64_t{0}}) {
      SCOPED_TRACE(::testing::Message() << "chunk_rows=" << chunk << " budget=" << budget);
      LMHeadLoss head(V, H, chunk, budget);
      std::copy(w.f32(), w.f32() + w.numel(), head.weight.f32());
      std::copy(dw_start.f32(), dw_start.f32() + dw.numel(), head.dweight.f32());
      const double fused = head.forward(x, targets);
      EXPECT_TRUE(close(fused, loss, 0.0, 1e-6));
      const Tensor dx_fused = head.backward(loss_scale);
      // The same products summed in chunks: fp32 rounding of sums of up to 17 terms of O(1).
      expect_close(dx_fused, dx, 1e-6, 1e-4, "dx, chunked vs unfused");
      expect_close(head.dweight, dw, 1e-6, 1e-4, "dw, chunked vs unfused");
      if (budget == 0) {
        for (int64_t i = 0; i < N * H; ++i) ASSERT_EQ(dx_fused.f32()[i], dx_saved.f32()[i]);
        for (int64_t i = 0; i < V * H; ++i) ASSERT_EQ(head.dweight.f32()[i], dw_saved.f32()[i]);
      }
      dx_saved = dx_fused;
      dw_saved = head.dweight.clone();
      EXPECT_EQ(head.forward(x, targets), fused);  // forward alone: the loss, no gradient
      EXPECT_EQ(head.dweight.f32()[0], dw_saved.f32()[0]);
    }
  }
}

// ---- backend choice -----------------------------------------------------------------------------

// A host buffer labelled as CUDA memory: ops must refuse it with a clear error (this build has no
// CUDA kernels), never read it on the host; tensors on two devices in one op are refused too.
TEST(Backend, OpsPickTheirImplementationByDevice) {
  std::shared_ptr<std::byte[]> storage(new std::byte[6 * 4 * sizeof(float)]);
  const Tensor dx = Tensor::wrap(storage, {6, 4}, DType::kF32, Device::kCuda);
  const Tensor dw = Tensor::wrap(storage, {4}, DType::kF32, Device::kCuda);
  const TestSeed seed(0xbac);
  Rng rng(seed, 1);
  const Tensor x = randn({6, 4}, rng, 1.0), w = randn({4}, rng, 1.0);
  const std::string msg = error_message([&] { rmsnorm_forward(dx, dw, 1e-6f); });
  EXPECT_NE(msg.find("rmsnorm_forward: no cuda backend"), std::string::npos) << msg;
  EXPECT_NE(error_message([&] { rmsnorm_forward(x, dw, 1e-6f); }).find("tensors on cpu and cuda"),
            std::string::npos);
  EXPECT_NE(error_message([&] { lm_head_forward(dx, dx); }).find("no cuda backend"),
            std::string::npos);
  EXPECT_NO_THROW(rmsnorm_forward(x, w, 1e-6f));
}

// ---- AdamW --------------------------------------------------------------------------------------

TEST(AdamW, TwoStepsMatchHandComputedUpdate) {
  // Two tensors: a "matrix" that decays and a "norm weight" that does not. The expected values
  // follow the update written out longhand in double.
  AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  AdamW opt(cfg);
  std::vector<float> p0 = {0.5f, -1.25f, 2.0f}, p1 = {0.75f, -0.3f};
  std::vector<float> g0 = {0.1f, -0.2f, 0.05f}, g1 = {-0.4f, 0.02f};
  std::vector<float> m0(3, 0.f), v0(3, 0.f), m1(2, 0.f), v1(2, 0.f);
  const AdamWParam params[] = {{p0, g0, m0, v0, WeightDecay::kApply},
                               {p1, g1, m1, v1, WeightDecay::kNone}};
  const double lr[2] = {1e-2, 5e-3};
  const double gscale[2] = {1.0, 0.5};
  const std::vector<float> g0_step2 = {-0.3f, 0.1f, 0.07f}, g1_step2 = {0.2f, -0.01f};

  std::vector<double> ep0(p0.begin(), p0.end()), ep1(p1.begin(), p1.end());
  std::vector<double> em0(3, 0), ev0(3, 0), em1(2, 0), ev1(2, 0);
  auto expect_step = [&](std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                         const std::vector<float>& g, int t, bool decay) {
    for (size_t i = 0; i < p.size(); ++i) {
      const double gi = g[i] * gscale[t - 1];
      if (decay) p[i] -= lr[t - 1] * 0.1 * p[i];
      m[i] = 0.9 * m[i] + 0.1 * gi;
      v[i] = 0.95 * v[i] + 0.05 * gi * gi;
      const double mhat = m[i] / (1 - std::pow(0.9, t)), vhat = v[i] / (1 - std::pow(0.95, t));
      p[i] -= lr[t - 1] * mhat / (std::sqrt(vhat) + 1e-8);
    }
  };
  for (int t = 1; t <= 2; ++t) {
    if (t == 2) {  // new gradients in the same storage the spans point at
      std::copy(g0_step2.begin(), g0_step2.end(), g0.begin());
      std::copy(g1_step2.begin(), g1_step2.end(), g1.begin());
    }
    opt.step(params, lr[t - 1], gscale[t - 1]);
    expect_step(ep0, em0, ev0, g0, t, true);
    expect_step(ep1, em1, ev1, g1, t, false);
    EXPECT_EQ(opt.steps(), t);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_TRUE(close(p0[i], ep0[i], 1e-7, 1e-6)) << "t=" << t << " p0[" << i << "]";
      EXPECT_TRUE(close(m0[i], em0[i], 1e-9, 1e-6));
      EXPECT_TRUE(close(v0[i], ev0[i], 1e-12, 1e-6));
    }
    for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(close(p1[i], ep1[i], 1e-7, 1e-6)) << "t=" << t;
  }
}

TEST(AdamW, RejectsBadConfigAndMismatchedSpans) {
  AdamWConfig bad;
  bad.beta2 = 1.0;
  EXPECT_NE(error_message([&] { AdamW opt(bad); }).find("beta2"), std::string::npos);
  AdamW opt(AdamWConfig{});
  std::vector<float> p(4, 1.f), g(3, 1.f), m(4, 0.f), v(4, 0.f);
  const AdamWParam params[] = {{p, g, m, v, WeightDecay::kApply}};
  EXPECT_THROW(opt.step(params, 1e-3), Error);
  EXPECT_EQ(opt.steps(), 0);  // a rejected step does not count
}

TEST(AdamW, SumOfSquaresAccumulatesInDouble) {
  // 2^24 + 1 values whose float running sum would stall at 2^24.
  std::vector<float> g((1 << 24) + 3, 1.0f);
  g[5] = -3.0f;
  EXPECT_EQ(sum_of_squares(g), static_cast<double>(g.size()) - 1 + 9);
  const TestSeed seed(0xada);
  Rng rng(seed, 1);
  Tensor r = randn({1001}, rng, 1.0);
  double ref = 0.0;
  for (float v : r.span<float>()) ref += static_cast<double>(v) * v;
  EXPECT_NEAR(sum_of_squares(r.span<float>()), ref, 1e-9 * ref);
}

}  // namespace
}  // namespace moerun
