// MLA as a model option: --attention and the MLA / YaRN options parse into ModelConfig (and refuse
// to go with --attention mha, naming the option), validate naming the option, survive to_ini and
// the checkpoint meta (meta.model) unchanged; a meta without the MLA keys (an older checkpoint)
// reads back as MHA; a resume mismatch names --attention or the MLA size that differs.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "jobs/checkpoint_schema.h"
#include "jobs/train_options.h"
#include "runtime/check.h"
#include "tests/common/expect_error.h"

namespace moerun::testing {
namespace {

TrainConfig parse_args(std::vector<std::string> args) {
  args.insert(args.begin(), "train");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  TrainConfig cfg;
  EXPECT_TRUE(parse_train_config(static_cast<int>(argv.size()), argv.data(), cfg, false));
  return cfg;
}

const std::vector<std::string> kMla = {"--attention",
                                       "mla",
                                       "--q-lora-rank",
                                       "24",
                                       "--kv-lora-rank",
                                       "20",
                                       "--qk-nope-head-dim",
                                       "12",
                                       "--qk-rope-head-dim",
                                       "6",
                                       "--v-head-dim",
                                       "10",
                                       "--rope-interleave",
                                       "false",
                                       "--rope-scaling",
                                       "yarn",
                                       "--rope-scaling-factor",
                                       "8",
                                       "--rope-original-max-position",
                                       "64",
                                       "--rope-beta-fast",
                                       "24",
                                       "--rope-beta-slow",
                                       "2",
                                       "--rope-mscale",
                                       "0.707",
                                       "--rope-mscale-all-dim",
                                       "0.5",
                                       "--rope-theta",
                                       "50000"};

TEST(MlaOptions, ParseIntoModelConfig) {
  const ModelConfig m = parse_args(kMla).model;
  EXPECT_EQ(m.attention, AttentionKind::kMLA);
  EXPECT_EQ(m.mla.q_lora_rank, 24);
  EXPECT_EQ(m.mla.kv_lora_rank, 20);
  EXPECT_EQ(m.mla.qk_nope_head_dim, 12);
  EXPECT_EQ(m.mla.qk_rope_head_dim, 6);
  EXPECT_EQ(m.mla.v_head_dim, 10);
  EXPECT_FALSE(m.mla.rope_interleave);
  EXPECT_TRUE(m.rope_scaling.yarn);
  EXPECT_EQ(m.rope_scaling.factor, 8.0);
  EXPECT_EQ(m.rope_scaling.original_max_position, 64);
  EXPECT_EQ(m.rope_scaling.beta_fast, 24.0);
  EXPECT_EQ(m.rope_scaling.beta_slow, 2.0);
  EXPECT_EQ(m.rope_scaling.mscale, 0.707);
  EXPECT_EQ(m.rope_scaling.mscale_all_dim, 0.5);
  EXPECT_EQ(m.rope_theta, 50000.0);
  EXPECT_NO_THROW(m.validate(1));

  // The defaults: MHA with MLAConfig{} and no YaRN; --attention mla alone gives a small MLA
  // with interleaved RoPE and no scaling.
  const ModelConfig d = parse_args({}).model;
  EXPECT_EQ(d.attention, AttentionKind::kMHA);
  EXPECT_EQ(d.mla.kv_lora_rank, 0);
  EXPECT_FALSE(d.rope_scaling.yarn);
  EXPECT_EQ(d.rope_theta, 10000.0);
  const ModelConfig a = parse_args({"--attention", "mla"}).model;
  EXPECT_EQ(a.attention, AttentionKind::kMLA);
  EXPECT_GT(a.mla.kv_lora_rank, 0);
  EXPECT_TRUE(a.mla.rope_interleave);
  EXPECT_FALSE(a.rope_scaling.yarn);
  EXPECT_NO_THROW(a.validate(1));
}

TEST(MlaOptions, BadCombinationsNameTheOption) {
  auto bad = [](std::vector<std::string> args, std::initializer_list<std::string> pieces) {
    SCOPED_TRACE(args.front());
    expect_error([&] { parse_args(args); }, pieces);
  };
  // MLA options with MHA (the default, or said).
  bad({"--kv-lora-rank", "32"}, {"--kv-lora-rank", "--attention mla"});
  bad({"--attention", "mha", "--q-lora-rank", "16"}, {"--q-lora-rank", "--attention mla"});
  bad({"--rope-interleave", "false"}, {"--rope-interleave", "--attention mla"});
  bad({"--rope-scaling", "yarn"}, {"--rope-scaling", "--attention mla"});
  bad({"--rope-mscale", "0.7"}, {"--rope-mscale", "--attention mla"});
  // YaRN options without YaRN; unknown values; bounds.
  bad({"--attention", "mla", "--rope-scaling-factor", "40"},
      {"--rope-scaling-factor", "--rope-scaling yarn"});
  bad({"--attention", "gqa"}, {"--attention", "mha or mla", "gqa"});
  bad({"--attention", "mla", "--rope-scaling", "ntk"}, {"--rope-scaling", "ntk"});
  bad({"--attention", "mla", "--kv-lora-rank", "0"}, {"--kv-lora-rank", ">= 1"});
  bad({"--attention", "mla", "--qk-rope-head-dim", "1"}, {"--qk-rope-head-dim"});
  bad({"--attention", "mla", "--rope-scaling", "yarn", "--rope-scaling-factor", "0.5"},
      {"--rope-scaling-factor", ">= 1"});

  // ModelConfig::validate, for configs built in code.
  ModelConfig m = parse_args({"--attention", "mla"}).model;
  auto invalid = [&m](auto edit, std::initializer_list<std::string> pieces) {
    ModelConfig c = m;
    edit(c);
    expect_error([&] { c.validate(1); }, pieces);
  };
  invalid([](ModelConfig& c) { c.mla.qk_rope_head_dim = 7; }, {"--qk-rope-head-dim", "even"});
  invalid([](ModelConfig& c) { c.mla.kv_lora_rank = 0; }, {"--kv-lora-rank"});
  invalid([](ModelConfig& c) { c.mla.v_head_dim = 0; }, {"--v-head-dim"});
  invalid([](ModelConfig& c) { c.mla.qk_nope_head_dim = -1; }, {"--qk-nope-head-dim"});
  invalid([](ModelConfig& c) { c.mla.q_lora_rank = -2; }, {"--q-lora-rank"});
  invalid(
      [](ModelConfig& c) {
        c.rope_scaling.yarn = true;
        c.rope_scaling.beta_fast = 0.5;
      },
      {"--rope-beta-fast", "--rope-beta-slow"});
  invalid(
      [](ModelConfig& c) {
        c.attention = AttentionKind::kMHA;
        c.rope_scaling.yarn = true;
      },
      {"--rope-scaling yarn", "--attention mla"});
  // MLA's heads need not divide H (V3: 128 heads of 128 + 64 on H 7168 would; 3 heads on 16 too).
  ModelConfig odd = m;
  odd.hidden = odd.moe.hidden = 16;
  odd.heads = 3;
  EXPECT_NO_THROW(odd.validate(1));
  odd.attention = AttentionKind::kMHA;
  expect_error([&] { odd.validate(1); }, {"--hidden", "--heads"});
}

TEST(MlaOptions, IniAndCheckpointMetaRoundTrip) {
  for (const std::vector<std::string>& args :
       {kMla, std::vector<std::string>{"--attention", "mla", "--rope-scaling", "yarn"},
        std::vector<std::string>{"--rope-theta", "20000"}, std::vector<std::string>{}}) {
    SCOPED_TRACE(args.empty() ? "defaults" : args.front() + " " + args[1]);
    const TrainConfig cfg = parse_args(args);
    // to_ini reads back as the same model (an MHA run's INI has no MLA key: it would be refused).
    const std::string ini = to_ini(cfg);
    EXPECT_EQ(ini.find("kv-lora-rank") != std::string::npos,
              cfg.model.attention == AttentionKind::kMLA);
    const std::string path = ::testing::TempDir() + "/mla_options_roundtrip.ini";
    {
      FILE* f = std::fopen(path.c_str(), "w");
      ASSERT_NE(f, nullptr);
      std::fputs(ini.c_str(), f);
      std::fclose(f);
    }
    const ModelConfig back = parse_args({"--config", path}).model;
    EXPECT_EQ(model_meta(back), model_meta(cfg.model)) << ini;

    // meta.model through JSON text, as the manifest stores it.
    TrainMeta t;
    t.model = cfg.model;
    t.config_ini = ini;
    const nlohmann::json meta = nlohmann::json::parse(t.to_json().dump());
    const TrainMeta r = TrainMeta::from_json(meta, "test");
    EXPECT_EQ(model_meta(r.model), model_meta(cfg.model));
    EXPECT_EQ(r.model.attention, cfg.model.attention);
    EXPECT_EQ(r.model.mla.rope_interleave, cfg.model.mla.rope_interleave);
    EXPECT_EQ(r.model.rope_scaling.mscale, cfg.model.rope_scaling.mscale);
    EXPECT_EQ(r.model.rope_theta, cfg.model.rope_theta);
    const ModelConfig from_meta = model_from_meta(meta, "test");
    EXPECT_EQ(model_meta(from_meta), model_meta(cfg.model));
    EXPECT_EQ(model_mismatch(meta.at("model"), cfg.model), "");
  }
}

TEST(MlaOptions, OldCheckpointsAreMhaAndMismatchesNameTheOption) {
  // meta.model as moerun wrote it before MLA: only the integer shape keys.
  const nlohmann::json old = {{"vocab", 257},        {"hidden", 16},  {"layers", 2},
                              {"heads", 2},          {"seq_len", 16}, {"first_k_dense", 1},
                              {"dense_ffn", 32},     {"experts", 4},  {"expert_width", 8},
                              {"shared_experts", 1}, {"top_k", 2}};
  ModelConfig fresh;
  read_model_meta(old, fresh, "old");
  EXPECT_EQ(fresh.attention, AttentionKind::kMHA);
  EXPECT_EQ(fresh.mla.kv_lora_rank, 0);
  EXPECT_FALSE(fresh.rope_scaling.yarn);
  EXPECT_EQ(fresh.hidden, 16);

  // The same model from today's options matches the old meta; MLA does not, and says so.
  const std::vector<std::string> shape = {
      "--vocab",        "257", "--hidden",         "16", "--layers",    "2",  "--heads",   "2",
      "--seq-len",      "16",  "--first-k-dense",  "1",  "--dense-ffn", "32", "--experts", "4",
      "--expert-width", "8",   "--shared-experts", "1",  "--top-k",     "2"};
  EXPECT_EQ(model_mismatch(old, parse_args(shape).model), "");
  std::vector<std::string> mla = shape;
  mla.insert(mla.end(), {"--attention", "mla", "--kv-lora-rank", "16"});
  EXPECT_EQ(model_mismatch(old, parse_args(mla).model), "--attention mha, not mla");

  // Between two MLA models: the first MLA size that differs, checkpoint's value first.
  const nlohmann::json ckpt = model_meta(parse_args(mla).model);
  std::vector<std::string> other = mla;
  other.back() = "32";
  EXPECT_EQ(model_mismatch(ckpt, parse_args(other).model), "--kv-lora-rank 16, not 32");
  std::vector<std::string> q = mla;
  q.insert(q.end(), {"--q-lora-rank", "8"});
  EXPECT_EQ(model_mismatch(ckpt, parse_args(q).model), "--q-lora-rank 0, not 8");
  std::vector<std::string> il = mla;
  il.insert(il.end(), {"--rope-interleave", "false"});
  EXPECT_EQ(model_mismatch(ckpt, parse_args(il).model), "--rope-interleave true, not false");
  // YaRN, like --seq-len, may change on a resume (a context extension).
  std::vector<std::string> yarn = mla;
  yarn.insert(yarn.end(), {"--rope-scaling", "yarn", "--rope-scaling-factor", "4"});
  EXPECT_EQ(model_mismatch(ckpt, parse_args(yarn).model), "");

  // A wrong type or value is an error naming the key.
  nlohmann::json bad = ckpt;
  bad["attention"] = 1;
  expect_error([&] { read_model_meta(bad, fresh, "ckpt"); }, {"ckpt", "meta.model.attention"});
  bad = ckpt;
  bad["attention"] = "gqa";
  expect_error([&] { read_model_meta(bad, fresh, "ckpt"); }, {"ckpt", "--attention", "gqa"});
  bad = ckpt;
  bad["rope_interleave"] = 1;
  expect_error([&] { read_model_meta(bad, fresh, "ckpt"); }, {"meta.model.rope_interleave"});
  bad = old;
  bad.erase("experts");
  expect_error([&] { read_model_meta(bad, fresh, "ckpt"); }, {"meta.model.experts", "missing"});
}

}  // namespace
}  // namespace moerun::testing
