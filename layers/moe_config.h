// MoEConfig: the shape and routing/balancing options of one DeepSeekMoE layer, with the
// validation every rank runs before the first collective, and parsers for the enum options.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moerun {

enum class ScoreFn { kSoftmax, kSigmoid };
enum class TopkNorm { kNone, kNormalize };  // g /= sum(g) over the K chosen (V3 + sigmoid)
enum class GroupScore { kMax, kTop2Sum };   // V2 device-limited / V3 node-limited
enum class Balance { kLossFree, kAux, kNone };
enum class BiasUpdate { kSign, kProportional };

struct MoEConfig {
  int64_t hidden = 0;          // H
  int64_t expert_width = 0;    // F (routed expert SwiGLU width)
  int64_t routed_experts = 0;  // E
  int64_t shared_experts = 0;  // S: one always-on SwiGLU of width S*F (0 = none)
  int64_t top_k = 0;           // K
  ScoreFn score_fn = ScoreFn::kSoftmax;
  TopkNorm topk_norm = TopkNorm::kNone;
  double routed_scaling_factor = 1.0;
  // Group-limited routing: experts split into n_group equal groups, the best topk_group kept.
  int64_t n_group = 1;
  int64_t topk_group = 1;
  GroupScore group_score = GroupScore::kMax;
  // Node-limited routing (V3): a token's experts lie on at most this many nodes, the nodes
  // ranked by the sum of their ceil(K/M) highest biased scores. 0 = off. Needs ep_rank_node.
  int64_t max_nodes_per_token = 0;
  // Device-limited routing (V2): at most this many EP ranks per token, ranked by their highest
  // biased score. 0 = off.
  int64_t max_devices_per_token = 0;
  // (R) the node of each EP rank (any ids; equal = same node), set by the job from the
  // topology's host map, not an option. Empty = unknown (the node checks wait until it is set).
  std::vector<int32_t> ep_rank_node;
  // 0 = dropless; else capacity per expert = ceil(T*K/E * factor) over this rank's T tokens.
  double capacity_factor = 0.0;
  Balance balance = Balance::kLossFree;
  BiasUpdate bias_update = BiasUpdate::kSign;
  double bias_update_rate = 1e-3;  // u
  double aux_alpha1 = 0.0;         // expert-level balance loss weight
  double aux_alpha2 = 0.0;         // device-level (devices = EP ranks)
  double aux_seq_alpha = 0.0;      // sequence-wise (V3)

  // Throws moerun::Error naming the option and the expected value; deterministic, no comm.
  void validate(int ep_size) const;
  // The --max-nodes-per-token / --max-devices-per-token part of validate (node checks only
  // once ep_rank_node is set).
  void validate_limits(int ep_size) const;
  int64_t local_experts(int ep_size) const { return routed_experts / ep_size; }
  int64_t shared_width() const { return shared_experts * expert_width; }
};

ScoreFn parse_score_fn(std::string_view s);        // softmax | sigmoid
GroupScore parse_group_score(std::string_view s);  // max | top2sum
Balance parse_balance(std::string_view s);         // loss-free | aux | none
BiasUpdate parse_bias_update(std::string_view s);  // sign | proportional
TopkNorm parse_topk_norm(std::string_view s);      // none | normalize
std::string to_string(ScoreFn v);
std::string to_string(GroupScore v);
std::string to_string(Balance v);
std::string to_string(BiasUpdate v);
std::string to_string(TopkNorm v);

}  // namespace moerun
