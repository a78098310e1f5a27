// Option table for MoEConfig.
#include "jobs/moe_options.h"

#include <string>

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
  c.capacity_factor = vm["capacity-factor"].as<double>();
  c.balance = parse_balance(vm["balance"].as<std::string>());
  c.bias_update = parse_bias_update(vm["bias-update"].as<std::string>());
  c.bias_update_rate = vm["bias-update-rate"].as<double>();
  c.aux_alpha1 = vm["aux-alpha1"].as<double>();
  c.aux_alpha2 = vm["aux-alpha2"].as<double>();
  c.aux_seq_alpha = vm["aux-seq-alpha"].as<double>();
  return c;
}

}  // namespace moerun
