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
  need(heads > 0 && hidden % heads == 0 && (hidden / heads) % 2 == 0,
       fmt::format("num_attention_heads ({}) must divide hidden_size ({}) into an even head_dim",
                   heads, hidden));
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
    stacked(p + "attn.wqkv", H,
            {{hp + "self_attn.q_proj.weight", H},
             {hp + "self_attn.k_proj.weight", H},
             {hp + "self_attn.v_proj.weight", H}});
    whole(p + "attn.wo", {H, H}, hp + "self_attn.o_proj.weight");
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

nlohmann::json hf_config(const HfShape& s) {
  s.validate();
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

HfShape hf_shape_from_config(const nlohmann::json& c) {
  if (!c.is_object()) config_fail("not a JSON object");
  // Refusals first: they explain more than a missing field would.
  for (const char* mla : {"kv_lora_rank", "q_lora_rank"})
    if (const nlohmann::json* v = field(c, mla))
      config_fail(fmt::format(
          "'{}' = {}: multi-head latent attention (DeepSeek-V2/V3 MLA) is not supported; moerun "
          "converts plain multi-head attention (q_proj/k_proj/v_proj/o_proj)",
          mla, v->dump()));
  const std::string model_type = opt_string(c, "model_type", "deepseek");
  if (!one_of(model_type, {"deepseek", "deepseek_v2", "deepseek_v3"}))
    config_fail(
        fmt::format("model_type '{}' is not a DeepSeek model (deepseek, deepseek_v2, "
                    "deepseek_v3)",
                    model_type));
  if (const int64_t freq = opt_int(c, "moe_layer_freq", 1); freq != 1)
    config_fail(
        fmt::format("'moe_layer_freq' = {}: only 1 (every layer from "
                    "first_k_dense_replace on is MoE) is supported",
                    freq));
  if (opt_bool(c, "tie_word_embeddings", false))
    config_fail("'tie_word_embeddings' = true: moerun keeps an untied lm_head");
  if (opt_bool(c, "attention_bias", false))
    config_fail("'attention_bias' = true: moerun's attention projections have no bias");
  if (const std::string act = opt_string(c, "hidden_act", "silu"); act != "silu")
    config_fail(fmt::format("'hidden_act' = '{}': only silu (SwiGLU) is supported", act));
  if (const nlohmann::json* rs = field(c, "rope_scaling"))
    config_fail(fmt::format("'rope_scaling' = {}: only plain RoPE is supported", rs->dump()));

  HfShape s;
  s.vocab = req_int(c, "vocab_size");
  s.hidden = req_int(c, "hidden_size");
  s.layers = req_int(c, "num_hidden_layers");
  s.heads = req_int(c, "num_attention_heads");
  if (const int64_t kv = opt_int(c, "num_key_value_heads", s.heads); kv != s.heads)
    config_fail(
        fmt::format("'num_key_value_heads' = {} differs from num_attention_heads = {}: "
                    "grouped-query attention is not supported",
                    kv, s.heads));
  if (s.heads > 0 && s.hidden % s.heads == 0)
    if (const int64_t hd = opt_int(c, "head_dim", s.hidden / s.heads); hd != s.hidden / s.heads)
      config_fail(fmt::format("'head_dim' = {} differs from hidden_size / num_attention_heads = {}",
                              hd, s.hidden / s.heads));
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
    s.first_k_dense = opt_int(c, "first_k_dense_replace", 0);
    s.expert_width = req_int(c, "moe_intermediate_size");
    s.shared_experts = opt_int(c, "n_shared_experts", 0);
    s.top_k = req_int(c, "num_experts_per_tok");
  } else {
    s.first_k_dense = s.layers;  // no routed experts: every layer is dense
  }
  s.dense_ffn = s.first_k_dense > 0 ? req_int(c, "intermediate_size") : 0;
  s.scoring_func = opt_string(c, "scoring_func", "softmax");
  s.norm_topk_prob = opt_bool(c, "norm_topk_prob", false);
  s.routed_scaling_factor = opt_double(c, "routed_scaling_factor", 1.0);
  s.n_group = opt_int(c, "n_group", 1);
  s.topk_group = opt_int(c, "topk_group", 1);
  s.topk_method = opt_string(c, "topk_method", "greedy");
  s.rope_theta = opt_double(c, "rope_theta", 10000.0);
  s.rms_norm_eps = opt_double(c, "rms_norm_eps", 1e-6);
  s.max_position_embeddings = opt_int(c, "max_position_embeddings", 4096);
  s.torch_dtype = opt_string(c, "torch_dtype", "bfloat16");
  s.score_bias = s.topk_method == "noaux_tc";
  s.validate();
  return s;
}

}  // namespace moerun::io
