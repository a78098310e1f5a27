// `moerun plan`'s gradient-sync payloads against the Model the runtime builds at EP = the world:
// the plan's per-rank dense and routed-expert parameter counts equal the built model's, and the
// flat gradient buffers the sync reduces hold exactly those plus 64-byte alignment gaps. GradSync's
// byte counters (comm/grad_sync.h), summed over the ranks, equal the plan's sync bytes for the
// built model's buffers at EP = the world and EP 1, ZeRO 0 and 1, and the rounds of a small
// bucket count their zero padding.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <span>
#include <string>
#include <vector>

#include "comm/grad_sync.h"
#include "jobs/layout_plan.h"
#include "jobs/train_options.h"
#include "layers/model.h"
#include "tests/common/mpi_test.h"

namespace moerun::testing {
namespace {

TrainConfig preset_config(const std::string& preset) {
  std::vector<std::string> args = {"train", "--config",
                                   std::string(MOERUN_SOURCE_DIR) + "/jobs/presets/" + preset};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  TrainConfig cfg;
  parse_train_config(static_cast<int>(args.size()), argv.data(), cfg, false);
  return cfg;
}

HardwareProfile unit_hardware() {
  HardwareProfile hw;
  hw.peak_tflops["fp32"] = 1;
  hw.dtype = "fp32";
  hw.memory_gib = hw.mem_bw_gbs = hw.intra_node_gbs = hw.network_gbs = 1;
  return hw;
}

class PlanLayout : public ::testing::TestWithParam<const char*> {};

TEST_P(PlanLayout, GradSyncPayloadsEqualTheBuiltModel) {
  const Comm world = Comm::world();
  const int W = world.size();
  const TrainConfig cfg = preset_config(GetParam());
  Model model(cfg.model, world);  // EP over the whole world
  int64_t dense = 0, expert = 0, tensors = 0;
  for (const NamedParam& p : model.params()) {
    (p.is_expert ? expert : dense) += p.value->numel();
    ++tensors;
  }
  const HardwareProfile hw = unit_hardware();
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

std::array<int64_t, 6> world_sum(const Comm& world, const SyncBytes& d, const SyncBytes& e) {
  std::array<int64_t, 6> v = {d.allreduce, d.reduce_scatter, d.allgather,
                              e.allreduce, e.reduce_scatter, e.allgather};
  world.allreduce_sum(std::span<int64_t>(v));
  return v;
}

TEST(PlanSync, GradSyncCountsWhatThePlanPredicts) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  const TrainConfig cfg = preset_config("tiny.ini");
  const Comm self = world.split(me, 0);
  for (int ep : {W, 1}) {
    // EP = the world: the expert-DP group is each rank alone; EP 1: the world is expert-DP.
    const Comm& ep_comm = ep == W ? world : self;
    const Comm& edp_comm = ep == W ? self : world;
    Model model(cfg.model, ep_comm);
    for (int zero : {0, 1}) {
      SCOPED_TRACE(::testing::Message() << "EP " << ep << " ZeRO " << zero);
      GradSync dense_sync, expert_sync;
      Tensor dense = model.dense_grads(), expert = model.expert_grads();
      if (zero == 0) {
        dense_sync.allreduce_sum(world, dense);
        expert_sync.allreduce_sum(edp_comm, expert);
      } else {
        Tensor ds = Tensor::empty({flat_shard(dense.numel(), W, me).size});
        Tensor es =
            Tensor::empty({flat_shard(expert.numel(), edp_comm.size(), edp_comm.rank()).size});
        dense_sync.reduce_scatter_sum(world, dense, ds);
        expert_sync.reduce_scatter_sum(edp_comm, expert, es);
        dense_sync.allgather(world, dense);
        expert_sync.allgather(edp_comm, expert);
      }
      const auto got = world_sum(world, dense_sync.bytes(), expert_sync.bytes());
      Layout l;
      l.nodes = 1;
      l.ranks_per_node = W;
      l.ep_size = ep;
      l.zero = zero;
      const StepBytes b = plan_layout(cfg.model, l, unit_hardware()).bytes;
      const std::array<int64_t, 6> want = {
          b.sync_dense.allreduce,  b.sync_dense.reduce_scatter,  b.sync_dense.allgather,
          b.sync_expert.allreduce, b.sync_expert.reduce_scatter, b.sync_expert.allgather};
      EXPECT_EQ(got, want);
      if (W > 1) {
        EXPECT_GT(got[0] + got[1], 0);
      }
    }
  }
}

TEST(PlanSync, GradSyncRoundsCountTheirPadding) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  const int64_t n = 6351;
  for (size_t bucket_bytes : {size_t{4} * 5 * 4, size_t{1} << 20}) {
    GradSync sync(bucket_bytes);
    Tensor grads = Tensor::empty({n}), shard = Tensor::empty({flat_shard(n, W, me).size});
    grads.fill(1.0f);
    sync.reduce_scatter_sum(world, grads, shard);
    sync.allgather(world, grads);
    const int64_t per = (n + W - 1) / W;
    const int64_t share = std::max<int64_t>(1, static_cast<int64_t>(bucket_bytes / 4) / W);
    const int64_t values = W == 1 ? 0 : per > share ? W * per : n;  // rounds pad to W x per
    const bool ok = sync.bytes().reduce_scatter == values * 4 &&
                    sync.bytes().allgather == values * 4 && sync.bytes().allreduce == 0;
    MOERUN_EXPECT_ALL(world, ok) << " bucket " << bucket_bytes << ": "
                                 << sync.bytes().reduce_scatter << " / " << sync.bytes().allgather
                                 << " bytes, want " << values * 4;
  }
}

}  // namespace
}  // namespace moerun::testing
