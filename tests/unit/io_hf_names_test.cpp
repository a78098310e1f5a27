// moerun <-> HuggingFace DeepSeek names: every moerun tensor is tiled exactly once by its HF
// pieces, the names match lists spelled out here from notes/algorithms.md section 9, the HF side
// is a bijection, and config.json round trips in the V1, DeepSeek-V2 and DeepSeek-V3 layouts
// (MLA, YaRN), with unsupported configs refused.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "io/hf_names.h"
#include "runtime/check.h"

namespace moerun::io {
namespace {

HfShape small_shape() {
  HfShape s;
  s.vocab = 11;
  s.hidden = 8;
  s.layers = 3;
  s.heads = 2;
  s.first_k_dense = 1;
  s.dense_ffn = 6;
  s.experts = 4;
  s.expert_width = 3;
  s.shared_experts = 2;
  s.top_k = 2;
  return s;
}

// A DeepSeek-V3-shaped MLA model (q_lora_rank 0 = a plain q_proj).
HfShape mla_shape(int64_t q_lora_rank) {
  HfShape s = small_shape();
  s.model_type = "deepseek_v3";
  s.mla = true;
  s.heads = 3;  // MLA: no relation between heads and hidden
  s.q_lora_rank = q_lora_rank;
  s.kv_lora_rank = 5;
  s.qk_nope_head_dim = 4;
  s.qk_rope_head_dim = 2;
  s.v_head_dim = 3;
  s.scoring_func = "sigmoid";
  s.topk_method = "noaux_tc";
  s.norm_topk_prob = true;
  s.score_bias = true;
  return s;
}

template <class Fn>
void expect_config_error(Fn&& fn, std::initializer_list<std::string> pieces) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const ConfigError& e) {
    for (const auto& p : pieces)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message lacks '" << p << "': " << e.what();
  }
}

// The expected names and shapes, written out independently of hf_names.cpp.
std::map<std::string, std::vector<int64_t>> expected_moerun(const HfShape& s) {
  const int64_t V = s.vocab, H = s.hidden, D = s.dense_ffn, E = s.experts, F = s.expert_width;
  const int64_t SF = s.shared_experts * F;
  std::map<std::string, std::vector<int64_t>> m = {
      {"embed.weight", {V, H}}, {"norm.weight", {H}}, {"lm_head.weight", {V, H}}};
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    m[p + "attn_norm.weight"] = {H};
    if (!s.mla) {
      m[p + "attn.wqkv"] = {3 * H, H};
      m[p + "attn.wo"] = {H, H};
    } else {
      const int64_t n = s.heads, qk = s.qk_nope_head_dim + s.qk_rope_head_dim;
      if (s.q_lora_rank == 0) {
        m[p + "attn.wq"] = {n * qk, H};
      } else {
        m[p + "attn.wq_a"] = {s.q_lora_rank, H};
        m[p + "attn.q_norm"] = {s.q_lora_rank};
        m[p + "attn.wq_b"] = {n * qk, s.q_lora_rank};
      }
      m[p + "attn.wkv_a"] = {s.kv_lora_rank + s.qk_rope_head_dim, H};
      m[p + "attn.kv_norm"] = {s.kv_lora_rank};
      m[p + "attn.wkv_b"] = {n * (s.qk_nope_head_dim + s.v_head_dim), s.kv_lora_rank};
      m[p + "attn.wo"] = {H, n * s.v_head_dim};
    }
    m[p + "ffn_norm.weight"] = {H};
    if (l < s.first_k_dense) {
      m[p + "ffn.w13"] = {2 * D, H};
      m[p + "ffn.w2"] = {H, D};
    } else {
      m[p + "moe.gate"] = {E, H};
      if (s.score_bias) m[p + "moe.bias"] = {E};
      m[p + "moe.w13"] = {E, 2 * F, H};
      m[p + "moe.w2"] = {E, H, F};
      if (SF) {
        m[p + "moe.shared_w13"] = {2 * SF, H};
        m[p + "moe.shared_w2"] = {H, SF};
      }
    }
  }
  return m;
}

std::map<std::string, std::vector<int64_t>> expected_hf(const HfShape& s) {
  const int64_t V = s.vocab, H = s.hidden, D = s.dense_ffn, E = s.experts, F = s.expert_width;
  const int64_t SF = s.shared_experts * F;
  std::map<std::string, std::vector<int64_t>> m = {{"model.embed_tokens.weight", {V, H}},
                                                   {"model.norm.weight", {H}},
                                                   {"lm_head.weight", {V, H}}};
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m[p + "input_layernorm.weight"] = {H};
    m[p + "post_attention_layernorm.weight"] = {H};
    if (!s.mla) {
      for (const char* x : {"q", "k", "v", "o"}) m[p + "self_attn." + x + "_proj.weight"] = {H, H};
    } else {
      const std::string a = p + "self_attn.";
      const int64_t n = s.heads, qk = s.qk_nope_head_dim + s.qk_rope_head_dim;
      if (s.q_lora_rank == 0) {
        m[a + "q_proj.weight"] = {n * qk, H};
      } else {
        m[a + "q_a_proj.weight"] = {s.q_lora_rank, H};
        m[a + "q_a_layernorm.weight"] = {s.q_lora_rank};
        m[a + "q_b_proj.weight"] = {n * qk, s.q_lora_rank};
      }
      m[a + "kv_a_proj_with_mqa.weight"] = {s.kv_lora_rank + s.qk_rope_head_dim, H};
      m[a + "kv_a_layernorm.weight"] = {s.kv_lora_rank};
      m[a + "kv_b_proj.weight"] = {n * (s.qk_nope_head_dim + s.v_head_dim), s.kv_lora_rank};
      m[a + "o_proj.weight"] = {H, n * s.v_head_dim};
    }
    if (l < s.first_k_dense) {
      m[p + "mlp.gate_proj.weight"] = {D, H};
      m[p + "mlp.up_proj.weight"] = {D, H};
      m[p + "mlp.down_proj.weight"] = {H, D};
    } else {
      m[p + "mlp.gate.weight"] = {E, H};
      if (s.score_bias) m[p + "mlp.gate.e_score_correction_bias"] = {E};
      for (int64_t j = 0; j < E; ++j) {
        const std::string e = p + "mlp.experts." + std::to_string(j) + ".";
        m[e + "gate_proj.weight"] = {F, H};
        m[e + "up_proj.weight"] = {F, H};
        m[e + "down_proj.weight"] = {H, F};
      }
      if (SF) {
        m[p + "mlp.shared_experts.gate_proj.weight"] = {SF, H};
        m[p + "mlp.shared_experts.up_proj.weight"] = {SF, H};
        m[p + "mlp.shared_experts.down_proj.weight"] = {H, SF};
      }
    }
  }
  return m;
}

void check_map(const HfShape& s) {
  const std::vector<HfTensor> map = hf_tensor_map(s);
  std::map<std::string, std::vector<int64_t>> got_moerun, got_hf;
  size_t pieces = 0;
  for (const HfTensor& t : map) {
    SCOPED_TRACE(t.name);
    EXPECT_TRUE(got_moerun.emplace(t.name, t.shape).second) << "repeated moerun name";
    EXPECT_EQ(t.is_expert, t.name.ends_with("moe.w13") || t.name.ends_with("moe.w2"));
    EXPECT_EQ(t.f32_in_hf, t.name.ends_with("moe.bias"));
    // Tiling: every element covered exactly once; pieces in ascending order, row-aligned.
    std::vector<int> cover(static_cast<size_t>(t.numel()), 0);
    int64_t last = -1;
    for (const HfPiece& p : t.pieces) {
      EXPECT_GT(p.offset, last);
      last = p.offset;
      ASSERT_GE(p.offset, 0);
      ASSERT_LE(p.offset + p.numel(), t.numel()) << p.hf_name;
      EXPECT_EQ(p.hf_shape.back(), t.shape.back()) << p.hf_name;
      EXPECT_EQ(p.offset % t.shape.back(), 0) << p.hf_name;
      for (int64_t i = p.offset; i < p.offset + p.numel(); ++i) ++cover[static_cast<size_t>(i)];
      EXPECT_TRUE(got_hf.emplace(p.hf_name, p.hf_shape).second) << "repeated " << p.hf_name;
      if (t.is_expert) {
        // Expert J's pieces sit in slab J of dim 0.
        const int64_t slab = t.numel() / t.shape[0];
        EXPECT_EQ(p.offset / slab, p.expert) << p.hf_name;
        EXPECT_NE(p.hf_name.find(".experts." + std::to_string(p.expert) + "."), std::string::npos);
      } else {
        EXPECT_EQ(p.expert, -1);
      }
      ++pieces;
    }
    for (size_t i = 0; i < cover.size(); ++i) ASSERT_EQ(cover[i], 1) << "element " << i;
  }
  EXPECT_EQ(got_moerun, expected_moerun(s));
  EXPECT_EQ(got_hf, expected_hf(s));

  // The inverse is a bijection: every HF name leads back to its own piece.
  const auto index = hf_piece_index(map);
  EXPECT_EQ(index.size(), pieces);
  for (const auto& [name, loc] : index) {
    ASSERT_LT(loc.tensor, map.size());
    ASSERT_LT(loc.piece, map[loc.tensor].pieces.size());
    EXPECT_EQ(map[loc.tensor].pieces[loc.piece].hf_name, name);
  }
}

TEST(IoHfNames, PiecesTileEveryTensorOnce) {
  HfShape s = small_shape();
  check_map(s);
  s.score_bias = false;
  s.shared_experts = 0;
  check_map(s);
  s.first_k_dense = 0;
  check_map(s);
  HfShape dense = small_shape();
  dense.experts = 0;
  dense.first_k_dense = dense.layers;
  check_map(dense);
  for (int64_t q_lora : {0, 6}) {
    SCOPED_TRACE(q_lora);
    HfShape m = mla_shape(q_lora);
    check_map(m);
    m.experts = 0;
    m.first_k_dense = m.layers;
    check_map(m);
  }
}

// The MLA tensors in the order the MLA module lists its parameters, 1:1 with the HF tensors.
TEST(IoHfNames, MlaTensorsInParameterOrder) {
  for (int64_t q_lora : {0, 6}) {
    const HfShape s = mla_shape(q_lora);
    std::vector<std::string> attn;
    for (const HfTensor& t : hf_tensor_map(s))
      if (t.name.starts_with("layers.1.attn")) {
        attn.push_back(t.name + "=" + t.pieces.at(0).hf_name);
        EXPECT_EQ(t.pieces.size(), 1u);
      }
    std::vector<std::string> want;
    const std::string a = "=model.layers.1.self_attn.";
    if (q_lora == 0) {
      want.push_back("layers.1.attn.wq" + a + "q_proj.weight");
    } else {
      want.push_back("layers.1.attn.wq_a" + a + "q_a_proj.weight");
      want.push_back("layers.1.attn.q_norm" + a + "q_a_layernorm.weight");
      want.push_back("layers.1.attn.wq_b" + a + "q_b_proj.weight");
    }
    want.push_back("layers.1.attn.wkv_a" + a + "kv_a_proj_with_mqa.weight");
    want.push_back("layers.1.attn.kv_norm" + a + "kv_a_layernorm.weight");
    want.push_back("layers.1.attn.wkv_b" + a + "kv_b_proj.weight");
    want.push_back("layers.1.attn.wo" + a + "o_proj.weight");
    want.insert(want.begin(), "layers.1.attn_norm.weight=model.layers.1.input_layernorm.weight");
    EXPECT_EQ(attn, want);
  }
}

TEST(IoHfNames, PlacesPiecesWhereTheModelKeepsThem) {
  const HfShape s = small_shape();
  const int64_t H = s.hidden, F = s.expert_width, D = s.dense_ffn, SF = s.shared_experts * F;
  const std::vector<HfTensor> map = hf_tensor_map(s);
  const auto index = hf_piece_index(map);
  auto at = [&](const std::string& hf) -> const HfPiece& {
    const HfLocation& l = index.at(hf);
    return map[l.tensor].pieces[l.piece];
  };
  auto owner = [&](const std::string& hf) { return map[index.at(hf).tensor].name; };
  EXPECT_EQ(owner("model.layers.1.mlp.experts.2.up_proj.weight"), "layers.1.moe.w13");
  EXPECT_EQ(at("model.layers.1.mlp.experts.2.gate_proj.weight").offset, 2 * 2 * F * H);
  EXPECT_EQ(at("model.layers.1.mlp.experts.2.up_proj.weight").offset, 2 * 2 * F * H + F * H);
  EXPECT_EQ(at("model.layers.2.mlp.experts.3.down_proj.weight").offset, 3 * H * F);
  EXPECT_EQ(owner("model.layers.0.self_attn.k_proj.weight"), "layers.0.attn.wqkv");
  EXPECT_EQ(at("model.layers.0.self_attn.k_proj.weight").offset, H * H);
  EXPECT_EQ(at("model.layers.0.self_attn.v_proj.weight").offset, 2 * H * H);
  EXPECT_EQ(owner("model.layers.0.mlp.up_proj.weight"), "layers.0.ffn.w13");
  EXPECT_EQ(at("model.layers.0.mlp.up_proj.weight").offset, D * H);
  EXPECT_EQ(at("model.layers.1.mlp.shared_experts.up_proj.weight").offset, SF * H);
  EXPECT_EQ(owner("model.layers.1.mlp.gate.e_score_correction_bias"), "layers.1.moe.bias");
  EXPECT_EQ(owner("model.embed_tokens.weight"), "embed.weight");
  EXPECT_EQ(owner("lm_head.weight"), "lm_head.weight");
}

TEST(IoHfNames, ConfigRoundTrip) {
  HfShape s = small_shape();
  s.scoring_func = "sigmoid";
  s.norm_topk_prob = true;
  s.routed_scaling_factor = 2.5;
  s.n_group = 2;
  s.topk_group = 1;
  s.topk_method = "noaux_tc";
  s.rope_theta = 5e5;
  s.rms_norm_eps = 1e-5;
  s.max_position_embeddings = 2048;
  s.torch_dtype = "float32";
  const nlohmann::json c = hf_config(s);
  EXPECT_EQ(c["model_type"], "deepseek");
  EXPECT_EQ(c["architectures"], nlohmann::json::array({"DeepseekForCausalLM"}));
  EXPECT_EQ(c["first_k_dense_replace"], 1);
  EXPECT_EQ(c["intermediate_size"], 6);
  EXPECT_EQ(c["moe_intermediate_size"], 3);
  EXPECT_EQ(c["n_routed_experts"], 4);
  EXPECT_EQ(c["n_shared_experts"], 2);
  EXPECT_EQ(c["num_experts_per_tok"], 2);
  EXPECT_EQ(c["moe_layer_freq"], 1);
  EXPECT_EQ(c["tie_word_embeddings"], false);
  for (const auto& text : {c.dump(), c.dump(2)}) {
    const HfShape b = hf_shape_from_config(nlohmann::json::parse(text));
    EXPECT_EQ(b.vocab, s.vocab);
    EXPECT_EQ(b.hidden, s.hidden);
    EXPECT_EQ(b.layers, s.layers);
    EXPECT_EQ(b.heads, s.heads);
    EXPECT_EQ(b.first_k_dense, s.first_k_dense);
    EXPECT_EQ(b.dense_ffn, s.dense_ffn);
    EXPECT_EQ(b.experts, s.experts);
    EXPECT_EQ(b.expert_width, s.expert_width);
    EXPECT_EQ(b.shared_experts, s.shared_experts);
    EXPECT_EQ(b.top_k, s.top_k);
    EXPECT_EQ(b.score_bias, true);
    EXPECT_EQ(b.scoring_func, s.scoring_func);
    EXPECT_EQ(b.norm_topk_prob, s.norm_topk_prob);
    EXPECT_EQ(b.routed_scaling_factor, s.routed_scaling_factor);
    EXPECT_EQ(b.n_group, s.n_group);
    EXPECT_EQ(b.topk_group, s.topk_group);
    EXPECT_EQ(b.topk_method, s.topk_method);
    EXPECT_EQ(b.rope_theta, s.rope_theta);
    EXPECT_EQ(b.rms_norm_eps, s.rms_norm_eps);
    EXPECT_EQ(b.max_position_embeddings, s.max_position_embeddings);
    EXPECT_EQ(b.torch_dtype, s.torch_dtype);
  }
  // All dense: n_routed_experts null, every layer dense.
  HfShape d = small_shape();
  d.experts = 0;
  d.first_k_dense = d.layers;
  const nlohmann::json dc = hf_config(d);
  EXPECT_TRUE(dc["n_routed_experts"].is_null());
  const HfShape db = hf_shape_from_config(dc);
  EXPECT_EQ(db.experts, 0);
  EXPECT_EQ(db.first_k_dense, d.layers);
  EXPECT_EQ(db.dense_ffn, d.dense_ffn);
  // No dense layers: dense_ffn reads back as 0 whatever intermediate_size says.
  HfShape m = small_shape();
  m.first_k_dense = 0;
  m.dense_ffn = 0;
  EXPECT_EQ(hf_shape_from_config(hf_config(m)).dense_ffn, 0);

  expect_config_error(
      [] {
        HfShape bad = small_shape();
        bad.top_k = 9;
        hf_config(bad);
      },
      {"num_experts_per_tok"});
}

TEST(IoHfNames, ReadsADeepSeekMoEConfig) {
  // The fields of deepseek-moe-16b-base's config.json (V1).
  const auto c = nlohmann::json::parse(R"({
    "architectures": ["DeepseekForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001,
    "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 10944, "max_position_embeddings": 4096,
    "model_type": "deepseek", "moe_intermediate_size": 1408, "moe_layer_freq": 1,
    "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false,
    "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 28,
    "num_key_value_heads": 16, "pretraining_tp": 1, "rms_norm_eps": 1e-06, "rope_scaling": null,
    "rope_theta": 10000, "scoring_func": "softmax", "seq_aux": true,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
    "vocab_size": 102400})");
  const HfShape s = hf_shape_from_config(c);
  EXPECT_EQ(s.vocab, 102400);
  EXPECT_EQ(s.hidden, 2048);
  EXPECT_EQ(s.layers, 28);
  EXPECT_EQ(s.heads, 16);
  EXPECT_EQ(s.first_k_dense, 1);
  EXPECT_EQ(s.dense_ffn, 10944);
  EXPECT_EQ(s.experts, 64);
  EXPECT_EQ(s.expert_width, 1408);
  EXPECT_EQ(s.shared_experts, 2);
  EXPECT_EQ(s.top_k, 6);
  EXPECT_EQ(s.scoring_func, "softmax");
  EXPECT_EQ(s.topk_method, "greedy");
  EXPECT_FALSE(s.norm_topk_prob);
  EXPECT_EQ(s.routed_scaling_factor, 1.0);
  EXPECT_FALSE(s.score_bias);
  EXPECT_EQ(hf_tensor_map(s).size(), 3u + 28 * 4 + 2 + 27 * 5);
}

TEST(IoHfNames, RefusesUnsupportedConfigs) {
  const nlohmann::json base = hf_config(small_shape());
  auto with = [&](const char* key, nlohmann::json v) {
    nlohmann::json c = base;
    c[key] = std::move(v);
    return c;
  };
  // MLA needs the V2/V3 layout and its fields.
  expect_config_error([&] { hf_shape_from_config(with("kv_lora_rank", 512)); },
                      {"kv_lora_rank", "512", "deepseek_v2 or deepseek_v3"});
  expect_config_error([&] { hf_shape_from_config(with("q_lora_rank", 1536)); },
                      {"q_lora_rank", "without kv_lora_rank"});
  nlohmann::json lite = with("q_lora_rank", nullptr);
  lite["kv_lora_rank"] = 512;
  lite["model_type"] = "deepseek_v2";
  expect_config_error([&] { hf_shape_from_config(lite); }, {"qk_nope_head_dim", "missing"});
  expect_config_error(
      [&] {
        hf_shape_from_config(with("quantization_config", {{"quant_method", "fp8"}}));
      },
      {"quantization_config", "fp8", "FP8"});
  expect_config_error([&] { hf_shape_from_config(with("mlp_bias", true)); }, {"mlp_bias"});
  // Both null: plain attention, accepted.
  nlohmann::json nulls = with("q_lora_rank", nullptr);
  nulls["kv_lora_rank"] = nullptr;
  EXPECT_EQ(hf_shape_from_config(nulls).hidden, 8);
  expect_config_error([&] { hf_shape_from_config(with("moe_layer_freq", 2)); },
                      {"moe_layer_freq", "2"});
  expect_config_error([&] { hf_shape_from_config(with("num_key_value_heads", 1)); },
                      {"num_key_value_heads", "grouped-query"});
  expect_config_error([&] { hf_shape_from_config(with("tie_word_embeddings", true)); },
                      {"tie_word_embeddings"});
  expect_config_error([&] { hf_shape_from_config(with("model_type", "mixtral")); },
                      {"model_type", "mixtral"});
  expect_config_error([&] { hf_shape_from_config(with("hidden_act", "gelu")); }, {"hidden_act"});
  expect_config_error(
      [&] {
        hf_shape_from_config(with("rope_scaling", {{"type", "yarn"}}));
      },
      {"rope_scaling", "YaRN needs multi-head latent attention"});
  expect_config_error(
      [&] {
        hf_shape_from_config(with("rope_scaling", {{"type", "linear"}, {"factor", 2}}));
      },
      {"rope_scaling", "'linear' is not supported"});
  expect_config_error(
      [&] {
        hf_shape_from_config(with("rope_parameters", {{"rope_type", "dynamic"}}));
      },
      {"rope_parameters", "'dynamic'"});
  // rope_parameters of a plain RoPE model (transformers 5 spelling) is fine.
  EXPECT_EQ(
      hf_shape_from_config(with("rope_parameters", {{"rope_type", "default"}, {"rope_theta", 5e4}}))
          .rope_theta,
      5e4);
  expect_config_error([&] { hf_shape_from_config(with("hidden_size", "2048")); },
                      {"hidden_size", "integer"});
  expect_config_error([&] { hf_shape_from_config(with("scoring_func", "relu")); },
                      {"scoring_func", "relu"});
  expect_config_error([&] { hf_shape_from_config(with("topk_group", 5)); }, {"topk_group"});
  expect_config_error([&] { hf_shape_from_config(with("num_attention_heads", 3)); },
                      {"num_attention_heads"});
  nlohmann::json missing = base;
  missing.erase("moe_intermediate_size");
  expect_config_error([&] { hf_shape_from_config(missing); }, {"moe_intermediate_size", "missing"});
  expect_config_error([&] { hf_shape_from_config(nlohmann::json::array()); },
                      {"not a JSON object"});
}

// A MoE config without n_routed_experts names that key (it used to read as a dense model, and the
// import then reported a missing dense MLP tensor). A dense config (null, as hf_config writes it,
// or absent) is still accepted.
TEST(IoHfNames, MissingRoutedExpertsNamesTheKey) {
  nlohmann::json moe = hf_config(small_shape());
  ASSERT_GT(moe.at("n_routed_experts").get<int64_t>(), 0);
  moe.erase("n_routed_experts");
  expect_config_error([&] { hf_shape_from_config(moe); },
                      {"'n_routed_experts' is missing", "moe_intermediate_size"});
  moe["n_routed_experts"] = nullptr;
  expect_config_error([&] { hf_shape_from_config(moe); }, {"'n_routed_experts' is missing"});

  HfShape dense = small_shape();
  dense.experts = dense.expert_width = dense.shared_experts = dense.top_k = 0;
  dense.first_k_dense = dense.layers;
  nlohmann::json d = hf_config(dense);
  EXPECT_EQ(hf_shape_from_config(d).experts, 0);
  d.erase("n_routed_experts");
  EXPECT_EQ(hf_shape_from_config(d).first_k_dense, dense.layers);
}

void expect_same_mla(const HfShape& b, const HfShape& s) {
  EXPECT_EQ(b.model_type, s.model_type);
  EXPECT_EQ(b.mla, s.mla);
  EXPECT_EQ(b.q_lora_rank, s.q_lora_rank);
  EXPECT_EQ(b.kv_lora_rank, s.kv_lora_rank);
  EXPECT_EQ(b.qk_nope_head_dim, s.qk_nope_head_dim);
  EXPECT_EQ(b.qk_rope_head_dim, s.qk_rope_head_dim);
  EXPECT_EQ(b.v_head_dim, s.v_head_dim);
  EXPECT_EQ(b.rope_interleave, s.rope_interleave);
  EXPECT_EQ(b.yarn, s.yarn);
  EXPECT_EQ(b.yarn_factor, s.yarn_factor);
  EXPECT_EQ(b.yarn_original_max_position, s.yarn_original_max_position);
  EXPECT_EQ(b.yarn_beta_fast, s.yarn_beta_fast);
  EXPECT_EQ(b.yarn_beta_slow, s.yarn_beta_slow);
  EXPECT_EQ(b.yarn_mscale, s.yarn_mscale);
  EXPECT_EQ(b.yarn_mscale_all_dim, s.yarn_mscale_all_dim);
  EXPECT_EQ(b.experts, s.experts);
  EXPECT_EQ(b.first_k_dense, s.first_k_dense);
  EXPECT_EQ(b.dense_ffn, s.dense_ffn);
  EXPECT_EQ(b.expert_width, s.expert_width);
  EXPECT_EQ(b.shared_experts, s.shared_experts);
  EXPECT_EQ(b.top_k, s.top_k);
  EXPECT_EQ(b.scoring_func, s.scoring_func);
  EXPECT_EQ(b.topk_method, s.topk_method);
  EXPECT_EQ(b.norm_topk_prob, s.norm_topk_prob);
  EXPECT_EQ(b.routed_scaling_factor, s.routed_scaling_factor);
  EXPECT_EQ(b.n_group, s.n_group);
  EXPECT_EQ(b.topk_group, s.topk_group);
  EXPECT_EQ(b.score_bias, s.score_bias);
  EXPECT_EQ(b.torch_dtype, s.torch_dtype);
}

TEST(IoHfNames, MlaConfigRoundTrip) {
  HfShape v3 = mla_shape(6);
  v3.routed_scaling_factor = 2.5;
  v3.n_group = 2;
  v3.topk_group = 1;
  v3.rope_interleave = false;
  v3.yarn = true;
  v3.yarn_factor = 40;
  v3.yarn_original_max_position = 4096;
  v3.yarn_beta_fast = 32;
  v3.yarn_beta_slow = 1;
  v3.yarn_mscale = 1;
  v3.yarn_mscale_all_dim = 1;
  v3.torch_dtype = "float32";
  const nlohmann::json c = hf_config(v3);
  EXPECT_EQ(c["architectures"], nlohmann::json::array({"DeepseekV3ForCausalLM"}));
  EXPECT_EQ(c["q_lora_rank"], 6);
  EXPECT_EQ(c["head_dim"], 2);
  EXPECT_EQ(c["num_nextn_predict_layers"], 0);
  EXPECT_EQ(c["rope_parameters"]["rope_type"], "yarn");
  EXPECT_EQ(c["rope_scaling"]["type"], "yarn");
  EXPECT_EQ(c["dtype"], "float32");
  expect_same_mla(hf_shape_from_config(nlohmann::json::parse(c.dump())), v3);
  // The legacy spelling alone reads the same.
  nlohmann::json legacy = c;
  legacy.erase("rope_parameters");
  expect_same_mla(hf_shape_from_config(legacy), v3);

  HfShape v2 = mla_shape(0);
  v2.model_type = "deepseek_v2";
  v2.scoring_func = "softmax";
  v2.topk_method = "group_limited_greedy";
  v2.norm_topk_prob = false;
  v2.score_bias = false;
  v2.n_group = 2;
  v2.topk_group = 1;
  v2.routed_scaling_factor = 16;
  const nlohmann::json c2 = hf_config(v2);
  EXPECT_EQ(c2["architectures"], nlohmann::json::array({"DeepseekV2ForCausalLM"}));
  EXPECT_TRUE(c2["q_lora_rank"].is_null());
  EXPECT_FALSE(c2.contains("rope_interleave"));
  EXPECT_TRUE(c2["rope_scaling"].is_null());
  expect_same_mla(hf_shape_from_config(c2), v2);

  // No MoE layer: transformers wants integers, so one unused expert; reads back as dense.
  HfShape dense = mla_shape(0);
  dense.experts = 0;
  dense.first_k_dense = dense.layers;
  const nlohmann::json dc = hf_config(dense);
  EXPECT_EQ(dc["n_routed_experts"], 1);
  EXPECT_EQ(dc["first_k_dense_replace"], dense.layers);
  const HfShape db = hf_shape_from_config(dc);
  EXPECT_EQ(db.experts, 0);
  EXPECT_EQ(db.first_k_dense, dense.layers);
  EXPECT_EQ(db.dense_ffn, dense.dense_ffn);
}

// What each layout cannot express is refused by name before anything is written.
TEST(IoHfNames, LayoutsRefuseWhatTheirModelCannotCompute) {
  HfShape s = mla_shape(0);
  s.scoring_func = "softmax";
  expect_config_error([&] { hf_config(s); }, {"deepseek_v3", "scoring_func", "sigmoid"});
  s = mla_shape(0);
  s.score_bias = false;
  expect_config_error([&] { hf_config(s); }, {"deepseek_v3", "e_score_correction_bias"});
  s = mla_shape(0);
  s.model_type = "deepseek_v2";
  expect_config_error([&] { hf_config(s); }, {"deepseek_v2", "scoring_func", "softmax"});
  s.scoring_func = "softmax";
  s.topk_method = "greedy";
  s.score_bias = false;
  expect_config_error([&] { hf_config(s); }, {"deepseek_v2", "norm_topk_prob"});
  s.norm_topk_prob = false;
  EXPECT_NO_THROW(hf_config(s));
  s.model_type = "deepseek";
  expect_config_error([&] { hf_config(s); }, {"deepseek", "deepseek_v2 or deepseek_v3"});
  HfShape mha = small_shape();
  mha.model_type = "deepseek_v3";
  expect_config_error([&] { hf_config(mha); }, {"deepseek_v3", "multi-head latent attention"});
  mha.model_type = "deepseek";
  mha.yarn = true;
  expect_config_error([&] { hf_config(mha); }, {"YaRN"});
  HfShape odd = mla_shape(0);
  odd.qk_rope_head_dim = 3;
  expect_config_error([&] { hf_config(odd); }, {"qk_rope_head_dim", "even"});
}

// deepseek-ai/DeepSeek-V3's config.json (FP8 quantization_config removed), DeepSeek-V2-Lite's,
// read as transformers routes them.
TEST(IoHfNames, ReadsDeepSeekV2AndV3Configs) {
  nlohmann::json v3 = nlohmann::json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
    "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02,
    "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "model_type": "deepseek_v3", "moe_intermediate_size": 2048, "moe_layer_freq": 1,
    "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
    "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
    "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16", "use_cache": true, "v_head_dim": 128, "vocab_size": 129280})");
  const HfShape s = hf_shape_from_config(v3);
  EXPECT_TRUE(s.mla);
  EXPECT_EQ(s.q_lora_rank, 1536);
  EXPECT_EQ(s.kv_lora_rank, 512);
  EXPECT_EQ(s.qk_head_dim(), 192);
  EXPECT_EQ(s.mtp_layers, 1);
  EXPECT_TRUE(s.yarn);
  EXPECT_EQ(s.yarn_factor, 40);
  EXPECT_EQ(s.yarn_mscale_all_dim, 1.0);
  EXPECT_TRUE(s.rope_interleave);
  EXPECT_EQ(s.first_k_dense, 3);
  EXPECT_EQ(s.experts, 256);
  EXPECT_EQ(s.n_group, 8);
  EXPECT_EQ(s.topk_group, 4);
  EXPECT_TRUE(s.score_bias);
  EXPECT_TRUE(s.norm_topk_prob);
  EXPECT_EQ(s.routed_scaling_factor, 2.5);
  // 3 + 3 dense layers * 11 + 58 MoE layers * (9 + gate + bias + w13 + w2 + shared 2).
  EXPECT_EQ(hf_tensor_map(s).size(), 3u + 3 * (2 + 7 + 2) + 58 * (2 + 7 + 6));
  nlohmann::json fp8 = v3;
  fp8["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
  expect_config_error([&] { hf_shape_from_config(fp8); }, {"quantization_config", "FP8"});
  nlohmann::json softmax = v3;
  softmax["scoring_func"] = "softmax";
  expect_config_error([&] { hf_shape_from_config(softmax); }, {"scoring_func", "DeepseekV3"});
  nlohmann::json af = v3;
  af["rope_scaling"]["attention_factor"] = 1.2;
  expect_config_error([&] { hf_shape_from_config(af); }, {"attention_factor"});

  const nlohmann::json lite = nlohmann::json::parse(R"({
    "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": false,
    "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 10944, "kv_lora_rank": 512, "max_position_embeddings": 163840,
    "model_type": "deepseek_v2", "moe_intermediate_size": 1408, "moe_layer_freq": 1,
    "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false,
    "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
    "num_key_value_heads": 16, "q_lora_rank": null, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
    "tie_word_embeddings": false, "topk_group": 1, "topk_method": "greedy",
    "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 102400})");
  const HfShape l = hf_shape_from_config(lite);
  EXPECT_EQ(l.model_type, "deepseek_v2");
  EXPECT_EQ(l.q_lora_rank, 0);
  EXPECT_EQ(l.yarn_mscale, 0.707);
  EXPECT_FALSE(l.score_bias);
  EXPECT_EQ(l.topk_method, "greedy");
  EXPECT_EQ(l.mtp_layers, 0);
  nlohmann::json noaux = lite;
  noaux["topk_method"] = "noaux_tc";
  expect_config_error([&] { hf_shape_from_config(noaux); }, {"topk_method", "DeepseekV2"});
}

}  // namespace
}  // namespace moerun::io
