// One DeepSeekMoE layer (EP = 1) against PyTorch float64 autograd: routing, forward output,
// aux loss and every gradient, from the golden files written by make_moe_golden.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "layers/moe.h"
#include "tests/common/expect_close.h"
#include "tests/common/golden_file.h"

namespace moerun::testing {
namespace {

// One fp32 layer (H = 8, F = 6, 16 tokens) against float64: sums of a few tens of O(1) terms
// round to ~1e-7 relative each, and a gradient passes through ~4 of them (router, SwiGLU, both
// GEMMs); atol covers entries near 0 (up to ~3e-6 off where the terms are O(1)). Measured
// worst over the three files: 0.19 of the allowance (dw2).
constexpr double kAtol = 1e-6, kRtol = 1e-4;

MoEConfig config_of(const GoldenFile& g) {
  MoEConfig c;
  c.hidden = g.i64("config.H");
  c.expert_width = g.i64("config.F");
  c.routed_experts = g.i64("config.E");
  c.top_k = g.i64("config.K");
  c.shared_experts = g.i64("config.S");
  c.score_fn = g.i64("config.score_fn") == 0 ? ScoreFn::kSoftmax : ScoreFn::kSigmoid;
  c.topk_norm = g.i64("config.topk_norm") == 0 ? TopkNorm::kNone : TopkNorm::kNormalize;
  c.routed_scaling_factor = g.f64("config.routed_scaling_factor");
  c.n_group = g.i64("config.n_group");
  c.topk_group = g.i64("config.topk_group");
  c.group_score = g.i64("config.group_score") == 0 ? GroupScore::kMax : GroupScore::kTop2Sum;
  c.aux_alpha1 = g.f64("config.aux_alpha1");
  c.aux_seq_alpha = g.f64("config.aux_seq_alpha");
  c.balance = (c.aux_alpha1 > 0 || c.aux_seq_alpha > 0) ? Balance::kAux : Balance::kLossFree;
  return c;
}

// Rows [0,F) of each expert from a, rows [F,2F) from b: (E,F,H) x2 -> (E,2F,H).
std::vector<double> fuse13(const GoldenEntry& a, const GoldenEntry& b, int64_t E) {
  const size_t block = a.values.size() / static_cast<size_t>(E);
  std::vector<double> out;
  out.reserve(2 * a.values.size());
  for (int64_t e = 0; e < E; ++e) {
    const auto off = static_cast<std::ptrdiff_t>(static_cast<size_t>(e) * block);
    out.insert(out.end(), a.values.begin() + off,
               a.values.begin() + off + static_cast<std::ptrdiff_t>(block));
    out.insert(out.end(), b.values.begin() + off,
               b.values.begin() + off + static_cast<std::ptrdiff_t>(block));
  }
  return out;
}

Tensor tensor_of(const std::vector<double>& v, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(std::move(shape));
  EXPECT_EQ(static_cast<size_t>(t.numel()), v.size());
  for (int64_t i = 0; i < t.numel(); ++i)
    t.f32()[i] = static_cast<float>(v[static_cast<size_t>(i)]);
  return t;
}

class MoEGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(MoEGolden, MatchesPyTorch) {
  const GoldenFile g(golden_path(GetParam()));
  const MoEConfig c = config_of(g);
  const int64_t T = g.i64("config.T"), H = c.hidden, F = c.expert_width, E = c.routed_experts;
  const int64_t K = c.top_k, SF = c.shared_width();
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  MoELayer layer(c, self);
  MoEParams& p = layer.params();
  p.gate = g.f32("gate");
  p.bias = g.f32("bias");
  p.w13 = tensor_of(fuse13(g.entry("w1"), g.entry("w3"), E), {E, 2 * F, H});
  p.w2 = g.f32("w2");
  if (SF > 0) {
    p.shared_w13 = tensor_of(fuse13(g.entry("shared_w1"), g.entry("shared_w3"), 1), {2 * SF, H});
    p.shared_w2 = g.f32("shared_w2");
  }
  layer.grads().zero();

  const Tensor y = layer.forward(g.f32("x"), g.i64("config.seq_len"));
  // Routing: the same experts in the same (descending biased score) order.
  const Tensor want_idx = g.i32("topk_idx");
  const Tensor& got_idx = layer.routing().topk_idx;
  int mismatched = 0;
  for (int64_t i = 0; i < T * K; ++i)
    mismatched += got_idx.data<int32_t>()[i] != want_idx.data<int32_t>()[i];
  EXPECT_EQ(mismatched, 0) << "top-k expert choices differ from PyTorch";
  expect_close(layer.routing().topk_weight, g.entry("topk_weight").values, kAtol, kRtol,
               "topk_weight");
  expect_close(y, g.entry("y").values, kAtol, kRtol, "y");
  EXPECT_NEAR(layer.stats().aux_loss, g.f64("aux_loss"), 1e-6 + 1e-4 * std::abs(g.f64("aux_loss")));

  const Tensor dx = layer.backward(g.f32("dy"));
  expect_close(dx, g.entry("dx").values, kAtol, kRtol, "dx");
  expect_close(layer.grads().gate, g.entry("dgate").values, kAtol, kRtol, "dgate");
  expect_close(layer.grads().w13, fuse13(g.entry("dw1"), g.entry("dw3"), E), kAtol, kRtol, "dw13");
  expect_close(layer.grads().w2, g.entry("dw2").values, kAtol, kRtol, "dw2");
  if (SF > 0) {
    expect_close(layer.grads().shared_w13, fuse13(g.entry("dshared_w1"), g.entry("dshared_w3"), 1),
                 kAtol, kRtol, "dshared_w13");
    expect_close(layer.grads().shared_w2, g.entry("dshared_w2").values, kAtol, kRtol, "dshared_w2");
  }
}

INSTANTIATE_TEST_SUITE_P(Files, MoEGolden,
                         ::testing::Values("moe_softmax_shared.bin", "moe_sigmoid_group.bin",
                                           "moe_aux.bin"),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           std::string n = p.param.substr(4);
                           return n.substr(0, n.size() - 4);
                         });

}  // namespace
}  // namespace moerun::testing
