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

const std::vector<ModelKey>& model_keys() {
  // Order is the order of meta.model and of inspect's listing.
  static const std::vector<ModelKey> keys = {
      {"vocab", "--vocab", [](const ModelConfig& m) { return m.vocab; },
       [](ModelConfig& m, int64_t v) { m.vocab = v; }, true},
      {"hidden", "--hidden", [](const ModelConfig& m) { return m.hidden; },
       [](ModelConfig& m, int64_t v) { m.hidden = m.moe.hidden = v; }, true},
      {"layers", "--layers", [](const ModelConfig& m) { return m.layers; },
       [](ModelConfig& m, int64_t v) { m.layers = v; }, true},
      {"heads", "--heads", [](const ModelConfig& m) { return m.heads; },
       [](ModelConfig& m, int64_t v) { m.heads = v; }, true},
      {"seq_len", "--seq-len", [](const ModelConfig& m) { return m.seq_len; },
       [](ModelConfig& m, int64_t v) { m.seq_len = v; }, false},
      {"first_k_dense", "--first-k-dense", [](const ModelConfig& m) { return m.first_k_dense; },
       [](ModelConfig& m, int64_t v) { m.first_k_dense = v; }, true},
      {"dense_ffn", "--dense-ffn", [](const ModelConfig& m) { return m.dense_ffn; },
       [](ModelConfig& m, int64_t v) { m.dense_ffn = v; }, true},
      {"experts", "--experts", [](const ModelConfig& m) { return m.moe.routed_experts; },
       [](ModelConfig& m, int64_t v) { m.moe.routed_experts = v; }, true},
      {"expert_width", "--expert-width", [](const ModelConfig& m) { return m.moe.expert_width; },
       [](ModelConfig& m, int64_t v) { m.moe.expert_width = v; }, true},
      {"shared_experts", "--shared-experts",
       [](const ModelConfig& m) { return m.moe.shared_experts; },
       [](ModelConfig& m, int64_t v) { m.moe.shared_experts = v; }, true},
      {"top_k", "--top-k", [](const ModelConfig& m) { return m.moe.top_k; },
       [](ModelConfig& m, int64_t v) { m.moe.top_k = v; }, false},
  };
  return keys;
}

nlohmann::json model_meta(const ModelConfig& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const ModelKey& k : model_keys()) j[k.key] = k.get(m);
  return j;
}

namespace {
int64_t int_field(const nlohmann::json& obj, const char* key, const std::string& where) {
  MOERUN_CONFIG_REQUIRE(obj.is_object() && obj.contains(key) && obj.at(key).is_number_integer(),
                        "{}: meta.model.{} is missing or not an integer", where, key);
  return obj.at(key).get<int64_t>();
}
}  // namespace

std::string model_mismatch(const nlohmann::json& model, const ModelConfig& m) {
  for (const ModelKey& k : model_keys()) {
    if (!k.must_match) continue;
    const int64_t theirs = int_field(model, k.key, "the checkpoint");
    if (theirs != k.get(m)) return fmt::format("{} {}, not {}", k.option, theirs, k.get(m));
  }
  return "";
}

void read_model_meta(const nlohmann::json& model, ModelConfig& m, const std::string& where) {
  for (const ModelKey& k : model_keys()) k.set(m, int_field(model, k.key, where));
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
