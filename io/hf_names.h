// The mapping between moerun parameter names and HuggingFace DeepSeek checkpoint names
// (notes/algorithms.md section 9), and config.json <-> the model's shape.
//
// io/ does not know layers/, so the model's shape arrives as a plain HfShape (jobs/ maps
// ModelConfig to it). Every moerun tensor splits into "pieces": HF tensors that are contiguous
// element ranges of the moerun tensor in row-major order, so a converter streams one tensor at a
// time in either direction:
//   embed.weight (V,H)                  = model.embed_tokens.weight
//   layers.N.attn_norm.weight (H)       = model.layers.N.input_layernorm.weight
//   MHA:   layers.N.attn.wqkv (3H,H)    = rows [0,H) self_attn.q_proj.weight, [H,2H) k_proj,
//                                         [2H,3H) v_proj
//          layers.N.attn.wo (H,H)       = self_attn.o_proj.weight
//   MLA (DeepSeek-V2/V3; n = heads, qk = nope + rope):
//          q_lora_rank == 0: layers.N.attn.wq (n*qk, H) = self_attn.q_proj.weight
//          else: layers.N.attn.wq_a (q_lora, H) = self_attn.q_a_proj.weight,
//                layers.N.attn.q_norm (q_lora)  = self_attn.q_a_layernorm.weight,
//                layers.N.attn.wq_b (n*qk, q_lora) = self_attn.q_b_proj.weight
//          layers.N.attn.wkv_a (kv_lora + rope, H) = self_attn.kv_a_proj_with_mqa.weight
//          layers.N.attn.kv_norm (kv_lora)        = self_attn.kv_a_layernorm.weight
//          layers.N.attn.wkv_b (n*(nope + v), kv_lora) = self_attn.kv_b_proj.weight
//          layers.N.attn.wo (H, n*v)              = self_attn.o_proj.weight
//   layers.N.ffn_norm.weight (H)        = post_attention_layernorm.weight
//   dense: layers.N.ffn.w13 (2D,H)      = rows [0,D) mlp.gate_proj.weight, [D,2D)
//   mlp.up_proj.weight
//          layers.N.ffn.w2 (H,D)        = mlp.down_proj.weight
//   MoE:   layers.N.moe.gate (E,H)      = mlp.gate.weight
//          layers.N.moe.bias (E)        = mlp.gate.e_score_correction_bias (fp32 in HF)
//          layers.N.moe.w13 (E,2F,H)    = expert J rows [0,F) mlp.experts.J.gate_proj.weight (F,H),
//                                         rows [F,2F) mlp.experts.J.up_proj.weight (F,H)
//          layers.N.moe.w2 (E,H,F)      = expert J: mlp.experts.J.down_proj.weight (H,F)
//          layers.N.moe.shared_w13 (2SF,H) = rows [0,SF) mlp.shared_experts.gate_proj.weight,
//                                         [SF,2SF) mlp.shared_experts.up_proj.weight
//          layers.N.moe.shared_w2 (H,SF) = mlp.shared_experts.down_proj.weight
//   norm.weight (H)                     = model.norm.weight
//   lm_head.weight (V,H)                = lm_head.weight
// (HF per-layer names are prefixed "model.layers.N.".)
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace moerun::io {

// The config.json layouts moerun writes and reads: "deepseek" (V1: DeepseekForCausalLM, plain
// multi-head attention, remote code) and the two transformers has built in, "deepseek_v2" and
// "deepseek_v3" (multi-head latent attention). How transformers 5.24 routes each:
//   deepseek_v2: softmax scores; greedy or group_limited_greedy (a group scores its max); the
//                weights are multiplied by routed_scaling_factor and never normalised
//                (norm_topk_prob is ignored); no score-correction bias.
//   deepseek_v3: sigmoid scores + e_score_correction_bias, noaux_tc (a group scores the sum of
//                its top-2 biased scores); norm_topk_prob; routed_scaling_factor.
struct HfShape {
  std::string model_type = "deepseek";  // deepseek | deepseek_v2 | deepseek_v3
  int64_t vocab = 0;                    // V
  int64_t hidden = 0;                   // H
  int64_t layers = 0;                   // L
  int64_t heads = 0;  // attention heads (= key/value heads); MHA: head_dim = H / heads, even
  // Multi-head latent attention (deepseek_v2 / deepseek_v3 only); false = MHA (q/k/v/o_proj).
  bool mla = false;
  int64_t q_lora_rank = 0;  // 0 = q_proj (config.json null)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;  // even
  int64_t v_head_dim = 0;
  bool rope_interleave = true;  // V2 always; V3 reads config.json's rope_interleave
  // RoPE scaling: none or YaRN (MLA only), config.json's rope_parameters / rope_scaling.
  bool yarn = false;
  double yarn_factor = 1.0;
  int64_t yarn_original_max_position = 4096;
  double yarn_beta_fast = 32.0;
  double yarn_beta_slow = 1.0;
  double yarn_mscale = 1.0;
  double yarn_mscale_all_dim = 0.0;
  // num_nextn_predict_layers: multi-token-prediction layers stored after the L decoder layers
  // (model.layers.L ...); read from config.json only, their tensors are not part of the model.
  int64_t mtp_layers = 0;
  int64_t first_k_dense = 0;   // blocks [0, first_k_dense) dense, the rest MoE (when experts > 0)
  int64_t dense_ffn = 0;       // D, dense SwiGLU width (used when first_k_dense > 0)
  int64_t experts = 0;         // E routed experts; 0 = no MoE blocks (then first_k_dense == L)
  int64_t expert_width = 0;    // F
  int64_t shared_experts = 0;  // S: one shared SwiGLU of width S*F (0 = none)
  int64_t top_k = 0;           // K
  bool score_bias = true;      // MoE blocks have layers.N.moe.bias <-> e_score_correction_bias
  // Routing and the rest of config.json (DeepSeek spelling and values).
  std::string scoring_func = "softmax";  // softmax | sigmoid
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  std::string topk_method = "greedy";  // greedy | group_limited_greedy | noaux_tc
  double rope_theta = 10000;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 4096;
  std::string torch_dtype = "bfloat16";

  bool is_moe_layer(int64_t layer) const { return experts > 0 && layer >= first_k_dense; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // moerun::ConfigError naming the field.
  void validate() const;
  // Whether model_type's transformers model computes what this shape says (attention kind,
  // routing; the table above); moerun::ConfigError naming the field and the layout otherwise.
  void validate_layout() const;
};

// One HF tensor inside a moerun tensor: elements [offset, offset + numel) in row-major order.
struct HfPiece {
  std::string hf_name;
  std::vector<int64_t> hf_shape;
  int64_t offset = 0;
  int64_t expert = -1;  // the routed expert for pieces of moe.w13 / moe.w2, else -1
  int64_t numel() const;
};

struct HfTensor {
  std::string name;             // moerun name
  std::vector<int64_t> shape;   // moerun global shape
  bool is_expert = false;       // dim 0 is the routed expert (sharded over EP in moerun)
  bool f32_in_hf = false;       // HF keeps it fp32 (the score-correction bias) whatever the dtype
  std::vector<HfPiece> pieces;  // ascending offsets, tiling [0, numel) exactly once
  int64_t numel() const;
};

// Every moerun tensor of the model, in Model::params() order (moe.bias right after moe.gate).
// Validates the shape first.
std::vector<HfTensor> hf_tensor_map(const HfShape& shape);

// HF name -> (index into the map, index into its pieces). Error on a repeated HF name.
struct HfLocation {
  size_t tensor = 0;
  size_t piece = 0;
};
std::unordered_map<std::string, HfLocation> hf_piece_index(const std::vector<HfTensor>& map);

// config.json of the model in the layout shape.model_type names: "deepseek" (V1,
// DeepseekForCausalLM, MHA only) with moerun's routing fields (a V1 loader ignores scoring_func,
// topk_method, n_group, routed_scaling_factor and the bias; they matter to V3-style loaders), or
// "deepseek_v2" / "deepseek_v3" (MLA only) as transformers 5.24 saves them (rope_parameters,
// dtype), plus the legacy rope_theta / rope_scaling / torch_dtype spellings other loaders read.
// Validates the shape first, including that the layout can express its routing
// (validate_layout).
nlohmann::json hf_config(const HfShape& shape);

// The inverse. Accepts model_type deepseek / deepseek_v2 / deepseek_v3 (or none). A config with
// kv_lora_rank non-null is MLA (it must be deepseek_v2 / deepseek_v3), its routing then read as
// transformers routes that model_type (above; a conflicting scoring_func / topk_method is
// refused). Without kv_lora_rank the config is plain multi-head attention, read as before:
// missing routing fields take the V1 defaults (softmax, greedy, no normalisation, factor 1, one
// group) and score_bias is true iff topk_method is noaux_tc (a converter may override it after
// looking at the files). Refuses, with a moerun::ConfigError naming the field: FP8 / quantized
// weights (quantization_config), moe_layer_freq != 1, grouped-query attention
// (num_key_value_heads != num_attention_heads), tied embeddings, attention bias, an activation
// other than silu, rope scaling other than YaRN (and YaRN without MLA, or with attention_factor,
// truncate false or partial_rotary_factor), q_lora_rank without kv_lora_rank, a missing or
// mistyped required field. num_nextn_predict_layers is read into mtp_layers.
HfShape hf_shape_from_config(const nlohmann::json& config);

}  // namespace moerun::io
