// The mapping between moerun parameter names and HuggingFace DeepSeek checkpoint names
// (notes/algorithms.md section 9), and config.json <-> the model's shape.
//
// io/ does not know layers/, so the model's shape arrives as a plain HfShape (jobs/ maps
// ModelConfig to it). Every moerun tensor splits into "pieces": HF tensors that are contiguous
// element ranges of the moerun tensor in row-major order, so a converter streams one tensor at a
// time in either direction:
//   embed.weight (V,H)                  = model.embed_tokens.weight
//   layers.N.attn_norm.weight (H)       = model.layers.N.input_layernorm.weight
//   layers.N.attn.wqkv (3H,H)           = rows [0,H) self_attn.q_proj.weight, [H,2H) k_proj,
//   [2H,3H) v_proj layers.N.attn.wo (H,H)              = self_attn.o_proj.weight
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

struct HfShape {
  int64_t vocab = 0;           // V
  int64_t hidden = 0;          // H
  int64_t layers = 0;          // L
  int64_t heads = 0;           // attention heads (= key/value heads); head_dim = H / heads, even
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
  // moerun::ConfigError naming the field.
  void validate() const;
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

// config.json of a DeepSeek (V1 layout, model_type "deepseek", DeepseekForCausalLM) model with
// moerun's routing fields. Validates the shape first. (A V1 loader ignores scoring_func,
// topk_method, n_group, routed_scaling_factor and the bias; they matter to V3-style loaders.)
nlohmann::json hf_config(const HfShape& shape);

// The inverse. Accepts model_type deepseek / deepseek_v2 / deepseek_v3 (or none). Refuses, with
// a moerun::ConfigError naming the field: multi-head latent attention (q_lora_rank or
// kv_lora_rank non-null), moe_layer_freq != 1, grouped-query attention (num_key_value_heads !=
// num_attention_heads), tied embeddings, attention bias, an activation other than silu,
// rope_scaling, a missing or mistyped required field. Missing routing fields take the V1
// defaults (softmax, greedy, no normalisation, factor 1, one group). score_bias is true iff
// topk_method is noaux_tc (a converter may override it after looking at the files).
HfShape hf_shape_from_config(const nlohmann::json& config);

}  // namespace moerun::io
