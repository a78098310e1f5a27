// `moerun plan`'s arithmetic (jobs/layout_plan.h): parameter counts of the presets equal the Model
// the runtime builds, the uniform-routing rows per token equal a brute-force enumeration (with
// and without node-limited or device-limited routing) and the per-token bounds equal the most any
// enumerated case sends, recomputation lowers the activation estimate, and the gradient-sync
// bytes follow comm/grad_sync.h's convention.
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

// A token on world rank 0: every way to pick its K experts (and, node-limited, its M nodes;
// device-limited, its M ranks), equally likely; the average number of other ranks it reaches
// inside / outside its node, and the most of either that one case reaches.
struct BruteRows {
  double intra = 0, inter = 0, other_nodes = 0;
  int max_intra = 0, max_inter = 0;
};
BruteRows brute_force_rows(const ModelConfig& c, const Layout& l) {
  const int R = l.ep_size, rpn = l.ranks_per_node, G = std::max(1, R / rpn);
  const int64_t E = c.moe.routed_experts, K = c.moe.top_k, per_rank = E / R;
  const bool devices = l.max_devices_per_token > 0;
  const int groups = devices ? R : G;  // what the limit picks from: ranks or nodes
  const int M = devices                     ? l.max_devices_per_token
                : l.max_nodes_per_token > 0 ? std::min(l.max_nodes_per_token, G)
                                            : G;
  BruteRows out;
  double sum_intra = 0, sum_inter = 0, sum_nodes = 0, cases = 0;
  for (int chosen = 0; chosen < (1 << groups); ++chosen) {
    if (__builtin_popcount(static_cast<unsigned>(chosen)) != M) continue;
    std::vector<int64_t> pool;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t rank = e / per_rank;
      if (chosen >> (devices ? rank : rank / rpn) & 1) pool.push_back(e);
    }
    const int n = static_cast<int>(pool.size());
    for (int mask = 0; mask < (1 << n); ++mask) {
      if (__builtin_popcount(static_cast<unsigned>(mask)) != K) continue;
      std::set<int64_t> ranks, reached_nodes;
      for (int i = 0; i < n; ++i)
        if (mask >> i & 1) ranks.insert(pool[static_cast<size_t>(i)] / per_rank);
      for (int64_t r : ranks)
        if (r / rpn != 0) reached_nodes.insert(r / rpn);
      sum_nodes += static_cast<double>(reached_nodes.size());
      int in = 0, out_of = 0;
      for (int64_t r : ranks) {
        if (r == 0) continue;
        ++(r / rpn == 0 ? in : out_of);
      }
      sum_intra += in;
      sum_inter += out_of;
      out.max_intra = std::max(out.max_intra, in);
      out.max_inter = std::max(out.max_inter, out_of);
      cases += 1;
    }
  }
  out.intra = sum_intra / cases;
  out.inter = sum_inter / cases;
  out.other_nodes = sum_nodes / cases;
  return out;
}

TEST(LayoutPlan, RowsPerTokenEqualBruteForce) {
  for (bool devices : {false, true}) {
    for (int k : {1, 3, 8}) {
      for (int m : {0, 1, 2, 4}) {
        if (!devices && m > 3) continue;                   // 3 nodes
        if (m > 0 && k > (devices ? 2 : 4) * m) continue;  // M nodes (ranks) hold 4 M (2 M)
        if (devices && m == 0) continue;                   // the same as nodes, m = 0
        SCOPED_TRACE(::testing::Message()
                     << "top-k " << k << (devices ? " devices " : " nodes ") << m);
        const ModelConfig c = preset("tiny.ini", {"--experts", "12", "--top-k", std::to_string(k)});
        Layout l;
        l.nodes = 3;
        l.ranks_per_node = 2;
        l.ep_size = 6;  // 3 nodes of 2 ranks, 2 experts per rank
        (devices ? l.max_devices_per_token : l.max_nodes_per_token) = m;
        const LayoutPlan p = plan_layout(c, l, test_hardware());
        const BruteRows want = brute_force_rows(c, l);
        EXPECT_NEAR(p.bytes.nodes_per_token_inter, want.other_nodes, 1e-12);
        EXPECT_NEAR(p.bytes.rows_per_token_intra, want.intra, 1e-12);
        EXPECT_NEAR(p.bytes.rows_per_token_inter, want.inter, 1e-12);
        // The bounds are the most one token can send: reached by some choice of experts.
        EXPECT_EQ(p.bytes.rows_per_token_intra_bound, want.max_intra);
        EXPECT_EQ(p.bytes.rows_per_token_inter_bound, want.max_inter);
        EXPECT_DOUBLE_EQ(p.bytes.a2a_inter_bound, p.bytes.row_exchanges *
                                                      p.bytes.rows_per_token_inter_bound *
                                                      static_cast<double>(p.bytes.row_bytes));
      }
    }
  }
}

// comm/grad_sync.h's convention: each call counts the whole region on every rank of a group of
// more than one rank; ZeRO-1's calls pad the shards when they go in rounds (small's dense region
// of ~11M floats exceeds a 32 MiB bucket).
TEST(LayoutPlan, SyncBytesFollowTheGradSyncConvention) {
  for (const char* name : {"tiny.ini", "small.ini"}) {
    const ModelConfig c = preset(name);
    for (int ep : {1, 2, 4})
      for (int zero : {0, 1}) {
        SCOPED_TRACE(::testing::Message() << name << " EP " << ep << " ZeRO " << zero);
        Layout l;
        l.nodes = 2;
        l.ranks_per_node = 2;
        l.ep_size = ep;
        l.zero = zero;
        const LayoutPlan p = plan_layout(c, l, test_hardware());
        const int64_t W = 4, edp = W / ep;
        const int64_t nd = p.rank_dense_params, ne = p.rank_expert_params;
        const int64_t bucket = static_cast<int64_t>(GradSync::kDefaultBucketBytes / 4);
        auto rounds = [&](int64_t n, int64_t parts) {
          const int64_t shard = (n + parts - 1) / parts;
          return shard > bucket / parts ? parts * shard : n;
        };
        const StepBytes& b = p.bytes;
        if (zero == 0) {
          EXPECT_EQ(b.sync_dense.allreduce, W * nd * 4);
          EXPECT_EQ(b.sync_expert.allreduce, edp > 1 ? W * ne * 4 : 0);
          EXPECT_EQ(b.sync_dense.reduce_scatter + b.sync_dense.allgather +
                        b.sync_expert.reduce_scatter + b.sync_expert.allgather,
                    0);
        } else {
          EXPECT_EQ(b.sync_dense.reduce_scatter, W * rounds(nd, W) * 4);
          EXPECT_EQ(b.sync_dense.allgather, b.sync_dense.reduce_scatter);
          EXPECT_EQ(b.sync_expert.reduce_scatter, edp > 1 ? W * rounds(ne, edp) * 4 : 0);
          EXPECT_EQ(b.sync_expert.allgather, b.sync_expert.reduce_scatter);
          EXPECT_EQ(b.sync_dense.allreduce + b.sync_expert.allreduce, 0);
        }
      }
  }
  const LayoutPlan one = plan_layout(preset("tiny.ini"), Layout{}, test_hardware());
  EXPECT_EQ(one.bytes.sync_dense.allreduce + one.bytes.sync_expert.allreduce, 0);  // one rank
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
  auto expect_error = [](const ModelConfig& m, const Layout& bad, const std::string& needle) {
    try {
      validate_layout(m, bad);
      ADD_FAILURE() << "no error, wanted " << needle;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Layout d = l;  // 2 nodes x 4 ranks, EP 8: 2 experts per rank
  d.max_nodes_per_token = 0;
  d.max_devices_per_token = 9;
  expect_error(c, d, "--max-devices-per-token 9 must be between 1 and --ep-size 8");
  d.max_devices_per_token = -1;
  expect_error(c, d, "--max-devices-per-token -1 must be between");
  d.max_devices_per_token = 1;
  expect_error(preset("tiny.ini", {"--top-k", "3"}), d,
               "--max-devices-per-token 1: the 2 experts on 1 rank(s) cannot hold top-k 3");
  expect_error(preset("tiny.ini", {"--n-group", "2", "--topk-group", "1"}), d,
               "--max-devices-per-token is group-limited routing by EP ranks; it cannot be "
               "combined with --n-group 2");
  d.max_nodes_per_token = 1;
  expect_error(c, d,
               "--max-nodes-per-token 1 and --max-devices-per-token 1 cannot be set together");
  d.max_nodes_per_token = 0;
  EXPECT_NO_THROW(validate_layout(c, d));  // top-k 2 fits on one rank's 2 experts
}

}  // namespace
}  // namespace moerun
