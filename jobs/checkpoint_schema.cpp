// The checkpoint schema; see checkpoint_schema.h.
#include "jobs/checkpoint_schema.h"

#include <fmt/format.h>
#include <boost/program_options.hpp>

#include <map>
#include <sstream>

#include "layers/optimizer.h"
#include "runtime/check.h"

namespace moerun {

namespace po = boost::program_options;

namespace {

using KeyType = ModelKey::Type;

// An integer shape key that every checkpoint has.
#define MOERUN_INT_KEY(key, option, field, must_match)                                         \
  ModelKey {                                                                                   \
    key, option, KeyType::kInt, [](const ModelConfig& m) -> nlohmann::json { return field; },  \
        [](ModelConfig& m, const nlohmann::json& v) { field = v.get<int64_t>(); }, must_match, \
        true                                                                                   \
  }
// A key added with MLA (absent in older checkpoints: ModelConfig's default).
#define MOERUN_NEW_KEY(key, option, type, cpp_type, field, must_match)                          \
  ModelKey {                                                                                    \
    key, option, type, [](const ModelConfig& m) -> nlohmann::json { return field; },            \
        [](ModelConfig& m, const nlohmann::json& v) { field = v.get<cpp_type>(); }, must_match, \
        false                                                                                   \
  }

}  // namespace

const std::vector<ModelKey>& model_keys() {
  // Order is the order of meta.model and of inspect's listing.
  static const std::vector<ModelKey> keys = {
      MOERUN_INT_KEY("vocab", "--vocab", m.vocab, true),
      {"hidden", "--hidden", KeyType::kInt,
       [](const ModelConfig& m) -> nlohmann::json { return m.hidden; },
       [](ModelConfig& m, const nlohmann::json& v) { m.hidden = m.moe.hidden = v.get<int64_t>(); },
       true, true},
      MOERUN_INT_KEY("layers", "--layers", m.layers, true),
      MOERUN_INT_KEY("heads", "--heads", m.heads, true),
      MOERUN_INT_KEY("seq_len", "--seq-len", m.seq_len, false),
      MOERUN_INT_KEY("first_k_dense", "--first-k-dense", m.first_k_dense, true),
      MOERUN_INT_KEY("dense_ffn", "--dense-ffn", m.dense_ffn, true),
      MOERUN_INT_KEY("experts", "--experts", m.moe.routed_experts, true),
      MOERUN_INT_KEY("expert_width", "--expert-width", m.moe.expert_width, true),
      MOERUN_INT_KEY("shared_experts", "--shared-experts", m.moe.shared_experts, true),
      MOERUN_INT_KEY("top_k", "--top-k", m.moe.top_k, false),
      {"attention", "--attention", KeyType::kString,
       [](const ModelConfig& m) -> nlohmann::json { return to_string(m.attention); },
       [](ModelConfig& m, const nlohmann::json& v) {
         m.attention = parse_attention_kind(v.get<std::string>());
       },
       true, false},
      MOERUN_NEW_KEY("q_lora_rank", "--q-lora-rank", KeyType::kInt, int64_t, m.mla.q_lora_rank,
                     true),
      MOERUN_NEW_KEY("kv_lora_rank", "--kv-lora-rank", KeyType::kInt, int64_t, m.mla.kv_lora_rank,
                     true),
      MOERUN_NEW_KEY("qk_nope_head_dim", "--qk-nope-head-dim", KeyType::kInt, int64_t,
                     m.mla.qk_nope_head_dim, true),
      MOERUN_NEW_KEY("qk_rope_head_dim", "--qk-rope-head-dim", KeyType::kInt, int64_t,
                     m.mla.qk_rope_head_dim, true),
      MOERUN_NEW_KEY("v_head_dim", "--v-head-dim", KeyType::kInt, int64_t, m.mla.v_head_dim, true),
      MOERUN_NEW_KEY("rope_interleave", "--rope-interleave", KeyType::kBool, bool,
                     m.mla.rope_interleave, true),
      MOERUN_NEW_KEY("rope_theta", "--rope-theta", KeyType::kNumber, double, m.rope_theta, false),
      {"rope_scaling", "--rope-scaling", KeyType::kString,
       [](const ModelConfig& m) -> nlohmann::json { return m.rope_scaling.yarn ? "yarn" : "none"; },
       [](ModelConfig& m, const nlohmann::json& v) {
         const std::string s = v.get<std::string>();
         MOERUN_CONFIG_REQUIRE(s == "none" || s == "yarn",
                               "meta.model.rope_scaling must be none or yarn (got '{}')", s);
         m.rope_scaling.yarn = s == "yarn";
       },
       false, false},
      MOERUN_NEW_KEY("rope_scaling_factor", "--rope-scaling-factor", KeyType::kNumber, double,
                     m.rope_scaling.factor, false),
      MOERUN_NEW_KEY("rope_original_max_position", "--rope-original-max-position", KeyType::kInt,
                     int64_t, m.rope_scaling.original_max_position, false),
      MOERUN_NEW_KEY("rope_beta_fast", "--rope-beta-fast", KeyType::kNumber, double,
                     m.rope_scaling.beta_fast, false),
      MOERUN_NEW_KEY("rope_beta_slow", "--rope-beta-slow", KeyType::kNumber, double,
                     m.rope_scaling.beta_slow, false),
      MOERUN_NEW_KEY("rope_mscale", "--rope-mscale", KeyType::kNumber, double,
                     m.rope_scaling.mscale, false),
      MOERUN_NEW_KEY("rope_mscale_all_dim", "--rope-mscale-all-dim", KeyType::kNumber, double,
                     m.rope_scaling.mscale_all_dim, false),
  };
  return keys;
}

#undef MOERUN_INT_KEY
#undef MOERUN_NEW_KEY

nlohmann::json model_meta(const ModelConfig& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const ModelKey& k : model_keys()) j[k.key] = k.get(m);
  return j;
}

namespace {

const char* type_name(KeyType t) {
  switch (t) {
    case KeyType::kInt:
      return "an integer";
    case KeyType::kNumber:
      return "a number";
    case KeyType::kBool:
      return "true or false";
    case KeyType::kString:
      return "a string";
  }
  return "?";
}

bool has_type(const nlohmann::json& v, KeyType t) {
  switch (t) {
    case KeyType::kInt:
      return v.is_number_integer();
    case KeyType::kNumber:
      return v.is_number();
    case KeyType::kBool:
      return v.is_boolean();
    case KeyType::kString:
      return v.is_string();
  }
  return false;
}

// The key's value in meta.model, or nullptr for an optional key that is absent.
const nlohmann::json* field(const nlohmann::json& obj, const ModelKey& k,
                            const std::string& where) {
  MOERUN_CONFIG_REQUIRE(obj.is_object(), "{}: meta.model is not an object", where);
  if (!obj.contains(k.key)) {
    MOERUN_CONFIG_REQUIRE(!k.required, "{}: meta.model.{} is missing or not {}", where, k.key,
                          type_name(k.type));
    return nullptr;
  }
  const nlohmann::json& v = obj.at(k.key);
  MOERUN_CONFIG_REQUIRE(has_type(v, k.type), "{}: meta.model.{} is missing or not {}", where, k.key,
                        type_name(k.type));
  return &v;
}

// The value as an option would be written: 512, 0.707, mla, true.
std::string option_text(const nlohmann::json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

}  // namespace

std::string model_mismatch(const nlohmann::json& model, const ModelConfig& m) {
  // An absent optional key is the default's value: compare whole configs, key by key.
  ModelConfig theirs_cfg;
  read_model_meta(model, theirs_cfg, "the checkpoint");
  for (const ModelKey& k : model_keys()) {
    if (!k.must_match) continue;
    const nlohmann::json theirs = k.get(theirs_cfg), ours = k.get(m);
    if (theirs != ours)
      return fmt::format("{} {}, not {}", k.option, option_text(theirs), option_text(ours));
  }
  return "";
}

void read_model_meta(const nlohmann::json& model, ModelConfig& m, const std::string& where) {
  for (const ModelKey& k : model_keys()) {
    const nlohmann::json* v = field(model, k, where);
    if (v == nullptr) continue;
    try {
      k.set(m, *v);
    } catch (const ConfigError& e) {
      throw ConfigError(fmt::format("{}: {}", where, e.what()));
    }
  }
}

nlohmann::json TrainMeta::to_json() const {
  return {{"step", step},
          {"adamw_steps", adamw_steps},
          {"loader",
           {{"epoch", loader.epoch},
            {"step", loader.step},
            {"micro", loader.micro},
            {"seed", loader.seed}}},
          {"layout", {{"world", world}, {"ep", ep}}},
          {"model", model_meta(model)},
          {"rng", {{"seed", seed}}},
          {"config_ini", config_ini}};
}

TrainMeta TrainMeta::from_json(const nlohmann::json& meta, const std::string& where) {
  TrainMeta t;
  try {
    t.step = meta.at("step").get<int64_t>();
    t.adamw_steps = meta.at("adamw_steps").get<int64_t>();
    const nlohmann::json& l = meta.at("loader");
    t.loader.epoch = l.at("epoch").get<uint64_t>();
    t.loader.step = l.at("step").get<uint64_t>();
    t.loader.micro = l.at("micro").get<uint64_t>();
    t.loader.seed = l.at("seed").get<uint64_t>();
    t.world = meta.at("layout").at("world").get<int>();
    t.ep = meta.at("layout").at("ep").get<int>();
    if (meta.contains("rng")) t.seed = meta.at("rng").at("seed").get<uint64_t>();
    if (meta.contains("config_ini")) t.config_ini = meta.at("config_ini").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(
        fmt::format("{}: the checkpoint meta is not moerun train's ({})", where, e.what()));
  }
  MOERUN_CONFIG_REQUIRE(meta.contains("model"),
                        "{}: the checkpoint meta has no \"model\" object (not written by moerun "
                        "train or convert --from hf)",
                        where);
  read_model_meta(meta.at("model"), t.model, where);
  return t;
}

namespace {

// The routing and balancing options of a run's INI text (train_options' key names), parsed as
// `moerun train --config` parses it; other keys are ignored.
std::map<std::string, std::string> routing_options(const std::string& ini_text,
                                                   const std::string& where) {
  static const char* const kKeys[] = {"score-fn",        "topk-norm",    "routed-scaling-factor",
                                      "n-group",         "topk-group",   "group-score",
                                      "capacity-factor", "balance",      "aux-alpha1",
                                      "aux-alpha2",      "aux-seq-alpha"};
  po::options_description desc;
  for (const char* k : kKeys) desc.add_options()(k, po::value<std::string>());
  std::istringstream in(ini_text);
  po::variables_map vm;
  try {
    po::store(po::parse_config_file(in, desc, /*allow_unregistered=*/true), vm);
  } catch (const po::error& e) {
    throw ConfigError(fmt::format("{}: meta.config_ini: {}", where, e.what()));
  }
  std::map<std::string, std::string> out;
  for (const char* k : kKeys)
    if (vm.count(k)) out[k] = vm[k].as<std::string>();
  return out;
}

}  // namespace

// The shortest decimal of a float, as a double (1e-6f -> 1e-6, not 9.99999997e-07).
double float_decimal(float f) {
  return std::stod(fmt::format("{}", f));
}

// The model of a training checkpoint: ModelConfig from meta.model and meta.config_ini.
ModelConfig model_from_meta(const nlohmann::json& meta, const std::string& where) {
  MOERUN_CONFIG_REQUIRE(meta.contains("model") && meta["model"].is_object(),
                        "{}: meta has no \"model\" object (not written by moerun train or "
                        "convert --from hf)",
                        where);
  ModelConfig c;
  read_model_meta(meta["model"], c, where);
  // Routing and balancing options live in the run's INI (train_options' key names).
  const std::map<std::string, std::string> ini =
      routing_options(meta.contains("config_ini") && meta["config_ini"].is_string()
                          ? meta["config_ini"].get<std::string>()
                          : std::string(),
                      where);
  auto opt = [&](const char* key) -> const std::string* {
    auto it = ini.find(key);
    return it == ini.end() ? nullptr : &it->second;
  };
  try {
    if (auto v = opt("score-fn")) c.moe.score_fn = parse_score_fn(*v);
    if (auto v = opt("topk-norm")) c.moe.topk_norm = parse_topk_norm(*v);
    if (auto v = opt("routed-scaling-factor")) c.moe.routed_scaling_factor = std::stod(*v);
    if (auto v = opt("n-group")) c.moe.n_group = std::stoll(*v);
    if (auto v = opt("topk-group")) c.moe.topk_group = std::stoll(*v);
    if (auto v = opt("group-score")) c.moe.group_score = parse_group_score(*v);
    if (auto v = opt("capacity-factor")) c.moe.capacity_factor = std::stod(*v);
    if (auto v = opt("balance")) c.moe.balance = parse_balance(*v);
    if (auto v = opt("aux-alpha1")) c.moe.aux_alpha1 = std::stod(*v);
    if (auto v = opt("aux-alpha2")) c.moe.aux_alpha2 = std::stod(*v);
    if (auto v = opt("aux-seq-alpha")) c.moe.aux_seq_alpha = std::stod(*v);
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("{}: meta.config_ini: {}", where, e.what()));
  }
  return c;
}

io::HfShape hf_shape_of(const ModelConfig& mc) {
  const bool has_moe = mc.moe.routed_experts > 0 && mc.first_k_dense < mc.layers;
  io::HfShape s;
  s.vocab = mc.vocab;
  s.hidden = mc.hidden;
  s.layers = mc.layers;
  s.heads = mc.heads;
  s.first_k_dense = has_moe ? mc.first_k_dense : mc.layers;
  s.dense_ffn = mc.dense_ffn;
  s.experts = has_moe ? mc.moe.routed_experts : 0;
  s.expert_width = has_moe ? mc.moe.expert_width : 0;
  s.shared_experts = has_moe ? mc.moe.shared_experts : 0;
  s.top_k = has_moe ? mc.moe.top_k : 0;
  s.scoring_func = to_string(mc.moe.score_fn);
  s.norm_topk_prob = mc.moe.topk_norm == TopkNorm::kNormalize;
  s.routed_scaling_factor = mc.moe.routed_scaling_factor;
  s.n_group = has_moe ? mc.moe.n_group : 1;
  s.topk_group = has_moe ? mc.moe.topk_group : 1;
  s.rope_theta = mc.rope_theta;
  s.rms_norm_eps = float_decimal(mc.norm_eps);
  s.max_position_embeddings = mc.seq_len;
  if (mc.attention == AttentionKind::kMLA) {
    s.model_type = "deepseek_v3";  // the converter picks v2 or v3
    s.mla = true;
    s.q_lora_rank = mc.mla.q_lora_rank;
    s.kv_lora_rank = mc.mla.kv_lora_rank;
    s.qk_nope_head_dim = mc.mla.qk_nope_head_dim;
    s.qk_rope_head_dim = mc.mla.qk_rope_head_dim;
    s.v_head_dim = mc.mla.v_head_dim;
    s.rope_interleave = mc.mla.rope_interleave;
    const RopeScaling& r = mc.rope_scaling;
    s.yarn = r.yarn;
    if (r.yarn) {
      s.yarn_factor = r.factor;
      s.yarn_original_max_position = r.original_max_position;
      s.yarn_beta_fast = r.beta_fast;
      s.yarn_beta_slow = r.beta_slow;
      s.yarn_mscale = r.mscale;
      s.yarn_mscale_all_dim = r.mscale_all_dim;
    }
  }
  return s;
}

ModelConfig model_config_of(const io::HfShape& s) {
  ModelConfig m;
  m.vocab = s.vocab;
  m.hidden = m.moe.hidden = s.hidden;
  m.layers = s.layers;
  m.heads = s.heads;
  m.seq_len = s.max_position_embeddings;
  m.first_k_dense = s.first_k_dense;
  m.dense_ffn = s.dense_ffn;
  m.moe.routed_experts = s.experts;
  m.moe.expert_width = s.expert_width;
  m.moe.shared_experts = s.shared_experts;
  m.moe.top_k = s.top_k;
  m.rope_theta = s.rope_theta;
  m.norm_eps = static_cast<float>(s.rms_norm_eps);
  if (s.mla) {
    m.attention = AttentionKind::kMLA;
    m.mla.q_lora_rank = s.q_lora_rank;
    m.mla.kv_lora_rank = s.kv_lora_rank;
    m.mla.qk_nope_head_dim = s.qk_nope_head_dim;
    m.mla.qk_rope_head_dim = s.qk_rope_head_dim;
    m.mla.v_head_dim = s.v_head_dim;
    m.mla.rope_interleave = s.rope_interleave;
    RopeScaling& r = m.rope_scaling;
    r.yarn = s.yarn;
    if (s.yarn) {
      r.factor = s.yarn_factor;
      r.original_max_position = s.yarn_original_max_position;
      r.beta_fast = s.yarn_beta_fast;
      r.beta_slow = s.yarn_beta_slow;
      r.mscale = s.yarn_mscale;
      r.mscale_all_dim = s.yarn_mscale_all_dim;
    }
  }
  return m;
}

std::string router_bias_name(int64_t layer) {
  return fmt::format("layers.{}.moe.bias", layer);
}

bool is_router_bias(const std::string& name) {
  static const std::string suffix = ".moe.bias";
  return name.size() > suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_optimizer_state(const std::string& name) {
  return name.rfind("optim.", 0) == 0;
}

}  // namespace moerun
