// The layer's forward against the double-precision loop reference, and its analytic gradients
// against central differences of that reference, for every parameter and the input.
#include <gtest/gtest.h>

#include <ostream>
#include <string>

#include "tests/common/expect_close.h"
#include "tests/common/moe_fixture.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

struct Case {
  std::string name;
  ScoreFn score = ScoreFn::kSoftmax;
  int64_t shared = 0;
  TopkNorm norm = TopkNorm::kNone;
  double scale = 1.0;
  int64_t n_group = 1, topk_group = 1;
  GroupScore group_score = GroupScore::kMax;
  double a1 = 0, a2 = 0, aseq = 0;
  int64_t seq_len = 0;
  double capacity = 0;
};

MoEConfig config_of(const Case& k) {
  MoEConfig c;
  c.hidden = 8;
  c.expert_width = 5;
  c.routed_experts = 8;
  c.top_k = 3;
  c.shared_experts = k.shared;
  c.score_fn = k.score;
  c.topk_norm = k.norm;
  c.routed_scaling_factor = k.scale;
  c.n_group = k.n_group;
  c.topk_group = k.topk_group;
  c.group_score = k.group_score;
  c.aux_alpha1 = k.a1;
  c.aux_alpha2 = k.a2;
  c.aux_seq_alpha = k.aseq;
  c.capacity_factor = k.capacity;
  return c;
}

// A failing case prints its name, not its bytes.
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

class MoEGradCheck : public ::testing::TestWithParam<Case> {};

TEST_P(MoEGradCheck, ForwardAndEveryGradientMatchTheReference) {
  const Case& k = GetParam();
  const MoEConfig cfg = config_of(k);
  Comm world = Comm::world();
  const TestSeed seed(100 + std::hash<std::string>{}(k.name) % 1000);
  RefLayer L = random_ref_layer(cfg, 12, seed);
  L.seq_len = k.seq_len;
  const RefResult ref = ref_forward(L);

  MoELayer layer(cfg, world);
  load_layer(layer, L);
  Tensor x = to_tensor(L.x, {L.T, cfg.hidden});
  Tensor y = layer.forward(x, k.seq_len);
  // fp32 sums of H = 8 and F = 5 products against double: ~1e-7 relative per value, up to
  // ~8e-7 absolute where the experts' O(1) contributions cancel (worst 0.39 of this over 40
  // seeds).
  expect_close(y, ref.y, 5e-7, 1e-5, "forward output");
  const Tensor& idx = layer.routing().dispatch_idx;
  for (int64_t i = 0; i < idx.numel(); ++i)
    ASSERT_EQ(idx.data<int32_t>()[i], ref.topk_idx[static_cast<size_t>(i)]) << "pair " << i;
  EXPECT_NEAR(layer.stats().aux_loss, ref.aux, 1e-6 * (1 + std::abs(ref.aux)));
  EXPECT_EQ(layer.stats().dropped, ref.dropped);

  Tensor dx = layer.backward(to_tensor(L.dy, {L.T, cfg.hidden}));
  // The reference's central differences are exact to ~1e-9 (double, eps 1e-6); the float
  // backward rounds through ~4 chained sums of O(1) terms, up to ~3e-6 absolute on entries that
  // cancel to ~5e-3 (worst 0.30 of this over 40 seeds). A wrong term is off by >= 1e-3.
  const double atol = 3e-6, rtol = 1e-4;
  expect_close(dx, ref_grad(L, &RefLayer::x), atol, rtol, "dx");
  expect_close(layer.grads().gate, ref_grad(L, &RefLayer::gate), atol, rtol, "dgate");
  expect_close(layer.grads().w13, ref_grad(L, &RefLayer::w13), atol, rtol, "dw13");
  expect_close(layer.grads().w2, ref_grad(L, &RefLayer::w2), atol, rtol, "dw2");
  if (cfg.shared_experts > 0) {
    expect_close(layer.grads().shared_w13, ref_grad(L, &RefLayer::sw13), atol, rtol, "dshared_w13");
    expect_close(layer.grads().shared_w2, ref_grad(L, &RefLayer::sw2), atol, rtol, "dshared_w2");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Routing, MoEGradCheck,
    ::testing::Values(Case{.name = "softmax"}, Case{.name = "softmax_shared", .shared = 2},
                      Case{.name = "sigmoid", .score = ScoreFn::kSigmoid},
                      Case{.name = "sigmoid_shared_norm_scaled",
                           .score = ScoreFn::kSigmoid,
                           .shared = 1,
                           .norm = TopkNorm::kNormalize,
                           .scale = 2.5},
                      Case{.name = "softmax_norm", .norm = TopkNorm::kNormalize},
                      Case{.name = "group_max", .shared = 1, .n_group = 4, .topk_group = 2},
                      Case{.name = "group_top2sum_sigmoid",
                           .score = ScoreFn::kSigmoid,
                           .norm = TopkNorm::kNormalize,
                           .n_group = 4,
                           .topk_group = 2,
                           .group_score = GroupScore::kTop2Sum},
                      Case{.name = "aux_expert_level", .a1 = 0.05},
                      Case{.name = "aux_sequence_wise_sigmoid",
                           .score = ScoreFn::kSigmoid,
                           .aseq = 0.05,
                           .seq_len = 4},
                      Case{.name = "aux_all_softmax",
                           .shared = 1,
                           .a1 = 0.03,
                           .a2 = 0.02,
                           .aseq = 0.04,
                           .seq_len = 6},
                      Case{.name = "capacity_drops", .capacity = 0.6}),
    [](const ::testing::TestParamInfo<Case>& p) { return p.param.name; });

}  // namespace
}  // namespace moerun::testing
