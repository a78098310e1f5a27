// Bad input is a clear error naming the option, raised on every rank before any collective.
#include <gtest/gtest.h>

#include <functional>

#include "comm/topology.h"
#include "layers/moe.h"
#include "tests/common/mpi_test.h"

namespace moerun::testing {
namespace {

MoEConfig good() {
  MoEConfig c;
  c.hidden = 8;
  c.expert_width = 4;
  c.routed_experts = 8;
  c.top_k = 2;
  return c;
}

TEST(ConfigErrors, EachBadOptionIsNamedOnEveryRank) {
  Comm world = Comm::world();
  auto with = [](std::function<void(MoEConfig&)> edit) {
    MoEConfig c = good();
    edit(c);
    return [c] { MoELayer layer(c, Comm::world()); };
  };
  expect_config_error_everywhere(with([](MoEConfig& c) { c.top_k = 9; }), "--top-k");
  expect_config_error_everywhere(with([](MoEConfig& c) { c.top_k = 0; }), "--top-k");
  expect_config_error_everywhere(with([](MoEConfig& c) { c.hidden = 0; }), "--hidden");
  expect_config_error_everywhere(with([](MoEConfig& c) { c.expert_width = -3; }), "--expert-width");
  expect_config_error_everywhere(with([](MoEConfig& c) { c.routed_experts = 0; }), "--experts");
  expect_config_error_everywhere(with([](MoEConfig& c) { c.shared_experts = -1; }),
                                 "--shared-experts");
  expect_config_error_everywhere(with([](MoEConfig& c) { c.n_group = 3; }), "--n-group");
  expect_config_error_everywhere(with([](MoEConfig& c) {
                                   c.n_group = 4;
                                   c.topk_group = 5;
                                 }),
                                 "--topk-group");
  expect_config_error_everywhere(with([](MoEConfig& c) { c.capacity_factor = -1; }),
                                 "--capacity-factor");
  expect_config_error_everywhere(with([](MoEConfig& c) { c.balance = Balance::kAux; }),
                                 "--balance aux");
  expect_config_error_everywhere([] { parse_score_fn("softmx"); }, "--score-fn");
  expect_config_error_everywhere([] { parse_balance("lossfree"); }, "--balance");
  expect_config_error_everywhere([] { parse_bias_update("sgn"); }, "--bias-update");
  expect_config_error_everywhere([] { parse_group_score("mean"); }, "--group-score");
  expect_config_error_everywhere([] { Topology::create(0); }, "--ep-size");
  if (world.size() > 1) {
    // 8 experts cannot split over an EP group that does not divide them.
    MoEConfig c = good();
    c.routed_experts = 2 * world.size() + 1;
    expect_config_error_everywhere([c] { MoELayer layer(c, Comm::world()); }, "--ep-size");
    expect_config_error_everywhere([&] { Topology::create(world.size() + 1); }, "--ep-size");
  }
}

}  // namespace
}  // namespace moerun::testing
