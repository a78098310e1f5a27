// `moerun convert --from hf`: a HuggingFace DeepSeek checkpoint (config.json + safetensors) as a
// moerun checkpoint that `moerun train --resume` starts from (see convert_common.h).
#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "comm/agree.h"
#include "comm/comm.h"
#include "io/checkpoint_manifest.h"
#include "io/checkpoint_stream.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "jobs/checkpoint_schema.h"
#include "jobs/convert_common.h"
#include "jobs/jobs.h"
#include "layers/model.h"
#include "layers/moe_config.h"
#include "layers/optimizer.h"
#include "runtime/check.h"
#include "runtime/durable_file.h"
#include "runtime/log.h"
#include "runtime/timer.h"

namespace moerun {

namespace po = boost::program_options;
namespace fs = std::filesystem;
using nlohmann::json;

namespace convert {

namespace {

// The INI of the model options (train_options' key names) a training run needs for this shape.
std::string model_ini(const io::HfShape& s, const std::string& balance, bool group_top2,
                      int64_t n_group, int64_t topk_group) {
  std::ostringstream o;
  o.precision(10);
  o << "# model options of a checkpoint made by `moerun convert --from hf`: train from it with\n"
       "#   moerun train --config THIS.ini --resume CKPT_DIR --data ... --steps N\n"
       "# (seq-len is the HF max_position_embeddings: lower it on the command line as needed)\n";
  o << "vocab = " << s.vocab << "\nhidden = " << s.hidden << "\nlayers = " << s.layers
    << "\nheads = " << s.heads << "\nseq-len = " << s.max_position_embeddings
    << "\nfirst-k-dense = " << s.first_k_dense << "\ndense-ffn = " << s.dense_ffn
    << "\nexperts = " << s.experts << "\nexpert-width = " << s.expert_width
    << "\nshared-experts = " << s.shared_experts << "\ntop-k = " << s.top_k
    << "\nscore-fn = " << s.scoring_func
    << "\ntopk-norm = " << (s.norm_topk_prob ? "normalize" : "none")
    << "\nrouted-scaling-factor = " << s.routed_scaling_factor << "\nn-group = " << n_group
    << "\ntopk-group = " << topk_group << "\ngroup-score = " << (group_top2 ? "top2sum" : "max")
    << "\nbalance = " << balance << "\nrope-theta = " << s.rope_theta << "\n";
  if (s.mla) {
    o << "attention = mla\nq-lora-rank = " << s.q_lora_rank << "\nkv-lora-rank = " << s.kv_lora_rank
      << "\nqk-nope-head-dim = " << s.qk_nope_head_dim
      << "\nqk-rope-head-dim = " << s.qk_rope_head_dim << "\nv-head-dim = " << s.v_head_dim
      << "\nrope-interleave = " << (s.rope_interleave ? "true" : "false")
      << "\nrope-scaling = " << (s.yarn ? "yarn" : "none") << "\n";
    if (s.yarn)
      o << "rope-scaling-factor = " << s.yarn_factor
        << "\nrope-original-max-position = " << s.yarn_original_max_position
        << "\nrope-beta-fast = " << s.yarn_beta_fast << "\nrope-beta-slow = " << s.yarn_beta_slow
        << "\nrope-mscale = " << s.yarn_mscale
        << "\nrope-mscale-all-dim = " << s.yarn_mscale_all_dim << "\n";
  }
  return o.str();
}

}  // namespace

int convert_from_hf(const FromHfOptions& o) {
  const CheckpointTarget target = inspect_target(o.ckpt_dir, "CKPT_DIR");
  check_target(target, o.force);
  const std::string cfg_path = (fs::path(o.hf_dir) / "config.json").string();
  std::ifstream in(cfg_path);
  MOERUN_CONFIG_REQUIRE(in.good(), "{} cannot be read", cfg_path);
  json config;
  try {
    config = json::parse(in);
  } catch (const json::exception& e) {
    throw ConfigError(fmt::format("{} is not valid JSON: {}", cfg_path, e.what()));
  }
  io::HfShape s;
  try {
    s = io::hf_shape_from_config(config);
  } catch (const ConfigError& e) {
    throw ConfigError(fmt::format("{}: {}", cfg_path, e.what()));
  }
  const io::SafetensorsDir dir = io::SafetensorsDir::open(o.hf_dir);
  // FP8 checkpoints (DeepSeek-V3's release): block-scaled e4m3 weights with weight_scale_inv.
  for (const std::string& n : dir.names()) {
    MOERUN_CONFIG_REQUIRE(!n.ends_with("weight_scale_inv") && !dir.entry(n).dtype.starts_with("F8"),
                          "{}: '{}' ({}) is an FP8-quantized weight: moerun imports F32/BF16/F16 "
                          "only; dequantize the checkpoint to bf16 first",
                          o.hf_dir, n, dir.entry(n).dtype);
  }
  // Multi-token-prediction layers (num_nextn_predict_layers) are stored as model.layers.L ...
  // after the L decoder layers: moerun's model has none, so they are dropped.
  auto mtp_layer = [&s](const std::string& n) {
    const std::string prefix = "model.layers.";
    if (!n.starts_with(prefix)) return false;
    const int64_t l = std::atoll(n.c_str() + prefix.size());
    return l >= s.layers && l < s.layers + s.mtp_layers;
  };
  int64_t mtp_tensors = 0;
  for (const std::string& n : dir.names()) mtp_tensors += mtp_layer(n);
  if (mtp_tensors > 0)
    say(
        fmt::format("dropping {} tensors of the {} multi-token-prediction layer(s) "
                    "(num_nextn_predict_layers; model.layers.{}+): moerun's model has no MTP "
                    "module",
                    mtp_tensors, s.mtp_layers, s.layers));
  if (s.mla && s.model_type == "deepseek_v2" && config.contains("norm_topk_prob") &&
      config["norm_topk_prob"] == true)
    say("note: norm_topk_prob true, which transformers' DeepseekV2 ignores (it never normalises "
        "the top-k weights): imported as --topk-norm none, as transformers computes it");
  if (s.experts == 0)
    for (const std::string& n : dir.names())
      MOERUN_CONFIG_REQUIRE(n.find(".mlp.experts.") == std::string::npos,
                            "{}: no 'n_routed_experts' (a dense model), but {} holds routed-expert "
                            "tensors such as '{}': add n_routed_experts",
                            cfg_path, o.hf_dir, n);

  // The router bias: in the files for every MoE layer, or for none (then zeros).
  s.score_bias = true;
  int64_t n_moe = 0, with_bias = 0;
  for (int64_t l = 0; l < s.layers; ++l)
    if (s.is_moe_layer(l)) {
      ++n_moe;
      with_bias += dir.contains(fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias", l));
    }
  MOERUN_CONFIG_REQUIRE(with_bias == 0 || with_bias == n_moe,
                        "{}: only {} of {} MoE layers have mlp.gate.e_score_correction_bias",
                        o.hf_dir, with_bias, n_moe);
  const bool bias_in_hf = n_moe > 0 && with_bias == n_moe;
  MOERUN_CONFIG_REQUIRE(!(s.mla && s.model_type == "deepseek_v2") || with_bias == 0,
                        "{}: mlp.gate.e_score_correction_bias in a deepseek_v2 model, which has "
                        "none (transformers would not load it): use model_type deepseek_v3",
                        o.hf_dir);
  if (s.topk_method == "noaux_tc" && !bias_in_hf && n_moe > 0)
    say("note: topk_method noaux_tc but no e_score_correction_bias in the files: zero biases");
  const std::vector<io::HfTensor> map = io::hf_tensor_map(s);  // with the bias entries

  // Every HF tensor present at its shape; nothing unexpected (rotary inv_freq buffers aside).
  std::set<std::string> expected;
  for (const io::HfTensor& t : map)
    for (const io::HfPiece& p : t.pieces) {
      expected.insert(p.hf_name);
      const bool is_bias = is_router_bias(t.name);
      if (is_bias && !bias_in_hf) continue;
      MOERUN_CONFIG_REQUIRE(dir.contains(p.hf_name), "{} has no tensor '{}'", o.hf_dir, p.hf_name);
      const io::SafetensorsEntry& e = dir.entry(p.hf_name);
      MOERUN_CONFIG_REQUIRE(e.shape == p.hf_shape,
                            "{}: '{}' has shape ({}), config.json implies ({})", o.hf_dir,
                            p.hf_name, fmt::join(e.shape, ", "), fmt::join(p.hf_shape, ", "));
      MOERUN_CONFIG_REQUIRE(e.dtype == "F32" || e.dtype == "BF16" || e.dtype == "F16",
                            "{}: '{}' is {}, not F32/BF16/F16", o.hf_dir, p.hf_name, e.dtype);
    }
  std::vector<std::string> unexpected;
  for (const std::string& n : dir.names())
    if (!expected.count(n) && !mtp_layer(n) && n.find("rotary_emb.") == std::string::npos)
      unexpected.push_back(n);
  MOERUN_CONFIG_REQUIRE(unexpected.empty(), "{} holds tensors moerun's model does not have: {}",
                        o.hf_dir, fmt::join(unexpected, ", "));

  // Routing as moerun options. HF greedy ignores groups: moerun then routes without them.
  const bool top2 = s.topk_method == "noaux_tc";
  int64_t n_group = s.n_group, topk_group = s.topk_group;
  if (s.topk_method == "greedy" && n_group > 1 && topk_group < n_group) {
    say(
        fmt::format("note: topk_method greedy ignores n_group {} / topk_group {}: moerun routes "
                    "without groups (n-group 1)",
                    n_group, topk_group));
    n_group = topk_group = 1;
  }
  const std::string balance = bias_in_hf ? "loss-free" : "none";
  // rope_theta is part of the checkpoint's model (meta.model.rope_theta); the RMSNorm epsilon is
  // not a moerun option.
  const ModelConfig defaults;
  if (s.rms_norm_eps != float_decimal(defaults.norm_eps))
    say(fmt::format(
        "warning: config.json has rms_norm_eps {}; moerun's model uses {}: training from this "
        "checkpoint changes the model",
        s.rms_norm_eps, float_decimal(defaults.norm_eps)));

  // The checkpoint in the Trainer's order: each parameter with its AdamW moments, then biases.
  std::vector<io::CheckpointTensorSpec> specs;
  std::vector<const io::HfTensor*> params, bias;
  for (const io::HfTensor& t : map) {
    const bool is_bias = is_router_bias(t.name);
    (is_bias ? bias : params).push_back(&t);
  }
  for (const io::HfTensor* t : params) {
    const io::TensorKind k = t->is_expert ? io::TensorKind::kSharded : io::TensorKind::kReplicated;
    for (const std::string& name :
         {t->name, Optimizer::moment_name('m', t->name), Optimizer::moment_name('v', t->name)})
      specs.push_back({name, DType::kF32, t->shape, k});
  }
  for (const io::HfTensor* t : bias)
    specs.push_back({t->name, DType::kF32, t->shape, io::TensorKind::kReplicated});
  clear_target(target);
  io::CheckpointWriter writer(o.ckpt_dir, o.step, specs);
  size_t done = 0;
  int64_t largest = 0;
  const size_t total = params.size() + bias.size();
  for (const io::HfTensor* t : params) {
    largest = std::max(largest, t->numel() * 4);
    {
      Tensor x = Tensor::empty(t->shape);
      for (const io::HfPiece& p : t->pieces)
        dir.file_of(p.hf_name).read_f32(
            p.hf_name, std::span<float>(x.f32() + p.offset, static_cast<size_t>(p.numel())));
      writer.write(t->name, x);
    }
    {
      const Tensor zeros = Tensor::zeros(t->shape);  // AdamW moments of a fresh start
      writer.write(Optimizer::moment_name('m', t->name), zeros);
      writer.write(Optimizer::moment_name('v', t->name), zeros);
    }
    log::info("moerun convert: [{}/{}] {} ({}) <- {} HF tensor(s)", ++done, total, t->name,
              fmt::join(t->shape, "x"), t->pieces.size());
  }
  for (const io::HfTensor* t : bias) {
    Tensor x = Tensor::zeros(t->shape);
    if (bias_in_hf)
      dir.file_of(t->pieces[0].hf_name).read_f32(t->pieces[0].hf_name, x.span<float>());
    writer.write(t->name, x);
    log::info("moerun convert: [{}/{}] {} ({}) <- {}", ++done, total, t->name,
              fmt::join(t->shape, "x"), bias_in_hf ? "e_score_correction_bias" : "zeros");
  }
  const std::string ini = model_ini(s, balance, top2, n_group, topk_group);
  TrainMeta tm;  // the training schema: resumable like any checkpoint of moerun train
  tm.step = o.step;
  tm.loader.seed = 1;
  tm.model = model_config_of(s);
  tm.config_ini = ini;
  json meta = tm.to_json();
  meta["converted_from"] = {{"format", "hf"}, {"dir", o.hf_dir}};
  writer.commit(meta);
  say(
      fmt::format("peak RSS {}; largest tensor {} (f32; each parameter is held once, its zero "
                  "moments once)",
                  mb(static_cast<double>(peak_rss_bytes())), mb(static_cast<double>(largest))));
  const std::string ini_path = (fs::path(o.ckpt_dir) / "model.ini").string();
  write_file_atomic(ini_path, ini);
  say(fmt::format("wrote {} step {} ({} of tensors: weights, zero AdamW moments{}), and {}",
                  o.ckpt_dir, o.step, mb(static_cast<double>(writer.bytes_written())),
                  bias_in_hf ? ", router biases" : ", zero router biases", ini_path));
  say(
      fmt::format("routing: score-fn {}, topk-norm {}, n-group {}, topk-group {}, group-score {}, "
                  "balance {} (set --balance as you like when training)",
                  s.scoring_func, s.norm_topk_prob ? "normalize" : "none", n_group, topk_group,
                  top2 ? "top2sum" : "max", balance));
  say(
      fmt::format("train from it: moerun train --config {} --resume {} --data DATA --steps N "
                  "(the optimizer starts fresh: adamw_steps 0, data from the start, seed 1)",
                  ini_path, o.ckpt_dir));
  return 0;
}

}  // namespace convert
}  // namespace moerun
