// Option table of `moerun train`; see train_options.h.
#include "jobs/train_options.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <typeinfo>
#include <vector>

#include "jobs/moe_options.h"
#include "runtime/check.h"

namespace moerun {

namespace po = boost::program_options;

namespace {

// One rule per numeric option, checked right after parsing on every rank (before any
// communication), so that a bad value is one message naming the option, never an internal
// check deep in the run or an MPI abort.
struct Bound {
  double value;
  bool inclusive;
};
struct OptionRule {
  const char* name;
  std::optional<Bound> lo, hi;
  const char* meaning;  // said in the message
};

const std::vector<OptionRule>& option_rules() {
  static const std::vector<OptionRule> rules = {
      {"vocab", Bound{2, true}, {}, ">= 2"},
      {"layers", Bound{1, true}, {}, ">= 1"},
      {"heads", Bound{1, true}, {}, ">= 1"},
      {"seq-len", Bound{1, true}, {}, ">= 1"},
      {"first-k-dense", Bound{0, true}, {}, ">= 0"},
      {"dense-ffn", Bound{1, true}, {}, ">= 1"},
      {"init-std", Bound{0, false}, {}, "> 0"},
      {"hidden", Bound{1, true}, {}, ">= 1"},
      {"expert-width", Bound{1, true}, {}, ">= 1"},
      {"experts", Bound{0, true}, {}, ">= 0"},
      {"shared-experts", Bound{0, true}, {}, ">= 0"},
      {"top-k", Bound{1, true}, {}, ">= 1"},
      {"routed-scaling-factor", Bound{0, false}, {}, "> 0"},
      {"n-group", Bound{1, true}, {}, ">= 1"},
      {"topk-group", Bound{1, true}, {}, ">= 1"},
      {"capacity-factor", Bound{0, true}, {}, ">= 0 (0 = no capacity limit)"},
      {"bias-update-rate", Bound{0, true}, {}, ">= 0"},
      {"aux-alpha1", Bound{0, true}, {}, ">= 0"},
      {"aux-alpha2", Bound{0, true}, {}, ">= 0"},
      {"aux-seq-alpha", Bound{0, true}, {}, ">= 0"},
      {"steps", Bound{1, true}, {}, ">= 1"},
      {"micro-batch", Bound{1, true}, {}, ">= 1"},
      {"warmup-steps", Bound{0, true}, {}, ">= 0"},
      {"min-lr-ratio", Bound{0, true}, Bound{1, true}, "in [0, 1]"},
      {"weight-decay", Bound{0, true}, {}, ">= 0"},
      {"beta1", Bound{0, true}, Bound{1, false}, "in [0, 1)"},
      {"beta2", Bound{0, true}, Bound{1, false}, "in [0, 1)"},
      {"grad-clip", Bound{0, true}, {}, ">= 0 (0 = off)"},
      {"seed", Bound{0, true}, {}, ">= 0"},
      {"ep-size", Bound{0, true}, {}, ">= 0 (0 = all ranks)"},
      {"zero", Bound{0, true}, Bound{1, true}, "0 (AdamW state on every rank) or 1 (ZeRO-1)"},
      {"threads", Bound{0, true}, {}, ">= 0 (0 = cores / ranks on the node)"},
      {"eval-every", Bound{0, true}, {}, ">= 0 (0 = only at the end)"},
      {"eval-batches", Bound{1, true}, {}, ">= 1"},
      {"log-every", Bound{1, true}, {}, ">= 1"},
      {"loads-every", Bound{0, true}, {}, ">= 0 (0 = never)"},
      {"save-every", Bound{0, true}, {}, ">= 0 (0 = only at the end)"},
      {"keep-last", Bound{0, true}, {}, ">= 0 (0 = keep all)"},
      {"resume-step", Bound{-1, true}, {}, ">= 0 (or -1 = the step `latest` names)"},
      {"step-timeout", Bound{0, true}, {}, "a number of seconds >= 0 (0 = off)"},
      {"max-requeues", Bound{0, true}, {}, ">= 0"},
      {"exit-before-limit", Bound{0, true}, {}, "a number of minutes >= 0 (0 = off)"},
      {"rope-theta", Bound{1, false}, {}, "> 1"},
      {"q-lora-rank", Bound{0, true}, {}, ">= 0 (0 = a plain query projection)"},
      {"kv-lora-rank", Bound{1, true}, {}, ">= 1"},
      {"qk-nope-head-dim", Bound{1, true}, {}, ">= 1"},
      {"qk-rope-head-dim", Bound{2, true}, {}, ">= 2 (and even)"},
      {"v-head-dim", Bound{1, true}, {}, ">= 1"},
      {"rope-scaling-factor", Bound{1, true}, {}, ">= 1"},
      {"rope-original-max-position", Bound{1, true}, {}, ">= 1"},
      {"rope-beta-fast", Bound{0, false}, {}, "> 0"},
      {"rope-beta-slow", Bound{0, false}, {}, "> 0"},
      {"rope-mscale", Bound{0, true}, {}, ">= 0"},
      {"rope-mscale-all-dim", Bound{0, true}, {}, ">= 0"},
  };
  return rules;
}

double numeric_value(const po::variable_value& v) {
  const std::type_info& t = v.value().type();
  if (t == typeid(int64_t)) return static_cast<double>(v.as<int64_t>());
  if (t == typeid(int)) return static_cast<double>(v.as<int>());
  if (t == typeid(double)) return v.as<double>();
  if (t == typeid(float)) return static_cast<double>(v.as<float>());
  throw Error("option rule on a non-numeric option");
}

// Every given option has a value ("--lr ''" or "lr =" is an error, never the default), and
// every numeric option obeys its rule.
void check_train_option_values(const po::options_description& desc, const po::variables_map& vm) {
  for (const auto& [name, v] : vm) {
    if (v.defaulted() || v.empty()) continue;
    const po::option_description* d = desc.find_nothrow(name, false);
    if (d == nullptr || d->semantic()->max_tokens() == 0) continue;  // a flag has no value
    if (v.value().type() == typeid(std::string))
      MOERUN_CONFIG_REQUIRE(!v.as<std::string>().empty(),
                            "--{} has an empty value (give a value, or leave the option out for "
                            "its default)",
                            name);
  }
  for (const OptionRule& r : option_rules()) {
    if (!vm.count(r.name)) continue;
    const double x = numeric_value(vm[r.name]);
    const bool ok = std::isfinite(x) &&
                    (!r.lo || (r.lo->inclusive ? x >= r.lo->value : x > r.lo->value)) &&
                    (!r.hi || (r.hi->inclusive ? x <= r.hi->value : x < r.hi->value));
    MOERUN_CONFIG_REQUIRE(ok, "--{} must be {} (got {})", r.name, r.meaning, x);
  }
}

// Defaults: the tiny preset's shape (jobs/presets/tiny.ini), so `moerun train` alone is small.
MoEConfig default_moe() {
  MoEConfig m;
  m.hidden = 128;
  m.expert_width = 64;
  m.routed_experts = 16;
  m.shared_experts = 1;
  m.top_k = 4;
  return m;
}

// The MLA options: every one needs --attention mla, and the YaRN ones --rope-scaling yarn too.
constexpr const char* kMLAOptions[] = {"q-lora-rank",      "kv-lora-rank", "qk-nope-head-dim",
                                       "qk-rope-head-dim", "v-head-dim",   "rope-interleave",
                                       "rope-scaling"};
constexpr const char* kYarnOptions[] = {"rope-scaling-factor", "rope-original-max-position",
                                        "rope-beta-fast",      "rope-beta-slow",
                                        "rope-mscale",         "rope-mscale-all-dim"};

bool given(const po::variables_map& vm, const char* name) {
  return vm.count(name) && !vm[name].defaulted();
}

// Defaults of the MLA sizes: a small MLA for the default (tiny) shape, H 128 and 4 heads.
MLAConfig default_mla() {
  MLAConfig m;
  m.kv_lora_rank = 64;
  m.qk_nope_head_dim = 32;
  m.qk_rope_head_dim = 16;
  m.v_head_dim = 32;
  return m;
}

// --attention and its MLA / YaRN options into m. An MHA model keeps MLAConfig{} and
// RopeScaling{} (what a checkpoint without the MLA keys reads back as).
void read_attention_options(const po::variables_map& vm, ModelConfig& m) {
  m.attention = parse_attention_kind(vm["attention"].as<std::string>());
  m.rope_theta = vm["rope-theta"].as<double>();
  m.mla = MLAConfig{};
  m.rope_scaling = RopeScaling{};
  if (m.attention != AttentionKind::kMLA) {
    for (const char* name : kMLAOptions)
      MOERUN_CONFIG_REQUIRE(!given(vm, name),
                            "--{} is an MLA option: it needs --attention mla (got --attention {})",
                            name, to_string(m.attention));
    for (const char* name : kYarnOptions)
      MOERUN_CONFIG_REQUIRE(!given(vm, name),
                            "--{} is an MLA option: it needs --attention mla and --rope-scaling "
                            "yarn (got --attention {})",
                            name, to_string(m.attention));
    return;
  }
  m.mla.q_lora_rank = vm["q-lora-rank"].as<int64_t>();
  m.mla.kv_lora_rank = vm["kv-lora-rank"].as<int64_t>();
  m.mla.qk_nope_head_dim = vm["qk-nope-head-dim"].as<int64_t>();
  m.mla.qk_rope_head_dim = vm["qk-rope-head-dim"].as<int64_t>();
  m.mla.v_head_dim = vm["v-head-dim"].as<int64_t>();
  m.mla.rope_interleave = vm["rope-interleave"].as<bool>();
  const std::string scaling = vm["rope-scaling"].as<std::string>();
  MOERUN_CONFIG_REQUIRE(scaling == "none" || scaling == "yarn",
                        "--rope-scaling must be none or yarn (got '{}')", scaling);
  if (scaling == "none") {
    for (const char* name : kYarnOptions)
      MOERUN_CONFIG_REQUIRE(!given(vm, name), "--{} needs --rope-scaling yarn (got none)", name);
    return;
  }
  RopeScaling& r = m.rope_scaling;
  r.yarn = true;
  r.factor = vm["rope-scaling-factor"].as<double>();
  r.original_max_position = vm["rope-original-max-position"].as<int64_t>();
  r.beta_fast = vm["rope-beta-fast"].as<double>();
  r.beta_slow = vm["rope-beta-slow"].as<double>();
  r.mscale = vm["rope-mscale"].as<double>();
  r.mscale_all_dim = vm["rope-mscale-all-dim"].as<double>();
}

}  // namespace

po::options_description train_options() {
  po::options_description general("moerun train: train a DeepSeekMoE language model");
  general.add_options()("help,h", "show this help")(
      "config", po::value<std::string>()->default_value(""),
      "INI file of options (keys = option names without --); the command line overrides it");
  po::options_description model("model");
  model.add_options()("vocab", po::value<int64_t>()->default_value(257),
                      "vocabulary size (257 = bytes + end-of-document)")(
      "layers", po::value<int64_t>()->default_value(4), "decoder blocks L")(
      "heads", po::value<int64_t>()->default_value(4), "attention heads (MHA)")(
      "seq-len", po::value<int64_t>()->default_value(128), "tokens per sequence")(
      "first-k-dense", po::value<int64_t>()->default_value(1),
      "the first blocks use a dense SwiGLU FFN instead of MoE")(
      "dense-ffn", po::value<int64_t>()->default_value(344), "dense FFN width")(
      "init-std", po::value<float>()->default_value(0.006f), "Normal(0, std) init of matrices");
  add_moe_options(model, default_moe());
  const MLAConfig mla = default_mla();
  const RopeScaling yarn;
  po::options_description attn("attention (MLA: DeepSeek-V2/V3 multi-head latent attention)");
  attn.add_options()(
      "attention", po::value<std::string>()->default_value("mha"),
      "mha: multi-head attention, head dim = --hidden / --heads (DeepSeek LLM, DeepSeekMoE); "
      "mla: multi-head latent attention (DeepSeek-V2/V3): keys and values from a shared "
      "compressed latent of --kv-lora-rank, queries and keys split into a no-RoPE part of "
      "--qk-nope-head-dim and a RoPE part of --qk-rope-head-dim per head. The options after "
      "--rope-theta need --attention mla")(
      "rope-theta", po::value<double>()->default_value(10000.0),
      "RoPE base: angle = position * theta^(-2j / rotated dims)")(
      "q-lora-rank", po::value<int64_t>()->default_value(mla.q_lora_rank),
      "MLA query compression rank: 0 = a plain query projection H -> heads x (nope + rope) "
      "(V2-Lite); > 0 = H -> rank, RMSNorm, rank -> heads x (nope + rope) (V2: 1536, V3: 1536)")(
      "kv-lora-rank", po::value<int64_t>()->default_value(mla.kv_lora_rank),
      "MLA key/value latent width d_c, what a decode cache keeps per token besides the RoPE key "
      "(V2, V3: 512)")("qk-nope-head-dim",
                       po::value<int64_t>()->default_value(mla.qk_nope_head_dim),
                       "MLA per-head query/key part without RoPE (V2, V3: 128)")(
      "qk-rope-head-dim", po::value<int64_t>()->default_value(mla.qk_rope_head_dim),
      "MLA per-head query part with RoPE, and the width of the one RoPE key per token that the "
      "heads share; even (V2, V3: 64)")(
      "v-head-dim", po::value<int64_t>()->default_value(mla.v_head_dim),
      "MLA value width per head; the output projection is heads x this -> H (V2, V3: 128)")(
      "rope-interleave",
      po::value<bool>()->default_value(mla.rope_interleave, mla.rope_interleave ? "true" : "false"),
      "MLA RoPE pairing: true = adjacent pairs (x[2i], x[2i+1]) as DeepSeek-V2/V3 (HF "
      "rope_interleave); false = the LLaMA rotate_half pairs (x[i], x[i + d/2])")(
      "rope-scaling", po::value<std::string>()->default_value("none"),
      "MLA RoPE frequency scaling: none|yarn (YaRN exactly as HF transformers computes it; "
      "DeepSeek-V2/V3 use yarn with factor 40)")("rope-scaling-factor",
                                                 po::value<double>()->default_value(yarn.factor),
                                                 "YaRN: context extension factor s (V2, V3: 40)")(
      "rope-original-max-position", po::value<int64_t>()->default_value(yarn.original_max_position),
      "YaRN: the pre-training context length (HF original_max_position_embeddings; V2, V3: "
      "4096)")("rope-beta-fast", po::value<double>()->default_value(yarn.beta_fast),
               "YaRN: rotations above which a dimension is not interpolated (V2, V3: 32)")(
      "rope-beta-slow", po::value<double>()->default_value(yarn.beta_slow),
      "YaRN: rotations below which a dimension is fully interpolated (V2, V3: 1)")(
      "rope-mscale", po::value<double>()->default_value(yarn.mscale),
      "YaRN: cos/sin are scaled by (0.1 mscale ln(s) + 1) / (0.1 mscale_all_dim ln(s) + 1), "
      "as HF computes attention_factor (V2-Lite: 0.707, V3: 1)")(
      "rope-mscale-all-dim", po::value<double>()->default_value(yarn.mscale_all_dim),
      "YaRN: the denominator above; when > 0 the softmax scale is also multiplied by "
      "(0.1 mscale_all_dim ln(s) + 1)^2, as HF DeepSeek-V2/V3 do (V2-Lite: 0.707, V3: 1)");
  model.add(attn);
  po::options_description train("training");
  train.add_options()("steps", po::value<int64_t>()->default_value(300), "optimizer steps")(
      "global-batch", po::value<std::string>()->default_value("16"),
      "sequences per optimizer step over all ranks, or auto (DeepSeek LLM scaling law)")(
      "micro-batch", po::value<int64_t>()->default_value(4),
      "sequences per rank per forward/backward (gradient accumulation fills the global batch)")(
      "lr", po::value<std::string>()->default_value("3e-3"),
      "peak learning rate, or auto (DeepSeek LLM scaling law for this compute budget)")(
      "schedule", po::value<std::string>()->default_value("cosine"),
      "lr schedule: cosine|multistep|constant")(
      "warmup-steps", po::value<int64_t>()->default_value(20), "linear warmup steps")(
      "min-lr-ratio", po::value<double>()->default_value(0.1),
      "cosine floor as a fraction of --lr")("weight-decay", po::value<double>()->default_value(0.1),
                                            "AdamW decoupled weight decay")(
      "beta1", po::value<double>()->default_value(0.9), "AdamW beta1")(
      "beta2", po::value<double>()->default_value(0.95), "AdamW beta2")(
      "grad-clip", po::value<double>()->default_value(1.0),
      "clip the global gradient norm to this (0 = off)")(
      "seed", po::value<int64_t>()->default_value(1), "weights and data order seed (>= 0)")(
      "ep-size", po::value<int>()->default_value(0), "expert-parallel group size (0 = all ranks)")(
      "zero", po::value<int>()->default_value(0),
      "optimizer-state sharding: 0 = every rank keeps the AdamW moments of all it holds; 1 = "
      "ZeRO-1: the moments of the dense parameters are split evenly over the world and those of "
      "the routed experts over their expert-data-parallel group (world / ep-size ranks), so each "
      "rank keeps ~1/DP of them; gradients are reduce-scattered, each rank updates its shard, the "
      "parameters are all-gathered. Losses equal --zero 0 to rounding (the sums run in another "
      "order); checkpoints are the same either way and load at any layout and --zero")(
      "threads", po::value<int>()->default_value(0),
      "BLAS threads per rank (0 = cores / ranks on the node)")(
      "recompute", po::value<std::string>()->default_value("none"),
      "activation recomputation per decoder block, none|moe|full; losses and gradients stay "
      "bitwise the same. none: keep every activation for backward. moe: drop the MoE layers' "
      "SwiGLU pre-activations (routed (pairs, 2F), shared (tokens, 2SF)) and recompute them from "
      "the kept dispatched rows in backward (about one more expert forward, no communication). "
      "full: keep only each block's input (and its routing: indices and weights, no rows) and "
      "re-run the block's forward just before its backward (about one more forward: attention, "
      "experts and one extra dispatch all-to-all per MoE block; no re-routing, so load counts, "
      "bias updates, aux losses and drops are counted once)")(
      "no-memory-check", "skip the memory estimate check before allocating the model")(
      "step-timeout", po::value<double>()->default_value(1800),
      "watchdog: when no step, evaluation or save finishes for this many seconds, log the ranks "
      "that stopped answering (heartbeat files in <out>/heartbeat) and end the job with exit 75 "
      "for a requeue; the last committed checkpoint stays intact (0 = off). A stopped rank ends "
      "the job about this long after it stopped (measured on 2 ranks: 4.5-4.8 s at 5, 9.7-10.8 s "
      "at 10)");
  po::options_description sched("scheduler (Slurm)");
  sched.add_options()(
      "max-requeues", po::value<int>()->default_value(10),
      "under Slurm, after a stop signal (USR1, TERM, INT, HUP) or --exit-before-limit has saved "
      "a checkpoint, rank 0 requeues the job (scontrol requeue; array tasks too) while "
      "SLURM_RESTART_COUNT is below this; the ranks then exit 0 and the requeued job continues "
      "with --resume auto (0 = never requeue)")(
      "exit-before-limit", po::value<double>()->default_value(0),
      "under Slurm, save a checkpoint and requeue when fewer than this many minutes of the job's "
      "time limit are left (read from squeue at start; the ranks agree at each step boundary); "
      "leave room for one step and a save (0 = off)");
  po::options_description io("data and output");
  io.add_options()("data", po::value<std::string>()->default_value("data/default.h5"),
                   "token dataset: a moerun HDF5 file (jobs/make_default_dataset.sh) or a "
                   "Megatron .bin/.idx prefix")(
      "eval-every", po::value<int64_t>()->default_value(50),
      "validation every N steps and at the end (0 = only at the end)")(
      "eval-batches", po::value<int64_t>()->default_value(4),
      "validation micro-batches per rank per evaluation")(
      "log-every", po::value<int64_t>()->default_value(10), "progress and metrics every N steps")(
      "loads-every", po::value<int64_t>()->default_value(50),
      "per-expert loads and the dispatch byte matrix into the metrics every N steps")(
      "out", po::value<std::string>()->default_value("runs/train"),
      "run directory: metrics.jsonl, config.ini")(
      "ckpt-dir", po::value<std::string>()->default_value(""),
      "checkpoint directory (default: <out>/ckpt); a checkpoint is written at the end")(
      "save-every", po::value<int64_t>()->default_value(0),
      "also checkpoint every N steps (0 = only at the end)")(
      "keep-last", po::value<int>()->default_value(2),
      "committed checkpoints to keep (0 = all); older ones are deleted after a save")(
      "resume", po::value<std::string>()->default_value(""),
      "resume from this checkpoint directory (any rank count / EP size): the step its `latest` "
      "names (or --resume-step); `auto`: from --ckpt-dir when it holds a committed step, falling "
      "back to the newest step that verifies, else start fresh")(
      "resume-step", po::value<int64_t>()->default_value(-1),
      "with --resume: this committed step instead of the one `latest` names (-1 = latest)");
  po::options_description all;
  all.add(general).add(model).add(train).add(sched).add(io);
  return all;
}

bool parse_train_config(int argc, char** argv, TrainConfig& cfg, bool print_help) {
  const po::options_description desc = train_options();
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  if (vm.count("help")) {
    if (print_help) std::cout << desc << "\n";
    return false;
  }
  cfg.config_file = vm["config"].as<std::string>();
  if (!cfg.config_file.empty()) {
    std::ifstream in(cfg.config_file);
    MOERUN_CONFIG_REQUIRE(in.good(), "--config {}: cannot open the file", cfg.config_file);
    try {
      po::store(po::parse_config_file(in, desc), vm);
    } catch (const po::error& e) {
      MOERUN_CONFIG_REQUIRE(false, "--config {}: {}", cfg.config_file, e.what());
    }
  }
  po::notify(vm);
  check_train_option_values(desc, vm);

  ModelConfig& m = cfg.model;
  m.vocab = vm["vocab"].as<int64_t>();
  m.hidden = vm["hidden"].as<int64_t>();
  m.layers = vm["layers"].as<int64_t>();
  m.heads = vm["heads"].as<int64_t>();
  m.seq_len = vm["seq-len"].as<int64_t>();
  m.first_k_dense = vm["first-k-dense"].as<int64_t>();
  m.dense_ffn = vm["dense-ffn"].as<int64_t>();
  m.init_std = vm["init-std"].as<float>();
  m.moe = moe_config_from(vm);
  read_attention_options(vm, m);

  cfg.steps = vm["steps"].as<int64_t>();
  const std::string gb = vm["global-batch"].as<std::string>();
  cfg.batch_auto = gb == "auto";
  if (!cfg.batch_auto) {
    size_t used = 0;
    try {
      cfg.global_batch = std::stoll(gb, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOERUN_CONFIG_REQUIRE(!gb.empty() && used == gb.size() && cfg.global_batch > 0,
                          "--global-batch must be a positive integer or auto (got '{}')", gb);
  }
  cfg.micro_batch = vm["micro-batch"].as<int64_t>();
  const std::string lr = vm["lr"].as<std::string>();
  cfg.lr_auto = lr == "auto";
  if (!cfg.lr_auto) {
    size_t used = 0;
    try {
      cfg.schedule.peak = std::stod(lr, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOERUN_CONFIG_REQUIRE(!lr.empty() && used == lr.size() && cfg.schedule.peak > 0,
                          "--lr must be a positive number or auto (got '{}')", lr);
  }
  cfg.schedule.kind = parse_schedule(vm["schedule"].as<std::string>());
  cfg.schedule.warmup_steps = vm["warmup-steps"].as<int64_t>();
  cfg.schedule.min_ratio = vm["min-lr-ratio"].as<double>();
  cfg.schedule.total_steps = cfg.steps;
  cfg.weight_decay = vm["weight-decay"].as<double>();
  cfg.beta1 = vm["beta1"].as<double>();
  cfg.beta2 = vm["beta2"].as<double>();
  cfg.grad_clip = vm["grad-clip"].as<double>();
  cfg.seed = static_cast<uint64_t>(vm["seed"].as<int64_t>());
  cfg.ep_size = vm["ep-size"].as<int>();
  cfg.zero = vm["zero"].as<int>();
  cfg.threads = vm["threads"].as<int>();
  m.recompute = parse_recompute(vm["recompute"].as<std::string>());
  cfg.check_memory = vm.count("no-memory-check") == 0;
  cfg.step_timeout = vm["step-timeout"].as<double>();
  cfg.max_requeues = vm["max-requeues"].as<int>();
  cfg.exit_before_limit = vm["exit-before-limit"].as<double>();
  cfg.data = vm["data"].as<std::string>();
  cfg.eval_every = vm["eval-every"].as<int64_t>();
  cfg.eval_batches = vm["eval-batches"].as<int64_t>();
  cfg.log_every = vm["log-every"].as<int64_t>();
  cfg.loads_every = vm["loads-every"].as<int64_t>();
  cfg.out = vm["out"].as<std::string>();
  cfg.ckpt_dir = vm["ckpt-dir"].as<std::string>();
  if (cfg.ckpt_dir.empty()) cfg.ckpt_dir = cfg.out + "/ckpt";
  cfg.save_every = vm["save-every"].as<int64_t>();
  cfg.keep_last = vm["keep-last"].as<int>();
  cfg.resume = vm["resume"].as<std::string>();
  cfg.resume_step = vm["resume-step"].as<int64_t>();
  MOERUN_CONFIG_REQUIRE(cfg.resume_step < 0 || !cfg.resume.empty(),
                        "--resume-step {} needs --resume DIR (or --resume auto)", cfg.resume_step);

  MOERUN_CONFIG_REQUIRE(!cfg.out.empty(), "--out must name a run directory");
  return true;
}

std::string to_ini(const TrainConfig& c) {
  const ModelConfig& m = c.model;
  const MoEConfig& e = m.moe;
  std::ostringstream o;
  o.precision(10);
  o << "# effective options of this run (moerun train --config this-file reproduces it)\n";
  o << "vocab = " << m.vocab << "\nhidden = " << m.hidden << "\nlayers = " << m.layers
    << "\nheads = " << m.heads << "\nseq-len = " << m.seq_len
    << "\nfirst-k-dense = " << m.first_k_dense << "\ndense-ffn = " << m.dense_ffn
    << "\ninit-std = " << m.init_std << "\nexpert-width = " << e.expert_width
    << "\nexperts = " << e.routed_experts << "\nshared-experts = " << e.shared_experts
    << "\ntop-k = " << e.top_k << "\nscore-fn = " << to_string(e.score_fn)
    << "\ntopk-norm = " << to_string(e.topk_norm)
    << "\nrouted-scaling-factor = " << e.routed_scaling_factor << "\nn-group = " << e.n_group
    << "\ntopk-group = " << e.topk_group << "\ngroup-score = " << to_string(e.group_score)
    << "\nmax-nodes-per-token = " << e.max_nodes_per_token
    << "\nmax-devices-per-token = " << e.max_devices_per_token
    << "\ncapacity-factor = " << e.capacity_factor << "\nbalance = " << to_string(e.balance)
    << "\nbias-update = " << to_string(e.bias_update)
    << "\nbias-update-rate = " << e.bias_update_rate << "\naux-alpha1 = " << e.aux_alpha1
    << "\naux-alpha2 = " << e.aux_alpha2 << "\naux-seq-alpha = " << e.aux_seq_alpha;
  o << "\nsteps = " << c.steps << "\nglobal-batch = " << c.global_batch
    << "\nmicro-batch = " << c.micro_batch << "\nlr = " << c.schedule.peak
    << "\nschedule = " << to_string(c.schedule.kind)
    << "\nwarmup-steps = " << c.schedule.warmup_steps << "\nmin-lr-ratio = " << c.schedule.min_ratio
    << "\nweight-decay = " << c.weight_decay << "\nbeta1 = " << c.beta1 << "\nbeta2 = " << c.beta2
    << "\ngrad-clip = " << c.grad_clip << "\nseed = " << c.seed << "\nep-size = " << c.ep_size
    << "\nzero = " << c.zero << "\ndata = " << c.data << "\neval-every = " << c.eval_every
    << "\neval-batches = " << c.eval_batches << "\nlog-every = " << c.log_every
    << "\nloads-every = " << c.loads_every << "\nout = " << c.out << "\nckpt-dir = " << c.ckpt_dir
    << "\nsave-every = " << c.save_every << "\nkeep-last = " << c.keep_last
    << "\nstep-timeout = " << c.step_timeout << "\nmax-requeues = " << c.max_requeues
    << "\nexit-before-limit = " << c.exit_before_limit << "\n";
  o << "recompute = " << to_string(m.recompute) << "\n";
  // MLA keys only for an MLA model, YaRN keys only with YaRN: the INI reads back as the run.
  o << "attention = " << to_string(m.attention) << "\nrope-theta = " << m.rope_theta << "\n";
  if (m.attention == AttentionKind::kMLA) {
    o << "q-lora-rank = " << m.mla.q_lora_rank << "\nkv-lora-rank = " << m.mla.kv_lora_rank
      << "\nqk-nope-head-dim = " << m.mla.qk_nope_head_dim
      << "\nqk-rope-head-dim = " << m.mla.qk_rope_head_dim << "\nv-head-dim = " << m.mla.v_head_dim
      << "\nrope-interleave = " << (m.mla.rope_interleave ? "true" : "false")
      << "\nrope-scaling = " << (m.rope_scaling.yarn ? "yarn" : "none") << "\n";
    if (m.rope_scaling.yarn) {
      const RopeScaling& r = m.rope_scaling;
      o << "rope-scaling-factor = " << r.factor
        << "\nrope-original-max-position = " << r.original_max_position
        << "\nrope-beta-fast = " << r.beta_fast << "\nrope-beta-slow = " << r.beta_slow
        << "\nrope-mscale = " << r.mscale << "\nrope-mscale-all-dim = " << r.mscale_all_dim << "\n";
    }
  }
  return o.str();
}

}  // namespace moerun
