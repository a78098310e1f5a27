// config.json <-> HfShape (io/hf_names.h): the V1 "deepseek" layout and transformers'
// "deepseek_v2" / "deepseek_v3" (MLA, rope_parameters, YaRN), as each model_type is computed.
#include "io/hf_names.h"

#include <fmt/format.h>

#include <string>

#include "runtime/check.h"

namespace moerun::io {

namespace {

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

// The fields every DeepSeek layout spells the same way.
nlohmann::json config_base(const HfShape& s, const char* architecture, const std::string& type) {
  nlohmann::json c = nlohmann::json::object();
  c["architectures"] = {architecture};
  c["model_type"] = type;
  c["vocab_size"] = s.vocab;
  c["hidden_size"] = s.hidden;
  // Unused by a model without dense layers, but loaders expect a positive value.
  c["intermediate_size"] =
      s.dense_ffn > 0 ? s.dense_ffn : (s.expert_width > 0 ? s.expert_width : s.hidden);
  c["num_hidden_layers"] = s.layers;
  c["num_attention_heads"] = s.heads;
  c["num_key_value_heads"] = s.heads;
  c["rms_norm_eps"] = s.rms_norm_eps;
  c["max_position_embeddings"] = s.max_position_embeddings;
  c["hidden_act"] = "silu";
  c["attention_bias"] = false;
  c["tie_word_embeddings"] = false;
  return c;
}

// The V2/V3 layouts (transformers' DeepseekV2Config / DeepseekV3Config fields).
nlohmann::json hf_config_v2v3(const HfShape& s) {
  const bool v3 = s.model_type == "deepseek_v3";
  const bool moe = s.experts > 0 && s.first_k_dense < s.layers;
  nlohmann::json c =
      config_base(s, v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM", s.model_type);
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
  c["attention_dropout"] = 0.0;
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
  nlohmann::json c = config_base(s, "DeepseekForCausalLM", "deepseek");
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
