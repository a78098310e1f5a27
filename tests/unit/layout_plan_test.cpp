// `moerun plan`'s arithmetic (jobs/layout_plan.h): parameter counts of the presets equal the Model
// the runtime builds, the uniform-routing rows per token equal a brute-force enumeration (with
// and without node-limited routing), and recomputation lowers the activation estimate.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "jobs/layout_plan.h"
#include "jobs/train_options.h"
#include "layers/model.h"
#include "runtime/check.h"

namespace moerun {
namespace {

ModelConfig preset(const std::string& name, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"train", "--config",
                                   std::string(MOERUN_SOURCE_DIR) + "/jobs/presets/" + name};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  TrainConfig cfg;
  parse_train_config(static_cast<int>(args.size()), argv.data(), cfg, false);
  return cfg.model;
}

HardwareProfile test_hardware() {
  HardwareProfile h;
  h.name = "test";
  h.memory_gib = 64;
  h.peak_tflops["fp32"] = 1;
  h.dtype = "fp32";
  h.mem_bw_gbs = h.intra_node_gbs = h.network_gbs = 1;
  return h;
}

TEST(LayoutPlan, PresetParamsEqualTheBuiltModel) {
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  for (const char* name : {"tiny.ini", "small.ini", "tiny-mla.ini", "tiny-mla-v3.ini"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = preset(name);
    Model model(c, self);
    int64_t total = 0, experts = 0;
    for (const NamedParam& p : model.params()) {
      total += p.value->numel();
      if (p.is_expert) experts += p.value->numel();
    }
    Layout l;
    const LayoutPlan p = plan_layout(c, l, test_hardware());
    EXPECT_EQ(p.params.total, total);
    EXPECT_EQ(p.rank_expert_params, experts);
    EXPECT_EQ(p.rank_dense_params, total - experts);
  }
}

// A token on world rank 0: every way to pick its K experts (and, node-limited, its M nodes),
// equally likely; the average number of other ranks it reaches inside / outside its node.
void brute_force_rows(const ModelConfig& c, const Layout& l, double& intra, double& inter,
                      double& other_nodes) {
  const int R = l.ep_size, rpn = l.ranks_per_node, G = std::max(1, R / rpn);
  const int64_t E = c.moe.routed_experts, K = c.moe.top_k, per_rank = E / R;
  const int M = l.max_nodes_per_token > 0 ? std::min(l.max_nodes_per_token, G) : G;
  double sum_intra = 0, sum_inter = 0, sum_nodes = 0, cases = 0;
  for (int nodes = 0; nodes < (1 << G); ++nodes) {
    if (__builtin_popcount(static_cast<unsigned>(nodes)) != M) continue;
    std::vector<int64_t> pool;
    for (int64_t e = 0; e < E; ++e)
      if (nodes >> ((e / per_rank) / rpn) & 1) pool.push_back(e);
    const int n = static_cast<int>(pool.size());
    for (int mask = 0; mask < (1 << n); ++mask) {
      if (__builtin_popcount(static_cast<unsigned>(mask)) != K) continue;
      std::set<int64_t> ranks, reached_nodes;
      for (int i = 0; i < n; ++i)
        if (mask >> i & 1) ranks.insert(pool[static_cast<size_t>(i)] / per_rank);
      for (int64_t r : ranks)
        if (r / rpn != 0) reached_nodes.insert(r / rpn);
      sum_nodes += static_cast<double>(reached_nodes.size());
      for (int64_t r : ranks) {
        if (r == 0) continue;
        (r / rpn == 0 ? sum_intra : sum_inter) += 1;
      }
      cases += 1;
    }
  }
  intra = sum_intra / cases;
  inter = sum_inter / cases;
  other_nodes = sum_nodes / cases;
}

TEST(LayoutPlan, RowsPerTokenEqualBruteForce) {
  for (int k : {1, 3, 8}) {
    for (int m : {0, 1, 2}) {
      if (m > 0 && k > 4 * m) continue;  // M nodes hold 4 M experts
      SCOPED_TRACE(::testing::Message() << "top-k " << k << " M " << m);
      const ModelConfig c = preset("tiny.ini", {"--experts", "12", "--top-k", std::to_string(k)});
      Layout l;
      l.nodes = 3;
      l.ranks_per_node = 2;
      l.ep_size = 6;  // 3 nodes of 2 ranks, 2 experts per rank
      l.max_nodes_per_token = m;
      const LayoutPlan p = plan_layout(c, l, test_hardware());
      double intra = 0, inter = 0, other_nodes = 0;
      brute_force_rows(c, l, intra, inter, other_nodes);
      EXPECT_NEAR(p.bytes.nodes_per_token_inter, other_nodes, 1e-12);
      EXPECT_NEAR(p.bytes.rows_per_token_intra, intra, 1e-12);
      EXPECT_NEAR(p.bytes.rows_per_token_inter, inter, 1e-12);
    }
  }
}

TEST(LayoutPlan, RecomputeLowersActivationsAndFullAddsAnExchange) {
  int64_t prev = 0;
  for (const char* mode : {"none", "moe", "full"}) {
    SCOPED_TRACE(mode);
    const ModelConfig c = preset("small.ini", {"--recompute", mode});
    Layout l;
    l.nodes = 2;
    l.ranks_per_node = 2;
    l.ep_size = 4;
    const LayoutPlan p = plan_layout(c, l, test_hardware());
    if (prev > 0) {
      EXPECT_LT(p.memory.activations_bytes, prev);
    }
    prev = p.memory.activations_bytes;
    EXPECT_EQ(p.bytes.exchanges_per_layer, std::string(mode) == "full" ? 5 : 4);
  }
}

TEST(LayoutPlan, BadLayoutsNameTheOption) {
  const ModelConfig c = preset("tiny.ini");  // 16 experts
  Layout l;
  l.nodes = 2;
  l.ranks_per_node = 3;
  l.ep_size = 3;
  EXPECT_THROW(validate_layout(c, l), ConfigError);  // 3 does not divide 16
  l.ranks_per_node = 4;
  l.ep_size = 16;
  EXPECT_THROW(validate_layout(c, l), ConfigError);  // 16 does not divide the world of 8
  l.ep_size = 8;
  l.max_nodes_per_token = 3;
  EXPECT_THROW(validate_layout(c, l), ConfigError);  // M > nodes
  l.max_nodes_per_token = 2;
  EXPECT_NO_THROW(validate_layout(c, l));
}

}  // namespace
}  // namespace moerun
