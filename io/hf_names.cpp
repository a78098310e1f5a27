// The moerun <-> HF tensor map and HfShape validation (config.json: hf_names_config.cpp).
#include "io/hf_names.h"

#include <fmt/format.h>

#include <utility>

#include "runtime/check.h"

namespace moerun::io {

namespace {

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

bool one_of(const std::string& v, std::initializer_list<const char*> allowed) {
  for (const char* a : allowed)
    if (v == a) return true;
  return false;
}

}  // namespace

void HfShape::validate() const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw ConfigError("HF shape: " + msg);
  };
  need(vocab > 0, fmt::format("vocab_size must be positive (got {})", vocab));
  need(hidden > 0, fmt::format("hidden_size must be positive (got {})", hidden));
  need(layers > 0, fmt::format("num_hidden_layers must be positive (got {})", layers));
  need(one_of(model_type, {"deepseek", "deepseek_v2", "deepseek_v3"}),
       fmt::format("model_type '{}' is not deepseek, deepseek_v2 or deepseek_v3", model_type));
  if (!mla) {
    need(heads > 0 && hidden % heads == 0 && (hidden / heads) % 2 == 0,
         fmt::format("num_attention_heads ({}) must divide hidden_size ({}) into an even head_dim",
                     heads, hidden));
    need(!yarn,
         "YaRN rope scaling needs multi-head latent attention (moerun's MHA has plain RoPE)");
  } else {
    need(heads > 0, fmt::format("num_attention_heads must be positive (got {})", heads));
    need(q_lora_rank >= 0, fmt::format("q_lora_rank must not be negative (got {})", q_lora_rank));
    need(kv_lora_rank > 0, fmt::format("kv_lora_rank must be positive (got {})", kv_lora_rank));
    need(qk_nope_head_dim > 0,
         fmt::format("qk_nope_head_dim must be positive (got {})", qk_nope_head_dim));
    need(qk_rope_head_dim > 0 && qk_rope_head_dim % 2 == 0,
         fmt::format("qk_rope_head_dim must be positive and even (got {})", qk_rope_head_dim));
    need(v_head_dim > 0, fmt::format("v_head_dim must be positive (got {})", v_head_dim));
  }
  if (yarn) {
    need(yarn_factor > 0,
         fmt::format("rope scaling factor must be positive (got {})", yarn_factor));
    need(yarn_original_max_position > 0,
         fmt::format("rope scaling original_max_position_embeddings must be positive (got {})",
                     yarn_original_max_position));
    need(yarn_beta_fast > 0 && yarn_beta_slow > 0,
         fmt::format("rope scaling beta_fast ({}) and beta_slow ({}) must be positive",
                     yarn_beta_fast, yarn_beta_slow));
  }
  need(mtp_layers >= 0,
       fmt::format("num_nextn_predict_layers must not be negative (got {})", mtp_layers));
  need(first_k_dense >= 0 && first_k_dense <= layers,
       fmt::format("first_k_dense_replace ({}) must lie in [0, num_hidden_layers = {}]",
                   first_k_dense, layers));
  need(first_k_dense == 0 || dense_ffn > 0,
       fmt::format("intermediate_size must be positive with dense layers (got {})", dense_ffn));
  need(experts >= 0, fmt::format("n_routed_experts must not be negative (got {})", experts));
  if (experts == 0) {
    need(first_k_dense == layers,
         fmt::format("without routed experts every layer is dense: first_k_dense_replace ({}) must "
                     "equal num_hidden_layers ({})",
                     first_k_dense, layers));
  } else {
    need(expert_width > 0,
         fmt::format("moe_intermediate_size must be positive (got {})", expert_width));
    need(shared_experts >= 0,
         fmt::format("n_shared_experts must not be negative (got {})", shared_experts));
    need(top_k >= 1 && top_k <= experts,
         fmt::format("num_experts_per_tok ({}) must lie in [1, n_routed_experts = {}]", top_k,
                     experts));
    need(n_group >= 1 && experts % n_group == 0,
         fmt::format("n_group ({}) must divide n_routed_experts ({})", n_group, experts));
    need(topk_group >= 1 && topk_group <= n_group,
         fmt::format("topk_group ({}) must lie in [1, n_group = {}]", topk_group, n_group));
  }
  need(one_of(scoring_func, {"softmax", "sigmoid"}),
       fmt::format("scoring_func '{}' is not softmax or sigmoid", scoring_func));
  need(
      one_of(topk_method, {"greedy", "group_limited_greedy", "noaux_tc"}),
      fmt::format("topk_method '{}' is not greedy, group_limited_greedy or noaux_tc", topk_method));
  need(routed_scaling_factor > 0,
       fmt::format("routed_scaling_factor must be positive (got {})", routed_scaling_factor));
  need(rope_theta > 0, fmt::format("rope_theta must be positive (got {})", rope_theta));
  need(rms_norm_eps > 0, fmt::format("rms_norm_eps must be positive (got {})", rms_norm_eps));
  need(max_position_embeddings > 0,
       fmt::format("max_position_embeddings must be positive (got {})", max_position_embeddings));
}

void HfShape::validate_layout() const {
  validate();
  auto need = [this](bool ok, const std::string& msg) {
    if (!ok) throw ConfigError(fmt::format("HF layout {}: {}", model_type, msg));
  };
  if (model_type == "deepseek") {
    need(!mla,
         "multi-head latent attention is written as deepseek_v2 or deepseek_v3 (the V1 layout "
         "has q_proj/k_proj/v_proj only)");
    return;
  }
  need(mla,
       "transformers' DeepseekV2/V3 attention is multi-head latent attention: a plain multi-head "
       "attention model is written as deepseek (V1)");
  const bool moe = experts > 0 && first_k_dense < layers;
  if (!moe) return;
  if (model_type == "deepseek_v2") {
    need(
        scoring_func == "softmax",
        fmt::format("scoring_func '{}': DeepseekV2 routes with softmax scores only", scoring_func));
    need(topk_method == "greedy" || topk_method == "group_limited_greedy",
         fmt::format("topk_method '{}': DeepseekV2 routes greedy or group_limited_greedy (a group "
                     "scores its max)",
                     topk_method));
    need(!norm_topk_prob,
         "norm_topk_prob true: transformers' DeepseekV2 never normalises the top-k weights (it "
         "ignores norm_topk_prob)");
    need(!score_bias, "DeepseekV2 has no e_score_correction_bias");
  } else {
    need(
        scoring_func == "sigmoid",
        fmt::format("scoring_func '{}': DeepseekV3 routes with sigmoid scores only", scoring_func));
    need(topk_method == "noaux_tc",
         fmt::format("topk_method '{}': DeepseekV3 routes noaux_tc only (biased scores; a group "
                     "scores the sum of its top-2)",
                     topk_method));
    need(score_bias,
         "DeepseekV3 always has mlp.gate.e_score_correction_bias (write zeros when the model has "
         "none)");
  }
}

int64_t HfPiece::numel() const {
  return product(hf_shape);
}
int64_t HfTensor::numel() const {
  return product(shape);
}

std::vector<HfTensor> hf_tensor_map(const HfShape& s) {
  s.validate();
  const int64_t V = s.vocab, H = s.hidden, D = s.dense_ffn, E = s.experts, F = s.expert_width;
  const int64_t SF = s.shared_experts * F;
  std::vector<HfTensor> out;
  // A moerun tensor that is exactly one HF tensor.
  auto whole = [&out](std::string name, std::vector<int64_t> shape, std::string hf) {
    HfTensor t{std::move(name), shape, false, false, {}};
    t.pieces.push_back({std::move(hf), std::move(shape), 0, -1});
    out.push_back(std::move(t));
  };
  // A 2-D moerun tensor that stacks HF matrices of `cols` columns along its rows.
  auto stacked = [&out](std::string name, int64_t cols,
                        std::vector<std::pair<std::string, int64_t>> parts) {
    HfTensor t{std::move(name), {0, cols}, false, false, {}};
    int64_t rows = 0;
    for (auto& [hf, r] : parts) {
      t.pieces.push_back({std::move(hf), {r, cols}, rows * cols, -1});
      rows += r;
    }
    t.shape[0] = rows;
    out.push_back(std::move(t));
  };

  whole("embed.weight", {V, H}, "model.embed_tokens.weight");
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = fmt::format("layers.{}.", l);
    const std::string hp = fmt::format("model.layers.{}.", l);
    whole(p + "attn_norm.weight", {H}, hp + "input_layernorm.weight");
    if (!s.mla) {
      stacked(p + "attn.wqkv", H,
              {{hp + "self_attn.q_proj.weight", H},
               {hp + "self_attn.k_proj.weight", H},
               {hp + "self_attn.v_proj.weight", H}});
      whole(p + "attn.wo", {H, H}, hp + "self_attn.o_proj.weight");
    } else {
      const int64_t n = s.heads, qk = s.qk_head_dim(), q_lora = s.q_lora_rank;
      const int64_t kv_lora = s.kv_lora_rank;
      const std::string a = hp + "self_attn.";
      if (q_lora == 0) {
        whole(p + "attn.wq", {n * qk, H}, a + "q_proj.weight");
      } else {
        whole(p + "attn.wq_a", {q_lora, H}, a + "q_a_proj.weight");
        whole(p + "attn.q_norm", {q_lora}, a + "q_a_layernorm.weight");
        whole(p + "attn.wq_b", {n * qk, q_lora}, a + "q_b_proj.weight");
      }
      whole(p + "attn.wkv_a", {kv_lora + s.qk_rope_head_dim, H}, a + "kv_a_proj_with_mqa.weight");
      whole(p + "attn.kv_norm", {kv_lora}, a + "kv_a_layernorm.weight");
      whole(p + "attn.wkv_b", {n * (s.qk_nope_head_dim + s.v_head_dim), kv_lora},
            a + "kv_b_proj.weight");
      whole(p + "attn.wo", {H, n * s.v_head_dim}, a + "o_proj.weight");
    }
    whole(p + "ffn_norm.weight", {H}, hp + "post_attention_layernorm.weight");
    if (!s.is_moe_layer(l)) {
      stacked(p + "ffn.w13", H, {{hp + "mlp.gate_proj.weight", D}, {hp + "mlp.up_proj.weight", D}});
      whole(p + "ffn.w2", {H, D}, hp + "mlp.down_proj.weight");
      continue;
    }
    whole(p + "moe.gate", {E, H}, hp + "mlp.gate.weight");
    if (s.score_bias) {
      whole(p + "moe.bias", {E}, hp + "mlp.gate.e_score_correction_bias");
      out.back().f32_in_hf = true;
    }
    HfTensor w13{p + "moe.w13", {E, 2 * F, H}, true, false, {}};
    HfTensor w2{p + "moe.w2", {E, H, F}, true, false, {}};
    for (int64_t j = 0; j < E; ++j) {
      const std::string ep = fmt::format("{}mlp.experts.{}.", hp, j);
      w13.pieces.push_back({ep + "gate_proj.weight", {F, H}, j * 2 * F * H, j});
      w13.pieces.push_back({ep + "up_proj.weight", {F, H}, j * 2 * F * H + F * H, j});
      w2.pieces.push_back({ep + "down_proj.weight", {H, F}, j * H * F, j});
    }
    out.push_back(std::move(w13));
    out.push_back(std::move(w2));
    if (SF > 0) {
      stacked(p + "moe.shared_w13", H,
              {{hp + "mlp.shared_experts.gate_proj.weight", SF},
               {hp + "mlp.shared_experts.up_proj.weight", SF}});
      whole(p + "moe.shared_w2", {H, SF}, hp + "mlp.shared_experts.down_proj.weight");
    }
  }
  whole("norm.weight", {H}, "model.norm.weight");
  whole("lm_head.weight", {V, H}, "lm_head.weight");
  return out;
}

std::unordered_map<std::string, HfLocation> hf_piece_index(const std::vector<HfTensor>& map) {
  std::unordered_map<std::string, HfLocation> index;
  for (size_t t = 0; t < map.size(); ++t)
    for (size_t p = 0; p < map[t].pieces.size(); ++p)
      MOERUN_REQUIRE(index.emplace(map[t].pieces[p].hf_name, HfLocation{t, p}).second,
                     "HF tensor '{}' appears twice in the name map", map[t].pieces[p].hf_name);
  return index;
}

}  // namespace moerun::io
