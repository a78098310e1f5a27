// `moerun convert`: moerun checkpoints <-> HuggingFace DeepSeek safetensors, and a verified
// streaming copy of a checkpoint (--reshard). One process does the work (world rank 0, serial
// HDF5, one tensor in memory at a time); other ranks wait and share the exit status.
//
//   --to hf CKPT_DIR OUT_DIR     config.json + sharded safetensors + model.safetensors.index.json
//   --from hf HF_DIR CKPT_DIR    a moerun checkpoint `moerun train --resume` starts from
//   --reshard CKPT_DIR OUT_DIR   a CRC-verified copy (optionally without optimizer state)
//   --check-loss TOKENS CKPT_DIR the model's mean next-token cross-entropy on a token sequence
//                                (compared with tests/golden/hf_logits_check.py on the HF export)
#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
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

namespace {

void say(const std::string& text) {
  log::info("moerun convert: {}", text);
}

std::string mb(double bytes) {
  return fmt::format("{:.1f} MB", bytes / 1e6);
}

// The newest committed step, or --step when given (it must be committed).
int64_t pick_step(const std::string& ckpt_dir, int64_t step) {
  MOERUN_CONFIG_REQUIRE(fs::is_directory(ckpt_dir), "checkpoint directory {} does not exist",
                        ckpt_dir);
  const io::CheckpointScan scan = io::scan_checkpoints(ckpt_dir);
  if (step >= 0) {
    MOERUN_CONFIG_REQUIRE(
        std::find(scan.committed.begin(), scan.committed.end(), step) != scan.committed.end(),
        "--step {}: {} has no committed step {} (committed: {})", step, ckpt_dir, step,
        scan.committed.empty() ? std::string("none")
                               : fmt::format("{}", fmt::join(scan.committed, ", ")));
    return step;
  }
  MOERUN_CONFIG_REQUIRE(!scan.committed.empty(), "{} holds no committed checkpoint", ckpt_dir);
  return scan.committed.back();
}

// ---- --to hf ---------------------------------------------------------------------------------

struct ToHfOptions {
  std::string ckpt_dir, out_dir;
  int64_t step = -1;
  std::string dtype = "bf16";
  double max_shard_gb = 5;
  bool force = false;
};

void prepare_out_dir(const std::string& out, bool force) {
  std::error_code ec;
  if (fs::exists(out)) {
    MOERUN_CONFIG_REQUIRE(fs::is_directory(out), "OUT_DIR {} exists and is not a directory", out);
    bool empty = fs::directory_iterator(out, ec) == fs::directory_iterator();
    MOERUN_CONFIG_REQUIRE(empty || force, "OUT_DIR {} is not empty (pass --force to write into it)",
                          out);
    if (!empty) {  // --force: remove what an earlier export left (other files are kept)
      for (const auto& e : fs::directory_iterator(out)) {
        const std::string n = e.path().filename().string();
        if (n == "config.json" || n == io::kSafetensorsIndexName ||
            (n.rfind("model", 0) == 0 && n.size() > 12 &&
             n.substr(n.size() - 12) == ".safetensors"))
          fs::remove(e.path());
      }
    }
  }
  fs::create_directories(out, ec);
  MOERUN_CONFIG_REQUIRE(!ec, "cannot create OUT_DIR {}: {}", out, ec.message());
}

int convert_to_hf(const ToHfOptions& o) {
  const int64_t step = pick_step(o.ckpt_dir, o.step);
  io::CheckpointReader reader = io::CheckpointReader::open(o.ckpt_dir, step);
  const std::string where = io::step_dir(o.ckpt_dir, step);
  const ModelConfig mc = model_from_meta(reader.manifest().meta, where);
  const bool has_moe = mc.moe.routed_experts > 0 && mc.first_k_dense < mc.layers;

  io::HfShape s = hf_shape_of(mc);
  s.torch_dtype = o.dtype == "f32" ? "float32" : "bfloat16";
  // The loss-free bias is part of the model only under --balance loss-free (otherwise it stays 0).
  s.score_bias = has_moe && mc.moe.balance == Balance::kLossFree &&
                 reader.find(router_bias_name(mc.first_k_dense)) != nullptr;
  const bool grouped = s.n_group > 1 && s.topk_group < s.n_group;
  s.topk_method = s.score_bias ? "noaux_tc" : grouped ? "group_limited_greedy" : "greedy";
  if (has_moe) {
    say(fmt::format(
        "routing: scoring_func {}, norm_topk_prob {}, routed_scaling_factor {}, n_group {}, "
        "topk_group {}; topk_method {} ({})",
        s.scoring_func, s.norm_topk_prob, s.routed_scaling_factor, s.n_group, s.topk_group,
        s.topk_method,
        s.score_bias ? "--balance loss-free: the bias is exported as "
                       "mlp.gate.e_score_correction_bias"
        : grouped    ? "no bias exported (not loss-free); group-limited routing"
                     : "no bias exported (not loss-free)"));
    if (grouped && s.score_bias && mc.moe.group_score == GroupScore::kMax)
      say("warning: moerun scored groups by their max (--group-score max); HF noaux_tc scores a "
          "group by the sum of its top-2 biased scores: routing may differ in HF");
    if (grouped && !s.score_bias && mc.moe.group_score == GroupScore::kTop2Sum)
      say("warning: moerun scored groups by the top-2 sum; HF group_limited_greedy uses the max");
    if (mc.moe.capacity_factor > 0)
      say(
          fmt::format("warning: trained with --capacity-factor {} (tokens dropped); HF inference "
                      "is dropless",
                      mc.moe.capacity_factor));
  }

  const std::vector<io::HfTensor> map = io::hf_tensor_map(s);
  // Every tensor of the map must be in the checkpoint as f32 at its shape; the rest is optimizer
  // state (not exported), an unexported bias, or an error.
  std::set<std::string> mapped;
  for (const io::HfTensor& t : map) {
    mapped.insert(t.name);
    const io::ManifestTensor* e = reader.find(t.name);
    MOERUN_CONFIG_REQUIRE(e != nullptr, "{} has no tensor \"{}\" (expected for this model)", where,
                          t.name);
    MOERUN_CONFIG_REQUIRE(e->dtype == DType::kF32 && e->shape == t.shape,
                          "{}: \"{}\" is {} ({}), the model needs f32 ({})", where, t.name,
                          io::checkpoint_dtype_name(e->dtype), fmt::join(e->shape, ", "),
                          fmt::join(t.shape, ", "));
  }
  int64_t optim = 0, biases = 0;
  std::vector<std::string> unknown;
  for (const io::ManifestTensor& e : reader.manifest().tensors) {
    if (mapped.count(e.name)) continue;
    if (is_optimizer_state(e.name))
      ++optim;
    else if (is_router_bias(e.name))
      ++biases;
    else
      unknown.push_back(e.name);
  }
  MOERUN_CONFIG_REQUIRE(unknown.empty(), "{} holds tensors this model does not have: {}", where,
                        fmt::join(unknown, ", "));
  say(fmt::format("{} step {} -> {} ({} tensors; {} optimizer tensors not exported{})", o.ckpt_dir,
                  step, o.out_dir, map.size(), optim,
                  biases ? fmt::format(", {} zero router biases not exported", biases) : ""));

  // Shards planned up front; every shard writer open at once.
  const std::string st_dtype = o.dtype == "f32" ? "F32" : "BF16";
  std::vector<io::SafetensorsSpec> specs;
  for (const io::HfTensor& t : map)
    for (const io::HfPiece& p : t.pieces)
      specs.push_back({p.hf_name, t.f32_in_hf ? "F32" : st_dtype, p.hf_shape});
  MOERUN_CONFIG_REQUIRE(o.max_shard_gb > 0, "--max-shard-gb must be > 0 (got {})", o.max_shard_gb);
  const io::SafetensorsShardPlan plan =
      io::plan_safetensors_shards(specs, static_cast<uint64_t>(o.max_shard_gb * 1e9));
  prepare_out_dir(o.out_dir, o.force);
  std::vector<std::unique_ptr<io::SafetensorsWriter>> writers;
  std::map<std::string, size_t> shard_of_file;
  for (size_t i = 0; i < plan.files.size(); ++i) {
    writers.push_back(std::make_unique<io::SafetensorsWriter>(
        (fs::path(o.out_dir) / plan.files[i]).string(), plan.shards[i], json{{"format", "pt"}}));
    shard_of_file[plan.files[i]] = i;
  }
  const long long rss_before = peak_rss_bytes();
  int64_t largest = 0;
  std::string largest_name;
  for (size_t i = 0; i < map.size(); ++i) {
    const io::HfTensor& t = map[i];
    const Tensor x = reader.read(t.name);  // CRC-verified
    if (static_cast<int64_t>(x.nbytes()) > largest) {
      largest = static_cast<int64_t>(x.nbytes());
      largest_name = t.name;
    }
    for (const io::HfPiece& p : t.pieces) {
      const size_t shard = shard_of_file.at(plan.index.weight_map.at(p.hf_name));
      writers[shard]->write_f32(
          p.hf_name, std::span<const float>(x.f32() + p.offset, static_cast<size_t>(p.numel())));
    }
    log::info("moerun convert: [{}/{}] {} ({}) -> {} HF tensor(s)", i + 1, map.size(), t.name,
              fmt::join(t.shape, "x"), t.pieces.size());
  }
  for (auto& w : writers) w->finish();
  io::write_safetensors_index((fs::path(o.out_dir) / io::kSafetensorsIndexName).string(),
                              plan.index);
  write_file_atomic((fs::path(o.out_dir) / "config.json").string(),
                    io::hf_config(s).dump(2) + "\n");
  const long long peak = peak_rss_bytes();
  say(fmt::format("wrote {} shard(s), {} tensors, {} of weights ({}) + config.json + {}",
                  plan.files.size(), specs.size(), mb(static_cast<double>(plan.index.total_size)),
                  st_dtype, io::kSafetensorsIndexName));
  say(fmt::format(
      "peak RSS {} ({} before the tensors, +{} while converting); largest tensor {} "
      "{} (f32): peak memory is a small multiple of the largest tensor",
      mb(static_cast<double>(peak)), mb(static_cast<double>(rss_before)),
      mb(static_cast<double>(peak - rss_before)), largest_name, mb(static_cast<double>(largest))));
  return 0;
}

// ---- a new checkpoint directory (--from hf, --reshard) ---------------------------------------

// A new checkpoint written into a directory that holds another would sit beside its steps, and
// `moerun train --resume` resumes from the newest committed step, which may be an old one. So the
// target must be empty (or new), or --force replaces the checkpoint there: its step directories,
// `latest` and model.ini are removed before the new step is written (other files are kept).
struct CheckpointTarget {
  std::string dir, name;  // name: how the usage line calls it (CKPT_DIR, OUT_DIR)
  std::vector<fs::path> checkpoint_entries, other_entries;
  std::string holds;  // what it holds, in words ("" when empty or new)
};

CheckpointTarget inspect_target(const std::string& dir, const char* name) {
  CheckpointTarget t{dir, name, {}, {}, {}};
  std::error_code ec;
  if (!fs::exists(dir, ec)) return t;
  MOERUN_CONFIG_REQUIRE(fs::is_directory(dir, ec), "{} {} exists and is not a directory", name,
                        dir);
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    const bool ours = (io::parse_step_dir_name(n) && e.is_directory(ec)) || n == io::kLatestName ||
                      n == std::string(io::kLatestName) + ".tmp" || n == "model.ini" ||
                      n == "model.ini.tmp";
    (ours ? t.checkpoint_entries : t.other_entries).push_back(e.path());
  }
  std::sort(t.checkpoint_entries.begin(), t.checkpoint_entries.end());
  std::sort(t.other_entries.begin(), t.other_entries.end());
  if (t.checkpoint_entries.empty() && t.other_entries.empty()) return t;
  const io::CheckpointScan scan = io::scan_checkpoints(dir);
  std::vector<std::string> parts;
  if (!scan.committed.empty())
    parts.push_back(fmt::format("committed step{} {}", scan.committed.size() == 1 ? "" : "s",
                                fmt::join(scan.committed, ", ")));
  if (!scan.partial.empty())
    parts.push_back(fmt::format("{} uncommitted step director{}", scan.partial.size(),
                                scan.partial.size() == 1 ? "y" : "ies"));
  const std::string latest = io::describe_latest(scan);
  if (latest != "absent") parts.push_back("latest " + latest);
  if (fs::exists(fs::path(dir) / "model.ini")) parts.push_back("model.ini");
  if (!t.other_entries.empty())
    parts.push_back(fmt::format("{} other entr{}", t.other_entries.size(),
                                t.other_entries.size() == 1 ? "y" : "ies"));
  if (parts.empty())  // only leftovers such as latest.tmp
    parts.push_back(fmt::format("{} leftover entr{} of a checkpoint", t.checkpoint_entries.size(),
                                t.checkpoint_entries.size() == 1 ? "y" : "ies"));
  t.holds = fmt::format("{}", fmt::join(parts, ", "));
  return t;
}

// Before reading the input: refuses a non-empty target without --force.
void check_target(const CheckpointTarget& t, bool force) {
  if (t.holds.empty() || force) return;
  throw ConfigError(fmt::format(
      "{} {} is not empty (it holds {}): a new checkpoint would sit beside it and `moerun train "
      "--resume` would pick the newest committed step, which may be an old one; choose an empty "
      "directory, or pass --force to replace the checkpoint there",
      t.name, t.dir, t.holds));
}

// After the input was read and checked (so a failed conversion never deletes anything): with
// --force, removes the old checkpoint and says what it replaced.
void clear_target(const CheckpointTarget& t) {
  if (t.holds.empty()) return;
  if (t.checkpoint_entries.empty()) {
    say(fmt::format("--force: {} holds no checkpoint ({}); writing beside its files", t.dir,
                    t.holds));
    return;
  }
  say(fmt::format("--force: replacing the checkpoint in {} ({}){}", t.dir, t.holds,
                  t.other_entries.empty() ? "" : "; other files are kept"));
  for (const fs::path& p : t.checkpoint_entries) {
    std::error_code ec;
    fs::remove_all(p, ec);
    MOERUN_CONFIG_REQUIRE(!ec, "--force: cannot remove {}: {}", p.string(), ec.message());
  }
  fsync_path(t.dir);
}

// ---- --from hf -------------------------------------------------------------------------------

struct FromHfOptions {
  std::string hf_dir, ckpt_dir;
  int64_t step = 0;
  bool force = false;
};

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
    << "\nbalance = " << balance << "\n";
  return o.str();
}

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
    if (!expected.count(n) && n.find("rotary_emb.inv_freq") == std::string::npos)
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
  const ModelConfig defaults;
  if (s.rope_theta != defaults.rope_theta || s.rms_norm_eps != float_decimal(defaults.norm_eps))
    say(fmt::format(
        "warning: config.json has rope_theta {} and rms_norm_eps {}; moerun's model "
        "uses {} and {}: training from this checkpoint changes the model",
        s.rope_theta, s.rms_norm_eps, defaults.rope_theta, float_decimal(defaults.norm_eps)));

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

// ---- --reshard -------------------------------------------------------------------------------

int convert_reshard(const std::string& ckpt_dir, const std::string& out_dir, int64_t step_opt,
                    bool drop_optimizer, bool force) {
  const int64_t step = pick_step(ckpt_dir, step_opt);
  say("moerun checkpoints are layout-independent: every tensor is stored at its global shape "
      "and load_checkpoint reads any rank count / EP size, so resharding is a verified "
      "streaming copy (each tensor's CRC32 checked on read and recomputed on write)");
  MOERUN_CONFIG_REQUIRE(fs::weakly_canonical(ckpt_dir) != fs::weakly_canonical(out_dir),
                        "OUT_DIR must differ from CKPT_DIR");
  const CheckpointTarget target = inspect_target(out_dir, "OUT_DIR");
  check_target(target, force);
  io::CheckpointReader reader = io::CheckpointReader::open(ckpt_dir, step);
  std::vector<io::CheckpointTensorSpec> specs;
  for (const io::ManifestTensor& e : reader.manifest().tensors) {
    if (drop_optimizer && is_optimizer_state(e.name)) continue;
    specs.push_back({e.name, e.dtype, e.shape, e.kind});
  }
  clear_target(target);
  io::CheckpointWriter writer(out_dir, step, specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    writer.write(specs[i].name, reader.read(specs[i].name));
    log::info("moerun convert: [{}/{}] {}", i + 1, specs.size(), specs[i].name);
  }
  json meta = reader.manifest().meta;
  if (drop_optimizer) meta["weights_only"] = true;
  writer.commit(meta);
  say(fmt::format("copied {} step {} -> {} ({} tensors, {}{})", ckpt_dir, step, out_dir,
                  specs.size(), mb(static_cast<double>(writer.bytes_written())),
                  drop_optimizer ? "; without optimizer state: a weights-only checkpoint, which "
                                   "`moerun train --resume` refuses (it needs the AdamW moments)"
                                 : ""));
  return 0;
}

// ---- --check-loss ----------------------------------------------------------------------------

int check_loss(const std::string& tokens_file, const std::string& ckpt_dir, int64_t step_opt,
               const Comm& self) {
  std::ifstream in(tokens_file);
  MOERUN_CONFIG_REQUIRE(in.good(), "--check-loss {}: cannot read the file", tokens_file);
  std::vector<int32_t> ids;
  for (long long v; in >> v;) ids.push_back(static_cast<int32_t>(v));
  MOERUN_CONFIG_REQUIRE(ids.size() >= 2, "--check-loss {}: needs at least 2 token ids",
                        tokens_file);
  const int64_t step = pick_step(ckpt_dir, step_opt);
  io::CheckpointReader reader = io::CheckpointReader::open(ckpt_dir, step);
  ModelConfig mc = model_from_meta(reader.manifest().meta, io::step_dir(ckpt_dir, step));
  mc.seq_len = static_cast<int64_t>(ids.size()) - 1;
  for (int32_t id : ids)
    MOERUN_CONFIG_REQUIRE(id >= 0 && id < mc.vocab, "--check-loss: token {} is outside [0, {})", id,
                          mc.vocab);
  Model model(mc, self);
  for (const NamedParam& p : model.params()) {
    const Tensor x = reader.read(p.name);
    MOERUN_CONFIG_REQUIRE(x.shape() == p.value->shape(), "\"{}\" is {}, the model needs {}", p.name,
                          x.shape_str(), p.value->shape_str());
    std::copy(x.f32(), x.f32() + x.numel(), p.value->f32());
  }
  const std::vector<MoELayer*> moe = model.moe_layers();
  for (size_t l = 0; l < moe.size(); ++l) {
    const Tensor b = reader.read(router_bias_name(mc.first_k_dense + static_cast<int64_t>(l)));
    std::copy(b.f32(), b.f32() + b.numel(), moe[l]->params().bias.f32());
  }
  const std::span<const int32_t> all(ids);
  double loss = model.forward(Tensor::from_host(all.first(ids.size() - 1), {1, mc.seq_len}),
                              Tensor::from_host(all.subspan(1), {1, mc.seq_len}));
  for (MoELayer* l : moe) loss -= l->stats().aux_loss;  // the cross-entropy alone
  std::printf("%.9g\n", loss);
  return 0;
}

}  // namespace

int run_convert(int argc, char** argv) {
  const Comm world = Comm::world();
  const bool root = world.rank() == 0;
  po::options_description desc(
      "moerun convert: moerun checkpoints <-> HuggingFace DeepSeek safetensors, one tensor in\n"
      "memory at a time (world rank 0 does the work)\n"
      "  moerun convert --to hf CKPT_DIR OUT_DIR [--step N] [--dtype bf16|f32] "
      "[--max-shard-gb 5]\n"
      "  moerun convert --from hf HF_DIR CKPT_DIR [--step 0] [--force]\n"
      "  moerun convert --reshard CKPT_DIR OUT_DIR [--step N] [--drop-optimizer] [--force]\n"
      "  moerun convert --check-loss TOKENS_FILE CKPT_DIR [--step N]");
  auto add = desc.add_options();
  add("help,h", "show this help");
  add("to", po::value<std::string>(),
      "export a moerun checkpoint to FORMAT (hf: config.json, sharded safetensors and "
      "model.safetensors.index.json; parameters only, no optimizer state)");
  add("from", po::value<std::string>(),
      "import FORMAT (hf: a DeepSeek-layout safetensors directory with config.json) into a "
      "moerun checkpoint with zero AdamW moments, which `moerun train --resume` starts from");
  add("reshard",
      "copy a checkpoint to OUT_DIR, verifying every tensor (checkpoints are layout-independent, "
      "so no data moves between shards)");
  add("check-loss", po::value<std::string>(),
      "print the mean next-token cross-entropy of the checkpoint's model on the whitespace-"
      "separated token ids in this file (one sequence; for comparing with an HF export)");
  add("step", po::value<int64_t>(),
      "the checkpoint step to read (default: the newest committed one); with --from: the step "
      "to write (default 0)");
  add("dtype", po::value<std::string>()->default_value("bf16"),
      "--to hf: safetensors dtype of the weights, bf16|f32 (the router bias stays f32)");
  add("max-shard-gb", po::value<double>()->default_value(5, "5"),
      "--to hf: largest safetensors shard in GB (10^9 bytes) of tensor data");
  add("force",
      "--to hf: write into a non-empty OUT_DIR (replacing an earlier export there); --from hf, "
      "--reshard: replace the checkpoint in a non-empty CKPT_DIR / OUT_DIR (its steps, latest "
      "and model.ini are removed first, so that --resume finds the new one)");
  add("drop-optimizer", "--reshard: leave out the optimizer state (a weights-only checkpoint)");
  add("paths", po::value<std::vector<std::string>>()->composing(), "the two directories");
  po::positional_options_description pos;
  pos.add("paths", -1);

  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (root) std::cout << desc << "\n";
    return 0;
  }
  const int modes = static_cast<int>(vm.count("to") + vm.count("from") + vm.count("reshard") +
                                     vm.count("check-loss"));
  MOERUN_CONFIG_REQUIRE(modes == 1,
                        "give exactly one of --to hf, --from hf, --reshard, "
                        "--check-loss (see --help)");
  const std::vector<std::string> paths =
      vm.count("paths") ? vm["paths"].as<std::vector<std::string>>() : std::vector<std::string>();
  const size_t want = vm.count("check-loss") ? 1 : 2;
  MOERUN_CONFIG_REQUIRE(paths.size() == want, "expected {} director{} after the options, got {}",
                        want, want == 1 ? "y" : "ies", paths.size());
  for (const char* f : {"to", "from"})
    if (vm.count(f))
      MOERUN_CONFIG_REQUIRE(vm[f].as<std::string>() == "hf", "--{} {}: only hf is supported", f,
                            vm[f].as<std::string>());
  const std::string dtype = vm["dtype"].as<std::string>();
  MOERUN_CONFIG_REQUIRE(dtype == "bf16" || dtype == "f32", "--dtype must be bf16 or f32 (got {})",
                        dtype);
  const int64_t step = vm.count("step") ? vm["step"].as<int64_t>() : -1;
  MOERUN_CONFIG_REQUIRE(!vm.count("step") || step >= 0, "--step must be >= 0 (got {})", step);

  // Rank 0 works; the others learn whether it succeeded (any failure: a clean exit everywhere).
  const Comm self = world.split(world.rank(), 0);  // --check-loss: a one-rank model
  on_rank0<ConfigError, ConfigError>(world, "convert", [&] {
    if (vm.count("to")) {
      ToHfOptions o;
      o.ckpt_dir = paths[0];
      o.out_dir = paths[1];
      o.step = step;
      o.dtype = dtype;
      o.max_shard_gb = vm["max-shard-gb"].as<double>();
      o.force = vm.count("force") > 0;
      convert_to_hf(o);
    } else if (vm.count("from")) {
      convert_from_hf({paths[0], paths[1], step < 0 ? 0 : step, vm.count("force") > 0});
    } else if (vm.count("reshard")) {
      convert_reshard(paths[0], paths[1], step, vm.count("drop-optimizer") > 0,
                      vm.count("force") > 0);
    } else {
      check_loss(vm["check-loss"].as<std::string>(), paths[0], step, self);
    }
  });
  return 0;
}

}  // namespace moerun
