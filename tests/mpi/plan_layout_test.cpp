// `moerun plan`'s gradient-sync payloads against the Model the runtime builds at EP = the world:
// the plan's per-rank dense and routed-expert parameter counts equal the built model's, and the
// flat gradient buffers the sync reduces hold exactly those plus 64-byte alignment gaps.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "jobs/layout_plan.h"
#include "jobs/train_options.h"
#include "layers/model.h"
#include "tests/common/mpi_test.h"

namespace moerun::testing {
namespace {

class PlanLayout : public ::testing::TestWithParam<const char*> {};

TEST_P(PlanLayout, GradSyncPayloadsEqualTheBuiltModel) {
  const Comm world = Comm::world();
  const int W = world.size();
  std::vector<std::string> args = {"train", "--config",
                                   std::string(MOERUN_SOURCE_DIR) + "/jobs/presets/" + GetParam()};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  TrainConfig cfg;
  parse_train_config(static_cast<int>(args.size()), argv.data(), cfg, false);
  Model model(cfg.model, world);  // EP over the whole world
  int64_t dense = 0, expert = 0, tensors = 0;
  for (const NamedParam& p : model.params()) {
    (p.is_expert ? expert : dense) += p.value->numel();
    ++tensors;
  }
  HardwareProfile hw;
  hw.peak_tflops["fp32"] = 1;
  hw.dtype = "fp32";
  hw.memory_gib = hw.mem_bw_gbs = hw.intra_node_gbs = hw.network_gbs = 1;
  Layout l;
  l.nodes = 1;
  l.ranks_per_node = W;
  l.ep_size = W;
  const LayoutPlan p = plan_layout(cfg.model, l, hw);
  bool ok = p.rank_dense_params == dense && p.rank_expert_params == expert &&
            p.bytes.dense_payload == 4.0 * static_cast<double>(dense) &&
            p.bytes.expert_payload == 4.0 * static_cast<double>(expert);
  const int64_t gaps =
      model.dense_grads().numel() + model.expert_grads().numel() - (dense + expert);
  ok = ok && gaps >= 0 && gaps < 16 * tensors;  // at most 15 floats of padding per tensor
  MOERUN_EXPECT_ALL(world, ok) << " plan dense " << p.rank_dense_params << " expert "
                               << p.rank_expert_params << " vs model " << dense << " / " << expert
                               << ", gaps " << gaps;
}

INSTANTIATE_TEST_SUITE_P(Presets, PlanLayout,
                         ::testing::Values("tiny.ini", "tiny-mla.ini", "tiny-mla-v3.ini"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           std::string n = i.param;
                           n = n.substr(0, n.find('.'));
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace moerun::testing
