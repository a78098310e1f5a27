// Node-limited routing on the topology's node map (faked with MOERUN_FAKE_RANKS_PER_NODE): for
// every EP size and every M, each token's experts lie on <= M nodes, so it reaches at most
// min(M, nodes - 1) nodes other than its own; the dispatcher's inter-node byte counters equal
// exactly what the routing predicts; M above the node count is a ConfigError on every rank.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "comm/topology.h"
#include "jobs/moe_options.h"
#include "layers/moe.h"
#include "runtime/rng.h"
#include "tests/common/mpi_test.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

Topology fake_topology(int ep, int ranks_per_node) {
  ::setenv("MOERUN_FAKE_RANKS_PER_NODE", std::to_string(ranks_per_node).c_str(), 1);
  Topology t = Topology::create(ep);
  ::unsetenv("MOERUN_FAKE_RANKS_PER_NODE");
  return t;
}

MoEConfig small_moe(int64_t max_nodes) {
  MoEConfig c;
  c.hidden = 8;
  c.expert_width = 4;
  c.routed_experts = 16;
  c.top_k = 4;
  c.max_nodes_per_token = max_nodes;
  return c;
}

struct Traffic {
  int64_t inter_rows = 0;    // predicted: dispatch rows from this rank to other nodes
  int64_t inter_bytes = 0;   // counted by the dispatcher (all four exchanges)
  bool within_limit = true;  // every token: <= M nodes, <= min(M, N-1) other nodes
};

Traffic run_layer(const MoEConfig& cfg, const Topology& topo, uint64_t seed) {
  const int me = topo.world_rank(), R = topo.ep_size, first = me - me % R;
  const int64_t T = 24, H = cfg.hidden, K = cfg.top_k, E_local = cfg.routed_experts / R;
  MoELayer layer(cfg, topo.ep);
  layer.init(seed, 0.5f);
  Rng brng(seed, 3);  // the same bias on every rank, as loss-free balancing keeps it
  for (float& v : layer.params().bias.span<float>())
    v = static_cast<float>((brng.uniform() - 0.5) * 0.02);
  Tensor x = Tensor::empty({T, H}), dy = Tensor::empty({T, H});
  Rng rng(seed, 100 + static_cast<uint64_t>(me));
  for (float& v : x.span<float>()) v = static_cast<float>(rng.normal());
  for (float& v : dy.span<float>()) v = static_cast<float>(rng.normal());
  layer.forward(x);
  layer.backward(dy);

  std::set<std::string> ep_nodes;
  for (int r = 0; r < R; ++r) ep_nodes.insert(topo.hosts[static_cast<size_t>(first + r)]);
  const int64_t N = static_cast<int64_t>(ep_nodes.size());
  const int64_t M = cfg.max_nodes_per_token > 0 ? cfg.max_nodes_per_token : N;
  const std::string& mine = topo.hosts[static_cast<size_t>(me)];
  Traffic tr;
  const int32_t* idx = layer.routing().topk_idx.data<int32_t>();
  for (int64_t t = 0; t < T; ++t) {
    std::set<int> ranks;
    std::set<std::string> nodes, remote;
    for (int64_t k = 0; k < K; ++k) {
      const int r = static_cast<int>(idx[t * K + k] / E_local);
      const std::string& host = topo.hosts[static_cast<size_t>(first + r)];
      ranks.insert(r);
      nodes.insert(host);
      if (host != mine) remote.insert(host);
    }
    for (int r : ranks) tr.inter_rows += topo.hosts[static_cast<size_t>(first + r)] != mine;
    tr.within_limit = tr.within_limit && static_cast<int64_t>(nodes.size()) <= M &&
                      static_cast<int64_t>(remote.size()) <= std::min(M, N - 1);
  }
  const auto& b = layer.dispatcher().times().bytes_to_rank;
  for (size_t r = 0; r < b.size(); ++r)
    if (topo.hosts[static_cast<size_t>(first) + r] != mine) tr.inter_bytes += b[r];
  return tr;
}

TEST(NodeLimit, TokensReachAtMostMNodesAndTheCountersAgree) {
  const Comm world = Comm::world();
  const int W = world.size();
  const TestSeed seed(0x70de);
  for (int k : {1, 2}) {
    for (int ep = 1; ep <= W; ++ep) {
      if (W % ep != 0) continue;
      Topology topo = fake_topology(ep, k);
      const std::vector<int32_t> map = ep_rank_nodes(topo, world.rank() / ep);
      const int64_t N = *std::max_element(map.begin(), map.end()) + 1;  // the same in every group
      int64_t unlimited_rows = 0;
      for (int64_t M = 0; M <= N; ++M) {
        MoEConfig cfg = small_moe(M);
        set_node_map(cfg, topo);
        const Traffic tr = run_layer(cfg, topo, seed + static_cast<uint64_t>(ep));
        std::vector<int64_t> sums = {tr.inter_rows, tr.inter_bytes};
        world.allreduce_sum(std::span<int64_t>(sums));
        const std::string where = fmt::format("ranks per node {}, EP {}, M {}", k, ep, M);
        MOERUN_EXPECT_ALL(world, tr.within_limit) << ": " << where;
        // Each inter-node row crosses four times: dispatch, combine and their backward.
        EXPECT_EQ(sums[1], 4 * sums[0] * cfg.hidden * static_cast<int64_t>(sizeof(float))) << where;
        if (M == 0) unlimited_rows = sums[0];
        // With one rank per node and M = 1 a token sends at most one row off its node; without
        // the limit it sends one to every other rank holding one of its K = 4 experts.
        if (M == 1 && N > 1 && k == 1) {
          EXPECT_LT(sums[0], unlimited_rows) << where;
        }
        if (N == 1) {
          EXPECT_EQ(sums[0], 0) << where << ": one node moves nothing between nodes";
        }
      }
      expect_config_error_everywhere(
          [&] {
            MoEConfig cfg = small_moe(N + 1);
            set_node_map(cfg, topo);
          },
          {"--max-nodes-per-token (" + std::to_string(N + 1) + ")",
           std::to_string(N) + " node(s)"});
    }
  }
}

}  // namespace
}  // namespace moerun::testing
