// MoEConfig: the shape and routing/balancing options of one DeepSeekMoE layer, with the
// validation every rank runs before the first collective, and parsers for the enum options.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

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
