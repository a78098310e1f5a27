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

// ---- config.json field readers: ConfigError naming the field -------------------------------

[[noreturn]] void config_fail(const std::string& msg) {
  throw ConfigError("HF config.json: " + msg);
}

const nlohmann::json* field(const nlohmann::json& c, const char* key) {
  auto it = c.find(key);
  return it == c.end() || it->is_null() ? nullptr : &*it;
}

int64_t get_int(const nlohmann::json& c, const char* key, const int64_t* fallback) {
  const nlohmann::json* v = field(c, key);
  if (!v) {
    if (!fallback) config_fail(fmt::format("required field '{}' is missing", key));
    return *fallback;
  }
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX))
      config_fail(fmt::format("'{}' = {} is too large", key, u));
    return static_cast<int64_t>(u);
  }
  if (v->is_number_integer()) return v->get<int64_t>();
  config_fail(fmt::format("'{}' must be an integer, got {}", key, v->dump()));
}

int64_t req_int(const nlohmann::json& c, const char* key) {
  return get_int(c, key, nullptr);
}
int64_t opt_int(const nlohmann::json& c, const char* key, int64_t fallback) {
  return get_int(c, key, &fallback);
}

double opt_double(const nlohmann::json& c, const char* key, double fallback) {
  const nlohmann::json* v = field(c, key);
  if (!v) return fallback;
  if (!v->is_number()) config_fail(fmt::format("'{}' must be a number, got {}", key, v->dump()));
  return v->get<double>();
}

bool opt_bool(const nlohmann::json& c, const char* key, bool fallback) {
  const nlohmann::json* v = field(c, key);
  if (!v) return fallback;
  if (!v->is_boolean())
    config_fail(fmt::format("'{}' must be true or false, got {}", key, v->dump()));
  return v->get<bool>();
}

std::string opt_string(const nlohmann::json& c, const char* key, const std::string& fallback) {
  const nlohmann::json* v = field(c, key);
  if (!v) return fallback;
  if (!v->is_string()) config_fail(fmt::format("'{}' must be a string, got {}", key, v->dump()));
  return v->get<std::string>();
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

namespace {

// rope_parameters as transformers 5.24 writes it (rope_type + rope_theta + the YaRN fields).
nlohmann::json rope_parameters(const HfShape& s) {
  nlohmann::json r = {{"rope_type", s.yarn ? "yarn" : "default"}, {"rope_theta", s.rope_theta}};
  if (s.yarn) {
    r["factor"] = s.yarn_factor;
    r["original_max_position_embeddings"] = s.yarn_original_max_position;
    r["beta_fast"] = s.yarn_beta_fast;
    r["beta_slow"] = s.yarn_beta_slow;
    r["mscale"] = s.yarn_mscale;
    r["mscale_all_dim"] = s.yarn_mscale_all_dim;
  }
  return r;
}

// The V2/V3 layouts (transformers' DeepseekV2Config / DeepseekV3Config fields).
nlohmann::json hf_config_v2v3(const HfShape& s) {
  const bool v3 = s.model_type == "deepseek_v3";
  const bool moe = s.experts > 0 && s.first_k_dense < s.layers;
  nlohmann::json c = nlohmann::json::object();
  c["architectures"] = {v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
  c["model_type"] = s.model_type;
  c["vocab_size"] = s.vocab;
  c["hidden_size"] = s.hidden;
  c["intermediate_size"] =
      s.dense_ffn > 0 ? s.dense_ffn : (s.expert_width > 0 ? s.expert_width : s.hidden);
  c["num_hidden_layers"] = s.layers;
  c["num_attention_heads"] = s.heads;
  c["num_key_value_heads"] = s.heads;
  c["q_lora_rank"] = s.q_lora_rank > 0 ? nlohmann::json(s.q_lora_rank) : nlohmann::json(nullptr);
  c["kv_lora_rank"] = s.kv_lora_rank;
  c["qk_nope_head_dim"] = s.qk_nope_head_dim;
  c["qk_rope_head_dim"] = s.qk_rope_head_dim;
  c["v_head_dim"] = s.v_head_dim;
  c["head_dim"] = s.qk_rope_head_dim;  // what transformers sets (the rotary dimension)
  // transformers wants integers here even for a model without MoE layers: one expert that no
  // layer uses (first_k_dense_replace = num_hidden_layers).
  c["first_k_dense_replace"] = moe ? s.first_k_dense : s.layers;
  c["moe_layer_freq"] = 1;
  c["n_routed_experts"] = moe ? s.experts : 1;
  c["moe_intermediate_size"] = moe ? s.expert_width : c["intermediate_size"].get<int64_t>();
  c["n_shared_experts"] = moe ? s.shared_experts : 0;
  c["num_experts_per_tok"] = moe ? s.top_k : 1;
  c["scoring_func"] = moe ? s.scoring_func : (v3 ? "sigmoid" : "softmax");
  c["topk_method"] = moe ? s.topk_method : (v3 ? "noaux_tc" : "greedy");
  c["norm_topk_prob"] = moe && s.norm_topk_prob;
  c["routed_scaling_factor"] = moe ? s.routed_scaling_factor : 1.0;
  c["n_group"] = moe ? s.n_group : 1;
  c["topk_group"] = moe ? s.topk_group : 1;
  if (v3) {
    c["rope_interleave"] = s.rope_interleave;
    c["num_nextn_predict_layers"] = 0;  // no multi-token-prediction layers
  }
  c["rope_parameters"] = rope_parameters(s);
  c["rope_theta"] = s.rope_theta;  // the legacy spellings (older loaders)
  if (s.yarn) {
    nlohmann::json legacy = rope_parameters(s);
    legacy.erase("rope_theta");
    legacy.erase("rope_type");
    legacy["type"] = "yarn";
    c["rope_scaling"] = legacy;
  } else {
    c["rope_scaling"] = nullptr;
  }
  c["rms_norm_eps"] = s.rms_norm_eps;
  c["max_position_embeddings"] = s.max_position_embeddings;
  c["hidden_act"] = "silu";
  c["attention_bias"] = false;
  c["attention_dropout"] = 0.0;
  c["tie_word_embeddings"] = false;
  // moerun knows no special tokens: no eos, so generate() runs to its length limit.
  c["bos_token_id"] = nullptr;
  c["eos_token_id"] = nullptr;
  c["pad_token_id"] = nullptr;
  c["use_cache"] = true;
  c["dtype"] = s.torch_dtype;
  return c;
}

}  // namespace

nlohmann::json hf_config(const HfShape& s) {
  s.validate_layout();
  if (s.model_type != "deepseek") return hf_config_v2v3(s);
  nlohmann::json c = nlohmann::json::object();
  c["architectures"] = {"DeepseekForCausalLM"};
  c["model_type"] = "deepseek";
  c["vocab_size"] = s.vocab;
  c["hidden_size"] = s.hidden;
  // Unused by a model without dense layers, but loaders expect a positive value.
  c["intermediate_size"] =
      s.dense_ffn > 0 ? s.dense_ffn : (s.expert_width > 0 ? s.expert_width : s.hidden);
  c["num_hidden_layers"] = s.layers;
  c["num_attention_heads"] = s.heads;
  c["num_key_value_heads"] = s.heads;
  c["first_k_dense_replace"] = s.first_k_dense;
  c["moe_layer_freq"] = 1;
  if (s.experts > 0) {
    c["n_routed_experts"] = s.experts;
    c["moe_intermediate_size"] = s.expert_width;
    c["n_shared_experts"] = s.shared_experts;
    c["num_experts_per_tok"] = s.top_k;
  } else {
    c["n_routed_experts"] = nullptr;
  }
  c["scoring_func"] = s.scoring_func;
  c["norm_topk_prob"] = s.norm_topk_prob;
  c["routed_scaling_factor"] = s.routed_scaling_factor;
  c["n_group"] = s.n_group;
  c["topk_group"] = s.topk_group;
  c["topk_method"] = s.topk_method;
  c["rope_theta"] = s.rope_theta;
  c["rope_scaling"] = nullptr;
  c["rms_norm_eps"] = s.rms_norm_eps;
  c["max_position_embeddings"] = s.max_position_embeddings;
  c["hidden_act"] = "silu";
  c["attention_bias"] = false;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = s.torch_dtype;
  return c;
}

namespace {

// rope_theta and the RoPE scaling of a config: transformers 5.24's rope_parameters, or the
// legacy top-level rope_theta + rope_scaling. Only YaRN (as DeepSeek-V2/V3 use it) is kept.
void read_rope(const nlohmann::json& c, HfShape& s) {
  const nlohmann::json* params = field(c, "rope_parameters");
  if (params && !params->is_object())
    config_fail(fmt::format("'rope_parameters' must be an object, got {}", params->dump()));
  s.rope_theta = opt_double(c, "rope_theta", 10000.0);
  if (params) s.rope_theta = opt_double(*params, "rope_theta", s.rope_theta);
  // The scaling: rope_parameters when it names a type other than default, else rope_scaling.
  const char* key = "rope_parameters";
  const nlohmann::json* scaling = nullptr;
  auto type_of = [](const nlohmann::json& d) {
    std::string t = opt_string(d, "rope_type", "");
    return t.empty() ? opt_string(d, "type", "default") : t;
  };
  if (params && type_of(*params) != "default") {
    scaling = params;
  } else if (const nlohmann::json* rs = field(c, "rope_scaling")) {
    if (!rs->is_object())
      config_fail(fmt::format("'rope_scaling' must be an object or null, got {}", rs->dump()));
    if (type_of(*rs) != "default") {
      scaling = rs;
      key = "rope_scaling";
    }
  }
  if (!scaling) return;
  const std::string type = type_of(*scaling);
  if (type != "yarn")
    config_fail(
        fmt::format("'{}' = {}: rope type '{}' is not supported (only YaRN, as "
                    "DeepSeek-V2/V3 use it, or plain RoPE)",
                    key, scaling->dump(), type));
  if (!s.mla)
    config_fail(
        fmt::format("'{}' = {}: YaRN needs multi-head latent attention (kv_lora_rank); "
                    "moerun's plain multi-head attention has only plain RoPE",
                    key, scaling->dump()));
  if (const nlohmann::json* af = field(*scaling, "attention_factor"))
    config_fail(
        fmt::format("'{}.attention_factor' = {}: an explicit YaRN attention factor is "
                    "not supported (moerun derives it from factor, mscale, mscale_all_dim)",
                    key, af->dump()));
  if (!opt_bool(*scaling, "truncate", true))
    config_fail(fmt::format("'{}.truncate' = false is not supported", key));
  if (const double prf = opt_double(*scaling, "partial_rotary_factor", 1.0); prf != 1.0)
    config_fail(fmt::format("'{}.partial_rotary_factor' = {} is not supported", key, prf));
  s.yarn = true;
  s.yarn_original_max_position = req_int(*scaling, "original_max_position_embeddings");
  // As transformers: no factor = max_position_embeddings / original; beta 0 or null = default;
  // mscale counts only together with a non-zero mscale_all_dim.
  s.yarn_factor = opt_double(*scaling, "factor",
                             static_cast<double>(opt_int(c, "max_position_embeddings", 4096)) /
                                 static_cast<double>(s.yarn_original_max_position));
  s.yarn_beta_fast = opt_double(*scaling, "beta_fast", 0.0);
  if (s.yarn_beta_fast == 0.0) s.yarn_beta_fast = 32.0;
  s.yarn_beta_slow = opt_double(*scaling, "beta_slow", 0.0);
  if (s.yarn_beta_slow == 0.0) s.yarn_beta_slow = 1.0;
  s.yarn_mscale_all_dim = opt_double(*scaling, "mscale_all_dim", 0.0);
  const double mscale = opt_double(*scaling, "mscale", 0.0);
  s.yarn_mscale = mscale != 0.0 && s.yarn_mscale_all_dim != 0.0 ? mscale : 1.0;
}

}  // namespace

HfShape hf_shape_from_config(const nlohmann::json& c) {
  if (!c.is_object()) config_fail("not a JSON object");
  // Refusals first: they explain more than a missing field would.
  const std::string model_type = opt_string(c, "model_type", "deepseek");
  if (!one_of(model_type, {"deepseek", "deepseek_v2", "deepseek_v3"}))
    config_fail(
        fmt::format("model_type '{}' is not a DeepSeek model (deepseek, deepseek_v2, "
                    "deepseek_v3)",
                    model_type));
  if (const nlohmann::json* q = field(c, "quantization_config"))
    config_fail(
        fmt::format("'quantization_config' = {}: quantized (FP8) weights are not "
                    "supported; dequantize to bf16 first",
                    q->dump()));
  const bool mla = field(c, "kv_lora_rank") != nullptr;
  if (!mla)
    if (const nlohmann::json* q = field(c, "q_lora_rank"))
      config_fail(
          fmt::format("'q_lora_rank' = {} without kv_lora_rank: multi-head latent "
                      "attention needs kv_lora_rank",
                      q->dump()));
  if (mla && model_type == "deepseek")
    config_fail(
        fmt::format("'kv_lora_rank' = {}: multi-head latent attention (DeepSeek-V2/V3 "
                    "MLA) needs model_type deepseek_v2 or deepseek_v3, not deepseek",
                    field(c, "kv_lora_rank")->dump()));
  if (const int64_t freq = opt_int(c, "moe_layer_freq", 1); freq != 1)
    config_fail(
        fmt::format("'moe_layer_freq' = {}: only 1 (every layer from "
                    "first_k_dense_replace on is MoE) is supported",
                    freq));
  if (opt_bool(c, "tie_word_embeddings", false))
    config_fail("'tie_word_embeddings' = true: moerun keeps an untied lm_head");
  if (opt_bool(c, "attention_bias", false))
    config_fail("'attention_bias' = true: moerun's attention projections have no bias");
  if (opt_bool(c, "mlp_bias", false))
    config_fail("'mlp_bias' = true: moerun's MLP projections have no bias");
  if (const std::string act = opt_string(c, "hidden_act", "silu"); act != "silu")
    config_fail(fmt::format("'hidden_act' = '{}': only silu (SwiGLU) is supported", act));

  HfShape s;
  s.model_type = model_type;
  s.mla = mla;
  s.vocab = req_int(c, "vocab_size");
  s.hidden = req_int(c, "hidden_size");
  s.layers = req_int(c, "num_hidden_layers");
  s.heads = req_int(c, "num_attention_heads");
  if (const int64_t kv = opt_int(c, "num_key_value_heads", s.heads); kv != s.heads)
    config_fail(
        fmt::format("'num_key_value_heads' = {} differs from num_attention_heads = {}: "
                    "grouped-query attention is not supported",
                    kv, s.heads));
  if (mla) {
    if (!c.contains("q_lora_rank"))
      config_fail("required field 'q_lora_rank' is missing (null for a plain q_proj)");
    s.q_lora_rank = opt_int(c, "q_lora_rank", 0);
    if (field(c, "q_lora_rank") && s.q_lora_rank <= 0)
      config_fail(fmt::format("'q_lora_rank' must be positive or null (got {})", s.q_lora_rank));
    s.kv_lora_rank = req_int(c, "kv_lora_rank");
    s.qk_nope_head_dim = req_int(c, "qk_nope_head_dim");
    s.qk_rope_head_dim = req_int(c, "qk_rope_head_dim");
    s.v_head_dim = req_int(c, "v_head_dim");
    // transformers: V3 reads rope_interleave (default true); V2 always rotates adjacent pairs.
    s.rope_interleave = model_type == "deepseek_v3" ? opt_bool(c, "rope_interleave", true) : true;
  } else if (s.heads > 0 && s.hidden % s.heads == 0) {
    if (const int64_t hd = opt_int(c, "head_dim", s.hidden / s.heads); hd != s.hidden / s.heads)
      config_fail(fmt::format("'head_dim' = {} differs from hidden_size / num_attention_heads = {}",
                              hd, s.hidden / s.heads));
  }
  s.mtp_layers = opt_int(c, "num_nextn_predict_layers", 0);
  s.max_position_embeddings = opt_int(c, "max_position_embeddings", 4096);
  read_rope(c, s);

  s.experts = opt_int(c, "n_routed_experts", 0);
  if (!field(c, "n_routed_experts")) {
    // Without it the model would read as dense, and the first expert tensor would be reported
    // missing: name the key instead when another field says the model has routed experts.
    for (const char* moe_key : {"moe_intermediate_size", "num_experts_per_tok", "n_shared_experts"})
      if (const nlohmann::json* v = field(c, moe_key))
        config_fail(
            fmt::format("'n_routed_experts' is missing, but '{}' = {} says the model has "
                        "routed experts: add n_routed_experts (the number of routed "
                        "experts of each MoE layer)",
                        moe_key, v->dump()));
  }
  if (s.experts > 0) {
    // transformers' defaults: V1 and V2 0, V3 3.
    s.first_k_dense = opt_int(c, "first_k_dense_replace", model_type == "deepseek_v3" ? 3 : 0);
    s.expert_width = req_int(c, "moe_intermediate_size");
    s.shared_experts = opt_int(c, "n_shared_experts", 0);
    s.top_k = req_int(c, "num_experts_per_tok");
    if (mla && s.first_k_dense >= s.layers) {  // MoE fields, but no MoE layer
      s.first_k_dense = s.layers;
      s.experts = s.expert_width = s.shared_experts = s.top_k = 0;
    }
  } else {
    s.first_k_dense = s.layers;  // no routed experts: every layer is dense
  }
  s.dense_ffn = s.first_k_dense > 0 ? req_int(c, "intermediate_size") : 0;
  s.rms_norm_eps = opt_double(c, "rms_norm_eps", 1e-6);
  s.torch_dtype = opt_string(c, "dtype", opt_string(c, "torch_dtype", "bfloat16"));
  if (!mla || model_type == "deepseek") {
    // Plain multi-head attention: moerun's V1 reading (routing fields as written).
    s.scoring_func = opt_string(c, "scoring_func", "softmax");
    s.norm_topk_prob = opt_bool(c, "norm_topk_prob", false);
    s.routed_scaling_factor = opt_double(c, "routed_scaling_factor", 1.0);
    s.n_group = opt_int(c, "n_group", 1);
    s.topk_group = opt_int(c, "topk_group", 1);
    s.topk_method = opt_string(c, "topk_method", "greedy");
    s.score_bias = s.topk_method == "noaux_tc";
  } else if (model_type == "deepseek_v2") {
    // transformers' DeepseekV2: softmax, greedy | group_limited_greedy, weights * factor, no
    // normalisation, no bias.
    if (const std::string f = opt_string(c, "scoring_func", "softmax"); f != "softmax")
      config_fail(
          fmt::format("'scoring_func' = '{}': transformers' DeepseekV2 routes with "
                      "softmax only (use model_type deepseek_v3 for sigmoid)",
                      f));
    s.scoring_func = "softmax";
    s.topk_method = opt_string(c, "topk_method", "greedy");
    if (!one_of(s.topk_method, {"greedy", "group_limited_greedy"}))
      config_fail(
          fmt::format("'topk_method' = '{}': transformers' DeepseekV2 routes greedy or "
                      "group_limited_greedy",
                      s.topk_method));
    s.norm_topk_prob = false;  // ignored by DeepseekV2 (a converter says so)
    s.routed_scaling_factor = opt_double(c, "routed_scaling_factor", 1.0);
    s.n_group = opt_int(c, "n_group", 1);
    s.topk_group = opt_int(c, "topk_group", 1);
    s.score_bias = false;
  } else {
    // transformers' DeepseekV3: sigmoid + bias, noaux_tc (top-2 sum group scores).
    if (const std::string f = opt_string(c, "scoring_func", "sigmoid"); f != "sigmoid")
      config_fail(
          fmt::format("'scoring_func' = '{}': transformers' DeepseekV3 routes with "
                      "sigmoid only (use model_type deepseek_v2 for softmax)",
                      f));
    if (const std::string m = opt_string(c, "topk_method", "noaux_tc"); m != "noaux_tc")
      config_fail(
          fmt::format("'topk_method' = '{}': transformers' DeepseekV3 routes noaux_tc "
                      "only (use model_type deepseek_v2 for greedy routing)",
                      m));
    s.scoring_func = "sigmoid";
    s.topk_method = "noaux_tc";
    s.norm_topk_prob = opt_bool(c, "norm_topk_prob", true);
    s.routed_scaling_factor = opt_double(c, "routed_scaling_factor", 2.5);
    s.n_group = opt_int(c, "n_group", 8);
    s.topk_group = opt_int(c, "topk_group", 4);
    s.score_bias = true;
  }
  if (mla && s.experts == 0) s.n_group = s.topk_group = 1;  // no router to group
  s.validate();
  return s;
}

}  // namespace moerun::io
