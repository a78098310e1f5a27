// The checkpoint schema; see checkpoint_schema.h.
#include "jobs/checkpoint_schema.h"

#include <fmt/format.h>

#include "layers/optimizer.h"
#include "runtime/check.h"

namespace moerun {

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
