// moerun <-> HuggingFace DeepSeek names: every moerun tensor is tiled exactly once by its HF
// pieces, the names match lists spelled out here from notes/algorithms.md section 9, the HF side
// is a bijection, and config.json round trips (with MLA and other unsupported configs refused).
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
    m[p + "attn.wqkv"] = {3 * H, H};
    m[p + "attn.wo"] = {H, H};
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
    for (const char* x : {"q", "k", "v", "o"}) m[p + "self_attn." + x + "_proj.weight"] = {H, H};
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
  expect_config_error([&] { hf_shape_from_config(with("kv_lora_rank", 512)); },
                      {"kv_lora_rank", "512", "multi-head latent attention"});
  expect_config_error([&] { hf_shape_from_config(with("q_lora_rank", 1536)); }, {"q_lora_rank"});
  // V2-Lite style: q_lora_rank null but kv_lora_rank set.
  nlohmann::json lite = with("q_lora_rank", nullptr);
  lite["kv_lora_rank"] = 512;
  lite["model_type"] = "deepseek_v2";
  expect_config_error([&] { hf_shape_from_config(lite); }, {"kv_lora_rank"});
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
      {"rope_scaling"});
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

}  // namespace
}  // namespace moerun::io
