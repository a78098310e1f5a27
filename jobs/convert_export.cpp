// `moerun convert --to hf`: a moerun checkpoint as config.json + sharded safetensors that
// transformers loads (see convert_common.h).
#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
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

}  // namespace

int convert_to_hf(const ToHfOptions& o) {
  const int64_t step = pick_step(o.ckpt_dir, o.step);
  io::CheckpointReader reader = io::CheckpointReader::open(o.ckpt_dir, step);
  const std::string where = io::step_dir(o.ckpt_dir, step);
  const ModelConfig mc = model_from_meta(reader.manifest().meta, where);
  const bool has_moe = mc.moe.routed_experts > 0 && mc.first_k_dense < mc.layers;

  io::HfShape s = hf_shape_of(mc);
  s.torch_dtype = o.dtype == "f32" ? "float32" : "bfloat16";
  const bool mla = mc.attention == AttentionKind::kMLA;
  s.model_type = mla ? (o.hf_model_type.empty() ? "deepseek_v3" : o.hf_model_type) : "deepseek";
  MOERUN_CONFIG_REQUIRE(
      o.hf_model_type.empty() || o.hf_model_type == s.model_type,
      "--hf-model-type {}: {} is a multi-head attention model, which only the V1 layout "
      "(deepseek, DeepseekForCausalLM) holds; deepseek_v2 / deepseek_v3 are for --attention mla",
      o.hf_model_type, where);
  const bool grouped = s.n_group > 1 && s.topk_group < s.n_group;
  const bool has_bias = has_moe && reader.find(router_bias_name(mc.first_k_dense)) != nullptr;
  if (!mla) {
    // The loss-free bias is part of the model only under --balance loss-free (otherwise it
    // stays 0).
    s.score_bias = has_bias && mc.moe.balance == Balance::kLossFree;
    s.topk_method = s.score_bias ? "noaux_tc" : grouped ? "group_limited_greedy" : "greedy";
  } else if (s.model_type == "deepseek_v3") {
    // transformers' DeepseekV3 routes sigmoid + bias, noaux_tc: anything else would change the
    // model, so it is refused by the moerun option that differs.
    s.score_bias = true;  // always in a V3 checkpoint (zeros unless --balance loss-free)
    s.topk_method = "noaux_tc";
    if (has_moe) {
      MOERUN_CONFIG_REQUIRE(mc.moe.score_fn == ScoreFn::kSigmoid,
                            "{}: --score-fn {}: transformers' DeepseekV3 routes with sigmoid "
                            "scores only; export it with --hf-model-type deepseek_v2 (softmax)",
                            where, to_string(mc.moe.score_fn));
      MOERUN_CONFIG_REQUIRE(!grouped || mc.moe.group_score == GroupScore::kTop2Sum,
                            "{}: --group-score max: transformers' DeepseekV3 scores a group by "
                            "the sum of its top-2 biased scores (--group-score top2sum); "
                            "deepseek_v2 scores it by its max",
                            where);
    }
  } else {
    s.score_bias = false;
    s.topk_method = grouped ? "group_limited_greedy" : "greedy";
    if (has_moe) {
      MOERUN_CONFIG_REQUIRE(mc.moe.score_fn == ScoreFn::kSoftmax,
                            "{}: --score-fn {}: transformers' DeepseekV2 routes with softmax "
                            "scores only; export it as deepseek_v3 (sigmoid)",
                            where, to_string(mc.moe.score_fn));
      MOERUN_CONFIG_REQUIRE(mc.moe.topk_norm == TopkNorm::kNone,
                            "{}: --topk-norm normalize: transformers' DeepseekV2 never "
                            "normalises the top-k weights",
                            where);
      MOERUN_CONFIG_REQUIRE(!grouped || mc.moe.group_score == GroupScore::kMax,
                            "{}: --group-score top2sum: transformers' DeepseekV2 scores a group "
                            "by its max (--group-score max); deepseek_v3 uses the top-2 sum",
                            where);
      // DeepseekV2 has no score-correction bias: only an all-zero one can be left out.
      for (int64_t l = mc.first_k_dense; has_bias && l < mc.layers; ++l) {
        const Tensor b = reader.read(router_bias_name(l));
        for (int64_t e = 0; e < b.numel(); ++e)
          MOERUN_CONFIG_REQUIRE(b.f32()[e] == 0.0f,
                                "{}: \"{}\" is not zero (--balance loss-free): transformers' "
                                "DeepseekV2 has no score-correction bias; export it as "
                                "deepseek_v3",
                                where, router_bias_name(l));
      }
    }
  }
  if (has_moe) {
    say(fmt::format(
        "routing: scoring_func {}, norm_topk_prob {}, routed_scaling_factor {}, n_group {}, "
        "topk_group {}; topk_method {} ({})",
        s.scoring_func, s.norm_topk_prob, s.routed_scaling_factor, s.n_group, s.topk_group,
        s.topk_method,
        s.score_bias ? "the router bias is exported as mlp.gate.e_score_correction_bias"
        : grouped    ? "no bias exported (not loss-free); group-limited routing"
                     : "no bias exported (not loss-free)"));
    if (!mla && grouped && s.score_bias && mc.moe.group_score == GroupScore::kMax)
      say("warning: moerun scored groups by their max (--group-score max); HF noaux_tc scores a "
          "group by the sum of its top-2 biased scores: routing may differ in HF");
    if (!mla && grouped && !s.score_bias && mc.moe.group_score == GroupScore::kTop2Sum)
      say("warning: moerun scored groups by the top-2 sum; HF group_limited_greedy uses the max");
    if (mc.moe.capacity_factor > 0)
      say(
          fmt::format("warning: trained with --capacity-factor {} (tokens dropped); HF inference "
                      "is dropless",
                      mc.moe.capacity_factor));
  }
  if (s.yarn) {
    // transformers reads YaRN's factor as max_position_embeddings / original_max_position (and
    // warns when they differ): the extended context, not the training --seq-len.
    const auto extended = static_cast<int64_t>(
        std::llround(static_cast<double>(s.yarn_original_max_position) * s.yarn_factor));
    if (extended > s.max_position_embeddings) {
      say(fmt::format(
          "YaRN: max_position_embeddings {} (--rope-original-max-position {} x "
          "--rope-scaling-factor {}; trained with --seq-len {})",
          extended, s.yarn_original_max_position, s.yarn_factor, s.max_position_embeddings));
      s.max_position_embeddings = extended;
    }
  }
  if (mla)
    say(fmt::format(
        "layout {} ({}): AutoModelForCausalLM.from_pretrained loads it without remote "
        "code",
        s.model_type,
        s.model_type == "deepseek_v3" ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"));

  const std::vector<io::HfTensor> map = io::hf_tensor_map(s);
  // transformers keeps DeepseekV3's router (gate.weight and the bias) in fp32 whatever the dtype.
  auto f32_in_hf = [&s](const io::HfTensor& t) {
    return t.f32_in_hf || (s.model_type == "deepseek_v3" && t.name.ends_with(".moe.gate"));
  };
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
      specs.push_back({p.hf_name, f32_in_hf(t) ? "F32" : st_dtype, p.hf_shape});
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

}  // namespace convert
}  // namespace moerun
