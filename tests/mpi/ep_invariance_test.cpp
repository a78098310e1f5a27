// EP-invariance: the same global tokens and weights give the same outputs and gradients at
// every EP size that divides the world (1, 2, 4), each checked against the double-precision
// loop reference (and its central-difference gradients).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "comm/topology.h"
#include "tests/common/expect_close.h"
#include "tests/common/moe_fixture.h"
#include "tests/common/mpi_test.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

struct Grads {
  std::vector<double> dx, dgate, dw13, dw2, dsw13, dsw2;
};

void check_all_ep_sizes(const MoEConfig& cfg, uint64_t seed) {
  Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  const int64_t Tg = 24, Tl = Tg / W, H = cfg.hidden, F = cfg.expert_width, SF = cfg.shared_width();
  RefLayer L = random_ref_layer(cfg, Tg, seed);
  const RefResult ref = ref_forward(L);
  Grads want{ref_grad(L, &RefLayer::x),  ref_grad(L, &RefLayer::gate), ref_grad(L, &RefLayer::w13),
             ref_grad(L, &RefLayer::w2), ref_grad(L, &RefLayer::sw13), ref_grad(L, &RefLayer::sw2)};
  std::vector<double> y_ep1;
  for (int ep : {1, 2, 4}) {
    if (W % ep != 0) continue;
    Topology topo = Topology::create(ep);
    MoELayer layer(cfg, topo.ep);
    load_layer(layer, L);
    const int64_t El = layer.local_experts(), e0 = layer.first_expert();
    Tensor x = to_tensor(L.x, {Tl, H}, me * Tl * H);
    Tensor y = layer.forward(x);
    Tensor dx = layer.backward(to_tensor(L.dy, {Tl, H}, me * Tl * H));
    // Replicated parameters sum over the world; experts over their expert-data-parallel group.
    MoEGrads& g = layer.grads();
    world.allreduce_sum(g.gate.span<float>());
    topo.edp.allreduce_sum(g.w13.span<float>());
    topo.edp.allreduce_sum(g.w2.span<float>());
    // Against the double reference as in moe_gradcheck_test (fp32 sums of H = 8, F = 5 terms;
    // gradients through ~4 chained sums, up to ~3e-6 off on entries that cancel). EP > 1 against
    // EP 1: the same arithmetic except the order of the combine's sums, a few fp32 ulps.
    const double y_atol = 1e-6, y_rtol = 1e-5, g_atol = 3e-6, g_rtol = 1e-4;
    bool ok = true;
    auto check = [&](const char* what, const std::vector<double>& got,
                     const std::vector<double>& exp, double atol, double rtol) {
      ok = expect_close(got, exp, atol, rtol, fmt::format("{} at EP {} rank {}", what, ep, me)) &&
           ok;
    };
    const std::vector<double> yv = to_vec(y);
    check("y", yv, slice(ref.y, me * Tl * H, Tl * H), y_atol, y_rtol);
    if (ep == 1)
      y_ep1 = yv;
    else
      check("y vs EP 1", yv, y_ep1, 5e-7, 1e-6);
    check("dx", to_vec(dx), slice(want.dx, me * Tl * H, Tl * H), g_atol, g_rtol);
    check("dgate", to_vec(g.gate), want.dgate, g_atol, g_rtol);
    check("dw13", to_vec(g.w13), slice(want.dw13, e0 * 2 * F * H, El * 2 * F * H), g_atol, g_rtol);
    check("dw2", to_vec(g.w2), slice(want.dw2, e0 * H * F, El * H * F), g_atol, g_rtol);
    if (SF > 0) {
      world.allreduce_sum(g.shared_w13.span<float>());
      world.allreduce_sum(g.shared_w2.span<float>());
      check("dshared_w13", to_vec(g.shared_w13), want.dsw13, g_atol, g_rtol);
      check("dshared_w2", to_vec(g.shared_w2), want.dsw2, g_atol, g_rtol);
    }
    EXPECT_TRUE(world.all_true(ok)) << "EP " << ep << " differs from the reference on some rank";
  }
}

TEST(EpInvariance, SoftmaxWithSharedExperts) {
  MoEConfig c;
  c.hidden = 8;
  c.expert_width = 5;
  c.routed_experts = 8;
  c.shared_experts = 1;
  c.top_k = 3;
  const TestSeed seed(11);
  check_all_ep_sizes(c, seed);
}

TEST(EpInvariance, SigmoidNormalizedGroupLimited) {
  MoEConfig c;
  c.hidden = 8;
  c.expert_width = 4;
  c.routed_experts = 8;
  c.top_k = 3;
  c.score_fn = ScoreFn::kSigmoid;
  c.topk_norm = TopkNorm::kNormalize;
  c.routed_scaling_factor = 2.5;
  c.n_group = 4;
  c.topk_group = 2;
  c.group_score = GroupScore::kTop2Sum;
  const TestSeed seed(12);
  check_all_ep_sizes(c, seed);
}

}  // namespace
}  // namespace moerun::testing
