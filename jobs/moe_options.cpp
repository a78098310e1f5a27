// Option table for MoEConfig.
#include "jobs/moe_options.h"

#include <fmt/format.h>

#include <map>
#include <string>

#include "runtime/check.h"

namespace moerun {

namespace po = boost::program_options;

void add_moe_options(po::options_description& desc, const MoEConfig& d) {
  desc.add_options()("hidden", po::value<int64_t>()->default_value(d.hidden), "hidden size H")(
      "expert-width", po::value<int64_t>()->default_value(d.expert_width),
      "routed expert SwiGLU width F")("experts",
                                      po::value<int64_t>()->default_value(d.routed_experts),
                                      "routed experts E (divisible by --ep-size)")(
      "shared-experts", po::value<int64_t>()->default_value(d.shared_experts),
      "shared experts S (one SwiGLU of width S*F; 0 = none)")(
      "top-k", po::value<int64_t>()->default_value(d.top_k), "routed experts per token K")(
      "score-fn", po::value<std::string>()->default_value(to_string(d.score_fn)),
      "router score function: softmax|sigmoid")(
      "topk-norm", po::value<std::string>()->default_value(to_string(d.topk_norm)),
      "normalise the K gate weights: none|normalize")(
      "routed-scaling-factor", po::value<double>()->default_value(d.routed_scaling_factor),
      "multiplies the gate weights (V3: 2.5)")(
      "n-group", po::value<int64_t>()->default_value(d.n_group),
      "expert groups for group-limited routing (1 = off; EP size = device-limited)")(
      "topk-group", po::value<int64_t>()->default_value(d.topk_group), "groups kept per token")(
      "group-score", po::value<std::string>()->default_value(to_string(d.group_score)),
      "group score: max (V2) | top2sum (V3)")(
      "max-nodes-per-token", po::value<int64_t>()->default_value(d.max_nodes_per_token),
      "node-limited routing (DeepSeek-V3): each token's routed experts lie on at most M nodes, "
      "so its hidden state crosses the network to at most M nodes (fewer if one is its own). "
      "The nodes are ranked by the sum of their ceil(K/M) highest biased scores; the node "
      "map is the run's hosts (MOERUN_FAKE_RANKS_PER_NODE fakes one). 0 = off; M <= the "
      "nodes the EP group spans; not with --n-group (V3: M 4 of 8 nodes, K 8)")(
      "max-devices-per-token", po::value<int64_t>()->default_value(d.max_devices_per_token),
      "device-limited routing (DeepSeek-V2): each token's routed experts lie on at most M EP "
      "ranks, ranked by their highest biased score. 0 = off; M <= --ep-size; not with "
      "--n-group or --max-nodes-per-token (V2: M 3 of 8 devices, K 6)")(
      "capacity-factor", po::value<double>()->default_value(d.capacity_factor),
      "0 = dropless; else per-expert capacity = ceil(T*K/E * factor)")(
      "balance", po::value<std::string>()->default_value(to_string(d.balance)),
      "load balancing: loss-free|aux|none")(
      "bias-update", po::value<std::string>()->default_value(to_string(d.bias_update)),
      "loss-free bias rule: sign|proportional")(
      "bias-update-rate", po::value<double>()->default_value(d.bias_update_rate),
      "loss-free bias update rate u")(
      "aux-alpha1", po::value<double>()->default_value(d.aux_alpha1),
      "expert-level balance loss weight (used with --balance aux; 0 = off)")(
      "aux-alpha2", po::value<double>()->default_value(d.aux_alpha2),
      "device-level balance loss weight (devices = EP ranks)")(
      "aux-seq-alpha", po::value<double>()->default_value(d.aux_seq_alpha),
      "sequence-wise balance loss weight (V3)");
}

MoEConfig moe_config_from(const po::variables_map& vm) {
  MoEConfig c;
  c.hidden = vm["hidden"].as<int64_t>();
  c.expert_width = vm["expert-width"].as<int64_t>();
  c.routed_experts = vm["experts"].as<int64_t>();
  c.shared_experts = vm["shared-experts"].as<int64_t>();
  c.top_k = vm["top-k"].as<int64_t>();
  c.score_fn = parse_score_fn(vm["score-fn"].as<std::string>());
  c.topk_norm = parse_topk_norm(vm["topk-norm"].as<std::string>());
  c.routed_scaling_factor = vm["routed-scaling-factor"].as<double>();
  c.n_group = vm["n-group"].as<int64_t>();
  c.topk_group = vm["topk-group"].as<int64_t>();
  c.group_score = parse_group_score(vm["group-score"].as<std::string>());
  c.max_nodes_per_token = vm["max-nodes-per-token"].as<int64_t>();
  c.max_devices_per_token = vm["max-devices-per-token"].as<int64_t>();
  c.capacity_factor = vm["capacity-factor"].as<double>();
  c.balance = parse_balance(vm["balance"].as<std::string>());
  c.bias_update = parse_bias_update(vm["bias-update"].as<std::string>());
  c.bias_update_rate = vm["bias-update-rate"].as<double>();
  c.aux_alpha1 = vm["aux-alpha1"].as<double>();
  c.aux_alpha2 = vm["aux-alpha2"].as<double>();
  c.aux_seq_alpha = vm["aux-seq-alpha"].as<double>();
  return c;
}

std::vector<int32_t> ep_rank_nodes(const Topology& topo, int ep_group) {
  const int R = topo.ep_size;
  std::map<std::string, int32_t> id;  // host -> node, numbered as first seen in the group
  std::vector<int32_t> out;
  for (int i = 0; i < R; ++i) {
    // EP groups are consecutive world ranks (Topology::create): group g is [g*R, (g+1)*R).
    const std::string& host = topo.hosts.at(static_cast<size_t>(ep_group * R + i));
    out.push_back(id.emplace(host, static_cast<int32_t>(id.size())).first->second);
  }
  return out;
}

void set_node_map(MoEConfig& cfg, const Topology& topo) {
  if (cfg.max_nodes_per_token == 0) return;  // only node-limited routing reads the map
  MOERUN_REQUIRE(static_cast<int>(topo.hosts.size()) == topo.world.size(),
                 "--max-nodes-per-token needs the host of every rank ({} known for {} ranks)",
                 topo.hosts.size(), topo.world.size());
  const int groups = topo.world.size() / topo.ep_size;
  // Every rank checks every EP group, so a layout that fails anywhere fails on every rank
  // with the same message (no rank is left waiting in a collective).
  for (int g = 0; g < groups; ++g) {
    MoEConfig c = cfg;
    c.ep_rank_node = ep_rank_nodes(topo, g);
    try {
      c.validate(topo.ep_size);
    } catch (const ConfigError& e) {
      throw ConfigError(groups == 1
                            ? std::string(e.what())
                            : fmt::format("EP group {} (world ranks {}..{}): {}", g,
                                          g * topo.ep_size, (g + 1) * topo.ep_size - 1, e.what()));
    }
  }
  cfg.ep_rank_node = ep_rank_nodes(topo, topo.world.rank() / topo.ep_size);
}

}  // namespace moerun
