// Loss-Free Balancing across ranks: global integer counts in one all-reduce, bit-identical
// biases everywhere, the exact sign-rule step, and MaxVio by hand.
#include <gtest/gtest.h>

#include <cstring>

#include "comm/ep/load_counters.h"
#include "layers/balance.h"
#include "runtime/rng.h"
#include "tests/common/mpi_test.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

MoEConfig lfb_config(int64_t E, BiasUpdate rule) {
  MoEConfig c;
  c.hidden = 4;
  c.expert_width = 4;
  c.routed_experts = E;
  c.top_k = 2;
  c.bias_update = rule;
  c.bias_update_rate = 1e-3;
  return c;
}

TEST(LoadBalance, BiasesStayBitIdenticalAcrossRanksOverManyUpdates) {
  Comm world = Comm::world();
  const TestSeed seed(77);
  for (BiasUpdate rule : {BiasUpdate::kSign, BiasUpdate::kProportional}) {
    const int64_t E = 16, layers = 3;
    std::vector<MoEConfig> cfg(layers, lfb_config(E, rule));
    std::vector<Tensor> bias;
    for (int64_t l = 0; l < layers; ++l) bias.push_back(Tensor::zeros({E}));
    Rng rng(seed, static_cast<uint64_t>(world.rank()));  // every rank draws different local loads
    LoadCounters counters(layers, E);
    for (int step = 0; step < 300; ++step) {
      counters.reset();
      for (int64_t l = 0; l < layers; ++l) {
        std::vector<int64_t> local(E);
        for (auto& v : local)
          v = static_cast<int64_t>(rng.uniform() * (rule == BiasUpdate::kSign ? 1000 : 3));
        counters.add(l, local, 0);
      }
      counters.allreduce(world);
      for (int64_t l = 0; l < layers; ++l)
        update_bias(cfg[static_cast<size_t>(l)], counters.counts(l), bias[static_cast<size_t>(l)]);
    }
    bool same = true;
    for (auto& b : bias) {
      Tensor root = b.clone();
      world.broadcast(std::as_writable_bytes(root.span<float>()), 0);
      same = same && std::memcmp(root.f32(), b.f32(), b.nbytes()) == 0;
      bool moved = false;
      for (float v : b.span<float>()) moved = moved || v != 0.0f;
      EXPECT_TRUE(moved);
    }
    EXPECT_TRUE(world.all_true(same)) << "bias differs between ranks for rule " << to_string(rule);
  }
}

TEST(LoadBalance, SignRuleMovesOverloadedDownAndUnderloadedUpByExactlyU) {
  Comm world = Comm::world();
  const int64_t E = 4;
  MoEConfig cfg = lfb_config(E, BiasUpdate::kSign);
  Tensor bias = Tensor::empty({E});
  const float start[E] = {0.25f, -0.125f, 0.0f, 0.0371f};
  std::memcpy(bias.f32(), start, sizeof(start));
  LoadCounters counters(1, E);
  // Rank r contributes (r+1) * {5, 1, 3, 3}: global mean = 3 * sum, expert 0 over, 1 under, 2/3
  // even.
  const int64_t m = world.rank() + 1;
  counters.add(0, std::vector<int64_t>{5 * m, 1 * m, 3 * m, 3 * m}, 0);
  counters.allreduce(world);
  update_bias(cfg, counters.counts(0), bias);
  EXPECT_EQ(bias.f32()[0], static_cast<float>(double{start[0]} - 1e-3));
  EXPECT_EQ(bias.f32()[1], static_cast<float>(double{start[1]} + 1e-3));
  EXPECT_EQ(bias.f32()[2], start[2]);
  EXPECT_EQ(bias.f32()[3], start[3]);
  EXPECT_LT(bias.f32()[0], start[0]);
}

TEST(LoadBalance, MaxVioOfGlobalCountsMatchesAHandCount) {
  Comm world = Comm::world();
  const int W = world.size();
  LoadCounters counters(2, 4);
  // Layer 0 global counts: {10, 20, 30, 40} * W -> mean 25 W, max 40 W -> MaxVio 0.6.
  counters.add(0, std::vector<int64_t>{10, 20, 30, 40}, 3);
  // Layer 1: only rank 0 routes, all to expert 2 -> {0, 0, 8, 0}: MaxVio = (8 - 2) / 2 = 3.
  counters.add(
      1, world.rank() == 0 ? std::vector<int64_t>{0, 0, 8, 0} : std::vector<int64_t>{0, 0, 0, 0},
      0);
  counters.allreduce(world);
  EXPECT_DOUBLE_EQ(max_violation(counters.counts(0)), 0.6);
  EXPECT_DOUBLE_EQ(max_violation(counters.counts(1)), 3.0);
  EXPECT_EQ(counters.counts(0)[3], 40 * W);
  EXPECT_EQ(counters.dropped(0), 3 * W);
  EXPECT_EQ(max_violation(std::vector<int64_t>{0, 0, 0}), 0.0);
}

}  // namespace
}  // namespace moerun::testing
