// Validation and enum parsing for MoEConfig: messages name the command-line option.
#include "layers/moe_config.h"

#include <algorithm>
#include <map>

#include "runtime/check.h"

namespace moerun {

void MoEConfig::validate(int ep_size) const {
  MOERUN_CONFIG_REQUIRE(hidden > 0, "--hidden must be > 0 (got {})", hidden);
  MOERUN_CONFIG_REQUIRE(expert_width > 0, "--expert-width must be > 0 (got {})", expert_width);
  MOERUN_CONFIG_REQUIRE(routed_experts > 0, "--experts must be > 0 (got {})", routed_experts);
  MOERUN_CONFIG_REQUIRE(shared_experts >= 0, "--shared-experts must be >= 0 (got {})",
                        shared_experts);
  MOERUN_CONFIG_REQUIRE(top_k >= 1 && top_k <= routed_experts,
                        "--top-k must be in [1, --experts = {}] (got {})", routed_experts, top_k);
  MOERUN_CONFIG_REQUIRE(ep_size >= 1, "--ep-size must be >= 1 (got {})", ep_size);
  MOERUN_CONFIG_REQUIRE(routed_experts % ep_size == 0,
                        "--experts ({}) must be divisible by --ep-size ({})", routed_experts,
                        ep_size);
  MOERUN_CONFIG_REQUIRE(n_group >= 1, "--n-group must be >= 1 (got {})", n_group);
  MOERUN_CONFIG_REQUIRE(routed_experts % n_group == 0, "--n-group ({}) must divide --experts ({})",
                        n_group, routed_experts);
  MOERUN_CONFIG_REQUIRE(topk_group >= 1 && topk_group <= n_group,
                        "--topk-group must be in [1, --n-group = {}] (got {})", n_group,
                        topk_group);
  MOERUN_CONFIG_REQUIRE(top_k <= topk_group * (routed_experts / n_group),
                        "--top-k ({}) exceeds the experts in the kept groups ({} x {})", top_k,
                        topk_group, routed_experts / n_group);
  MOERUN_CONFIG_REQUIRE(group_score != GroupScore::kTop2Sum || routed_experts / n_group >= 2,
                        "--group-score top2sum needs >= 2 experts per group (have {})",
                        routed_experts / n_group);
  validate_limits(ep_size);
  MOERUN_CONFIG_REQUIRE(routed_scaling_factor > 0, "--routed-scaling-factor must be > 0 (got {})",
                        routed_scaling_factor);
  MOERUN_CONFIG_REQUIRE(capacity_factor == 0.0 || capacity_factor > 0.0,
                        "--capacity-factor must be 0 (dropless) or > 0 (got {})", capacity_factor);
  MOERUN_CONFIG_REQUIRE(bias_update_rate >= 0, "--bias-update-rate must be >= 0 (got {})",
                        bias_update_rate);
  MOERUN_CONFIG_REQUIRE(aux_alpha1 >= 0 && aux_alpha2 >= 0 && aux_seq_alpha >= 0,
                        "--aux-alpha1/--aux-alpha2/--aux-seq-alpha must be >= 0");
  MOERUN_CONFIG_REQUIRE(
      balance != Balance::kAux || aux_alpha1 > 0 || aux_alpha2 > 0 || aux_seq_alpha > 0,
      "--balance aux needs --aux-alpha1, --aux-alpha2 or --aux-seq-alpha > 0 "
      "(the LFB paper's baseline: --aux-alpha1 0.001)");
}

void MoEConfig::validate_limits(int ep_size) const {
  const int64_t M_nodes = max_nodes_per_token, M_devices = max_devices_per_token;
  MOERUN_CONFIG_REQUIRE(M_nodes >= 0, "--max-nodes-per-token must be >= 0 (0 = off; got {})",
                        M_nodes);
  MOERUN_CONFIG_REQUIRE(M_devices >= 0, "--max-devices-per-token must be >= 0 (0 = off; got {})",
                        M_devices);
  if (M_nodes == 0 && M_devices == 0) return;
  const char* option = M_nodes > 0 ? "--max-nodes-per-token" : "--max-devices-per-token";
  MOERUN_CONFIG_REQUIRE(M_nodes == 0 || M_devices == 0,
                        "--max-nodes-per-token ({}) and --max-devices-per-token ({}) cannot be "
                        "set together: limit a token to nodes (V3) or to EP ranks (V2), not both",
                        M_nodes, M_devices);
  MOERUN_CONFIG_REQUIRE(n_group == 1,
                        "{} is group-limited routing whose groups are the {} of the EP group; "
                        "it cannot be combined with --n-group {} (leave --n-group at 1)",
                        option, M_nodes > 0 ? "nodes" : "ranks", n_group);
  const int64_t E_local = routed_experts / ep_size;
  if (M_devices > 0) {
    MOERUN_CONFIG_REQUIRE(M_devices <= ep_size,
                          "--max-devices-per-token ({}) exceeds the EP size ({}): a token can "
                          "only reach the {} ranks of its EP group",
                          M_devices, ep_size, ep_size);
    MOERUN_CONFIG_REQUIRE(top_k <= M_devices * E_local,
                          "--top-k ({}) exceeds the experts on --max-devices-per-token {} "
                          "ranks ({} x {} experts per rank)",
                          top_k, M_devices, M_devices, E_local);
    return;
  }
  if (ep_rank_node.empty()) return;  // the node map comes with the topology; checked then
  MOERUN_REQUIRE(static_cast<int64_t>(ep_rank_node.size()) == ep_size,
                 "the node map has {} entries for an EP group of {} ranks", ep_rank_node.size(),
                 ep_size);
  std::map<int32_t, int64_t> experts_on;  // node -> routed experts it holds
  for (int32_t node : ep_rank_node) experts_on[node] += E_local;
  const int64_t nodes = static_cast<int64_t>(experts_on.size());
  MOERUN_CONFIG_REQUIRE(M_nodes <= nodes,
                        "--max-nodes-per-token ({}) exceeds the {} node(s) that the EP group "
                        "(--ep-size {}) spans; on one machine MOERUN_FAKE_RANKS_PER_NODE fakes "
                        "more",
                        M_nodes, nodes, ep_size);
  std::vector<int64_t> sizes;
  for (const auto& [node, n] : experts_on) sizes.push_back(n);
  std::sort(sizes.begin(), sizes.end());
  int64_t fewest = 0;  // experts on the M smallest nodes: what a token is sure to reach
  for (int64_t i = 0; i < M_nodes; ++i) fewest += sizes[static_cast<size_t>(i)];
  MOERUN_CONFIG_REQUIRE(top_k <= fewest,
                        "--top-k ({}) exceeds the {} experts on the {} smallest node(s) of the "
                        "EP group: raise --max-nodes-per-token",
                        top_k, fewest, M_nodes);
}

namespace {
[[noreturn]] void bad_enum(std::string_view option, std::string_view got,
                           std::string_view allowed) {
  throw ConfigError(fmt::format("{} must be one of {} (got '{}')", option, allowed, got));
}
}  // namespace

ScoreFn parse_score_fn(std::string_view s) {
  if (s == "softmax") return ScoreFn::kSoftmax;
  if (s == "sigmoid") return ScoreFn::kSigmoid;
  bad_enum("--score-fn", s, "softmax|sigmoid");
}
GroupScore parse_group_score(std::string_view s) {
  if (s == "max") return GroupScore::kMax;
  if (s == "top2sum") return GroupScore::kTop2Sum;
  bad_enum("--group-score", s, "max|top2sum");
}
Balance parse_balance(std::string_view s) {
  if (s == "loss-free") return Balance::kLossFree;
  if (s == "aux") return Balance::kAux;
  if (s == "none") return Balance::kNone;
  bad_enum("--balance", s, "loss-free|aux|none");
}
BiasUpdate parse_bias_update(std::string_view s) {
  if (s == "sign") return BiasUpdate::kSign;
  if (s == "proportional") return BiasUpdate::kProportional;
  bad_enum("--bias-update", s, "sign|proportional");
}
TopkNorm parse_topk_norm(std::string_view s) {
  if (s == "none") return TopkNorm::kNone;
  if (s == "normalize") return TopkNorm::kNormalize;
  bad_enum("--topk-norm", s, "none|normalize");
}

std::string to_string(ScoreFn v) {
  return v == ScoreFn::kSoftmax ? "softmax" : "sigmoid";
}
std::string to_string(GroupScore v) {
  return v == GroupScore::kMax ? "max" : "top2sum";
}
std::string to_string(Balance v) {
  return v == Balance::kLossFree ? "loss-free" : v == Balance::kAux ? "aux" : "none";
}
std::string to_string(BiasUpdate v) {
  return v == BiasUpdate::kSign ? "sign" : "proportional";
}
std::string to_string(TopkNorm v) {
  return v == TopkNorm::kNone ? "none" : "normalize";
}

}  // namespace moerun
