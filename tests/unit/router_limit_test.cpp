// Node-limited (V3) and device-limited (V2) routing: the router's selection against an
// independent implementation of the definition on random scores (contiguous, interleaved and
// uneven node maps, ties included), the bound on nodes per token, the equivalence with
// --n-group routing where the two coincide, and the option checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "layers/router.h"
#include "runtime/rng.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

struct Case {
  std::string name;
  int64_t E, K, M;
  std::vector<int32_t> nodes;  // (R) node of each EP rank; empty = device-limited (M ranks)
  ScoreFn score = ScoreFn::kSoftmax;
};

MoEConfig config_of(const Case& k) {
  MoEConfig c;
  c.hidden = 6;
  c.expert_width = 4;
  c.routed_experts = k.E;
  c.top_k = k.K;
  c.score_fn = k.score;
  if (k.nodes.empty()) {
    c.max_devices_per_token = k.M;
  } else {
    c.max_nodes_per_token = k.M;
    c.ep_rank_node = k.nodes;
  }
  return c;
}

int ep_size_of(const Case& k) {
  return k.nodes.empty() ? 8 : static_cast<int>(k.nodes.size());
}

struct Inputs {
  Tensor x, gate, bias;
};

// x (T, H) and gate (E, H) normal; bias uniform in [-0.05, 0.05) (balancing-sized). With
// `ties`, x = 0 and a sigmoid router give every score 0.5 exactly, and the bias takes one of
// four values that add exactly, so node scores and expert scores tie all the time.
Inputs random_inputs(const MoEConfig& c, int64_t T, uint64_t seed, bool ties) {
  Rng rng(seed, 7);
  Inputs in{Tensor::empty({T, c.hidden}), Tensor::empty({c.routed_experts, c.hidden}),
            Tensor::empty({c.routed_experts})};
  for (float& v : in.x.span<float>()) v = ties ? 0.0f : static_cast<float>(rng.normal());
  for (float& v : in.gate.span<float>()) v = static_cast<float>(rng.normal());
  for (float& v : in.bias.span<float>())
    v = ties ? static_cast<float>(rng.next_u64() % 4) / 8.0f
             : static_cast<float>((rng.uniform() - 0.5) * 0.1);
  return in;
}

// The definition, written independently of the router: rank the nodes (or EP ranks) by the
// sum of their n highest biased scores (n = ceil(K/M) for nodes, 1 for devices), keep the M
// best (ties: the node whose first expert comes first), then the K best experts on them
// (ties: lower expert). Returns the experts best first.
std::vector<int32_t> reference_selection(const Case& k, const std::vector<float>& biased) {
  const int64_t E = k.E, R = ep_size_of(k), E_local = E / R;
  std::map<int64_t, std::vector<int64_t>> experts_of;  // node -> its experts
  for (int64_t e = 0; e < E; ++e)
    experts_of[k.nodes.empty() ? e / E_local : k.nodes[static_cast<size_t>(e / E_local)]].push_back(
        e);
  const int64_t n = k.nodes.empty() ? 1 : (k.K + k.M - 1) / k.M;
  struct Node {
    double score;
    int64_t first_expert, id;
  };
  std::vector<Node> ranked;
  for (const auto& [id, ex] : experts_of) {
    std::vector<double> v;
    for (int64_t e : ex) v.push_back(biased[static_cast<size_t>(e)]);
    std::sort(v.rbegin(), v.rend());
    const double s = std::accumulate(v.begin(), v.begin() + std::min<int64_t>(n, ex.size()), 0.0);
    ranked.push_back({s, ex.front(), id});
  }
  std::sort(ranked.begin(), ranked.end(), [](const Node& a, const Node& b) {
    return a.score != b.score ? a.score > b.score : a.first_expert < b.first_expert;
  });
  std::vector<int64_t> allowed;
  for (int64_t j = 0; j < k.M; ++j)
    for (int64_t e : experts_of[ranked[static_cast<size_t>(j)].id]) allowed.push_back(e);
  std::sort(allowed.begin(), allowed.end(), [&](int64_t a, int64_t b) {
    const float va = biased[static_cast<size_t>(a)], vb = biased[static_cast<size_t>(b)];
    return va != vb ? va > vb : a < b;
  });
  return std::vector<int32_t>(allowed.begin(), allowed.begin() + k.K);
}

void check_case(const Case& k, bool ties) {
  const MoEConfig cfg = config_of(k);
  const int R = ep_size_of(k);
  ASSERT_NO_THROW(cfg.validate(R));
  const TestSeed seed(0x40de + std::hash<std::string>{}(k.name) % 1000 + (ties ? 1 : 0));
  const int64_t T = 200, E = k.E, K = k.K, E_local = E / R;
  const Inputs in = random_inputs(cfg, T, seed, ties);
  const RouterOutput out = cpu::router_forward(cfg, R, in.x, in.gate, in.bias, 0);
  const float* s = out.scores.f32();
  const float* b = in.bias.f32();
  const int32_t* idx = out.topk_idx.data<int32_t>();
  const float* w = out.topk_weight.f32();
  int64_t mismatches = 0, over = 0, most_nodes = 0;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> biased(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) biased[static_cast<size_t>(e)] = s[t * E + e] + b[e];
    const std::vector<int32_t> want = reference_selection(k, biased);
    const std::vector<int32_t> got(idx + t * K, idx + (t + 1) * K);
    if (got != want && ++mismatches <= 3)
      ADD_FAILURE() << k.name << " token " << t << ": router chose "
                    << ::testing::PrintToString(got) << ", the definition "
                    << ::testing::PrintToString(want);
    std::set<int64_t> used;  // the nodes (or ranks) this token's experts live on
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = got[static_cast<size_t>(j)];
      used.insert(k.nodes.empty() ? e / E_local : k.nodes[static_cast<size_t>(e / E_local)]);
      EXPECT_EQ(w[t * K + j], s[t * E + e]) << "gate weight = unbiased score";
    }
    most_nodes = std::max<int64_t>(most_nodes, static_cast<int64_t>(used.size()));
    over += static_cast<int64_t>(used.size()) > k.M;
  }
  EXPECT_EQ(mismatches, 0) << k.name << (ties ? " (ties)" : "");
  EXPECT_EQ(over, 0) << k.name << ": tokens whose experts span more than M = " << k.M;
  EXPECT_LE(most_nodes, k.M);
}

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      // V3's shape in miniature: 8 nodes of one rank each, K 8, M 4 (top-2 sums).
      {"v3_like_8_nodes", 64, 8, 4, {0, 1, 2, 3, 4, 5, 6, 7}},
      {"2_nodes_of_2_ranks_M1", 16, 4, 1, {0, 0, 1, 1}},
      {"4_nodes_of_2_ranks_M2", 32, 6, 2, {3, 3, 1, 1, 0, 0, 2, 2}},
      // A node's ranks interleaved in the EP group (round-robin placement): not contiguous.
      {"interleaved_3_nodes_M2", 24, 6, 2, {0, 1, 2, 0, 1, 2}},
      // Uneven nodes (3 ranks and 1): K must fit on the smallest node.
      {"uneven_nodes_M1", 12, 3, 1, {5, 5, 5, 9}},
      {"K_not_multiple_of_M", 32, 6, 4, {0, 1, 2, 3, 4, 5, 6, 7}},
      {"M_equals_nodes", 16, 4, 2, {0, 0, 1, 1}},
      {"sigmoid_4_nodes_M3", 32, 8, 3, {0, 1, 2, 3}, ScoreFn::kSigmoid},
      // Device-limited (V2): 8 EP ranks, M 3, K 6 as in V2.
      {"devices_8_ranks_M3", 32, 6, 3, {}},
      {"devices_8_ranks_M1", 32, 4, 1, {}},
  };
  return c;
}

TEST(RouterLimit, SelectionEqualsTheDefinitionOnRandomScores) {
  for (const Case& k : cases()) check_case(k, /*ties=*/false);
}

TEST(RouterLimit, TiesAreBrokenByLowerNodeThenLowerExpert) {
  for (const Case& k : cases()) {
    Case s = k;
    s.score = ScoreFn::kSigmoid;
    check_case(s, /*ties=*/true);
  }
}

std::vector<int32_t> route(const MoEConfig& c, int R, const Inputs& in) {
  const RouterOutput out = cpu::router_forward(c, R, in.x, in.gate, in.bias, 0);
  const int32_t* v = out.topk_idx.data<int32_t>();
  return {v, v + out.topk_idx.numel()};
}

// Where the node limit and --n-group describe the same groups they must route alike: nodes of
// consecutive ranks with K/M = 2 are V3's noaux_tc (top2sum), devices are V2's max.
TEST(RouterLimit, CoincidesWithGroupRoutingOnContiguousNodes) {
  const TestSeed seed(0x9a0);
  MoEConfig nodes;
  nodes.hidden = 6;
  nodes.expert_width = 4;
  nodes.routed_experts = 32;
  nodes.top_k = 4;
  nodes.max_nodes_per_token = 2;
  nodes.ep_rank_node = {0, 0, 1, 1, 2, 2, 3, 3};
  const Inputs in = random_inputs(nodes, 300, seed, false);
  MoEConfig grouped = nodes;
  grouped.max_nodes_per_token = 0;
  grouped.n_group = 4;
  grouped.topk_group = 2;
  grouped.group_score = GroupScore::kTop2Sum;
  EXPECT_EQ(route(nodes, 8, in), route(grouped, 8, in));

  MoEConfig devices = grouped;
  devices.n_group = 1;
  devices.topk_group = 1;
  devices.max_devices_per_token = 3;
  grouped.n_group = 8;
  grouped.topk_group = 3;
  grouped.group_score = GroupScore::kMax;
  EXPECT_EQ(route(devices, 8, in), route(grouped, 8, in));

  // M = all nodes limits nothing: the plain top-K.
  MoEConfig all = nodes, plain = nodes;
  all.max_nodes_per_token = 4;
  plain.max_nodes_per_token = 0;
  EXPECT_EQ(route(all, 8, in), route(plain, 8, in));
}

void expect_config_error(const MoEConfig& c, int R, const std::vector<std::string>& pieces) {
  try {
    c.validate(R);
    ADD_FAILURE() << "no ConfigError for " << pieces.front();
  } catch (const ConfigError& e) {
    for (const std::string& p : pieces)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message lacks '" << p << "': " << e.what();
  }
}

TEST(RouterLimit, BadOptionsAreConfigErrorsNamingTheOption) {
  MoEConfig c;
  c.hidden = 6;
  c.expert_width = 4;
  c.routed_experts = 16;
  c.top_k = 4;
  c.ep_rank_node = {0, 0, 1, 1};
  MoEConfig bad = c;
  bad.max_nodes_per_token = 3;
  expect_config_error(bad, 4, {"--max-nodes-per-token (3)", "2 node(s)"});
  bad.max_nodes_per_token = -1;
  expect_config_error(bad, 4, {"--max-nodes-per-token must be >= 0"});
  bad = c;
  bad.max_nodes_per_token = 1;
  bad.max_devices_per_token = 2;
  expect_config_error(bad, 4, {"--max-nodes-per-token (1) and --max-devices-per-token (2)"});
  bad = c;
  bad.max_nodes_per_token = 1;
  bad.n_group = 4;
  bad.topk_group = 2;
  expect_config_error(bad, 4, {"--max-nodes-per-token", "--n-group 4"});
  bad = c;
  bad.max_devices_per_token = 5;
  expect_config_error(bad, 4, {"--max-devices-per-token (5)", "EP size (4)"});
  bad = c;
  bad.top_k = 6;
  bad.max_devices_per_token = 1;
  expect_config_error(bad, 4, {"--top-k (6)", "--max-devices-per-token 1"});
  bad = c;
  bad.ep_rank_node = {0, 0, 0, 1};
  bad.top_k = 5;
  bad.max_nodes_per_token = 1;
  expect_config_error(bad, 4, {"--top-k (5)", "4 experts", "--max-nodes-per-token"});
  // Without the node map (before the topology exists) the node checks wait; the router needs it.
  MoEConfig no_map = c;
  no_map.ep_rank_node.clear();
  no_map.max_nodes_per_token = 3;
  EXPECT_NO_THROW(no_map.validate(4));
  EXPECT_THROW(expert_groups(no_map, 4), Error);
  // Off (the default) checks nothing new and builds the --n-group groups.
  EXPECT_NO_THROW(c.validate(4));
  EXPECT_FALSE(expert_groups(c, 4).limits());
}

}  // namespace
}  // namespace moerun::testing
