// What a training checkpoint holds, in one place: the meta record (step, optimizer steps, loader
// position, layout, model shape, seed, the run's options) and the tensor names (parameters,
// optimizer moments, router biases). train, convert, inspect and the tests all read and write
// checkpoints through this, so the schema is stated once.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "io/hf_names.h"
#include "io/token_loader.h"
#include "layers/model.h"

namespace moerun {

// One field of the model's shape: its key in meta.model and its command-line option. Values are
// JSON integers, except the attention fields: "mha"/"mla", true/false and YaRN's numbers.
struct ModelKey {
  enum class Type { kInt, kNumber, kBool, kString };
  const char* key;     // "expert_width"
  const char* option;  // "--expert-width"
  Type type;
  nlohmann::json (*get)(const ModelConfig&);
  void (*set)(ModelConfig&, const nlohmann::json&);  // the value has `type`
  bool must_match;  // a resume refuses a different value (seq_len and the RoPE scaling may
                    // change, as for a context extension; the rest may not)
  bool required;    // false: added with MLA; a checkpoint without it has ModelConfig's default
                    // (an older checkpoint reads back as the MHA model it is)
};
const std::vector<ModelKey>& model_keys();

nlohmann::json model_meta(const ModelConfig& m);  // {"vocab": V, "hidden": H, ...}
// The first key whose value differs (must_match keys only), as "--hidden 64, not 128"
// (checkpoint's value first); "" when the shapes agree. Throws ConfigError on a missing key.
std::string model_mismatch(const nlohmann::json& model, const ModelConfig& m);
// The shape keys of meta.model into m (routing options are not in meta.model). Throws
// ConfigError naming `where` and the key when a required one is missing or one has another type.
void read_model_meta(const nlohmann::json& model, ModelConfig& m, const std::string& where);

// The meta record of a training checkpoint.
struct TrainMeta {
  int64_t step = 0;         // optimizer steps taken
  int64_t adamw_steps = 0;  // the optimizer's own count (0 after an import)
  io::LoaderState loader;   // where the data loader resumes
  int world = 1, ep = 1;    // the layout that wrote it (any layout can load it)
  uint64_t seed = 1;        // weights are drawn once from it; training draws no random numbers
  ModelConfig model;
  std::string config_ini;  // the run's effective options (train_options' INI)

  nlohmann::json to_json() const;
  // Throws ConfigError naming `where` and the field when the record is not moerun's.
  static TrainMeta from_json(const nlohmann::json& meta, const std::string& where);
};

// The whole ModelConfig of a checkpoint: meta.model, plus the routing and balancing options of
// meta.config_ini (the run's INI). ConfigError naming `where` and the key otherwise.
ModelConfig model_from_meta(const nlohmann::json& meta, const std::string& where);
// The model's shape and routing as HF config fields (dtype, score bias and topk_method are the
// converter's to choose), and back (shape only; the routing travels in the INI).
io::HfShape hf_shape_of(const ModelConfig& m);
ModelConfig model_config_of(const io::HfShape& s);
// The shortest decimal of a float, as a double (1e-6f -> 1e-6, not 9.99999997e-07).
double float_decimal(float f);

// Tensor names beside the model's parameters.
std::string router_bias_name(int64_t layer);  // "layers.N.moe.bias"
bool is_router_bias(const std::string& name);
bool is_optimizer_state(const std::string& name);  // "optim.m.*", "optim.v.*"

}  // namespace moerun
