// Router: backend choice (the shape checks sit with the kernels, which own the routing rules).
#include "layers/router.h"

#include <map>

#include "layers/backend.h"
#include "runtime/check.h"

namespace moerun {

ExpertGroups expert_groups(const MoEConfig& cfg, int ep_size) {
  const int64_t E = cfg.routed_experts, E_local = E / ep_size;
  ExpertGroups g;
  g.group_of_expert.resize(static_cast<size_t>(E));
  if (cfg.max_nodes_per_token > 0) {
    MOERUN_REQUIRE(static_cast<int64_t>(cfg.ep_rank_node.size()) == ep_size,
                   "--max-nodes-per-token needs the node of each of the {} EP ranks (have {}); "
                   "the job sets MoEConfig::ep_rank_node from the topology",
                   ep_size, cfg.ep_rank_node.size());
    std::map<int32_t, int32_t> id;  // node id -> group, numbered in EP-rank order
    for (int32_t node : cfg.ep_rank_node) id.emplace(node, static_cast<int32_t>(id.size()));
    for (int64_t e = 0; e < E; ++e)
      g.group_of_expert[static_cast<size_t>(e)] =
          id[cfg.ep_rank_node[static_cast<size_t>(e / E_local)]];
    g.n_group = static_cast<int64_t>(id.size());
    g.keep = cfg.max_nodes_per_token;
    MOERUN_CONFIG_REQUIRE(g.keep <= g.n_group,
                          "--max-nodes-per-token ({}) exceeds the {} node(s) of the EP group",
                          g.keep, g.n_group);
    g.score_top = (cfg.top_k + cfg.max_nodes_per_token - 1) / cfg.max_nodes_per_token;
  } else if (cfg.max_devices_per_token > 0) {
    for (int64_t e = 0; e < E; ++e)
      g.group_of_expert[static_cast<size_t>(e)] = static_cast<int32_t>(e / E_local);
    g.n_group = ep_size;
    g.keep = cfg.max_devices_per_token;
    g.score_top = 1;
  } else {
    const int64_t size = E / cfg.n_group;
    for (int64_t e = 0; e < E; ++e)
      g.group_of_expert[static_cast<size_t>(e)] = static_cast<int32_t>(e / size);
    g.n_group = cfg.n_group;
    g.keep = cfg.topk_group;
    g.score_top = cfg.group_score == GroupScore::kMax ? 1 : 2;
  }
  return g;
}

RouterOutput router_forward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                            const Tensor& bias, int64_t seq_len) {
  const Device d = backend_of("router_forward", {&x, &gate, &bias});
  switch (d) {
    case Device::kCpu:
      return cpu::router_forward(cfg, ep_size, x, gate, bias, seq_len);
    case Device::kCuda:
      break;
  }
  no_backend("router_forward", d);
}

void router_backward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                     const RouterOutput& out, const Tensor& dtopk_weight, int64_t seq_len,
                     Tensor& dgate, Tensor& dx) {
  const Device d =
      backend_of("router_backward", {&x, &gate, &out.scores, &dtopk_weight, &dgate, &dx});
  switch (d) {
    case Device::kCpu:
      cpu::router_backward(cfg, ep_size, x, gate, out, dtopk_weight, seq_len, dgate, dx);
      return;
    case Device::kCuda:
      break;
  }
  no_backend("router_backward", d);
}

}  // namespace moerun
