// What `moerun train` settles before the model exists; see train_setup.h.
#include "jobs/train_setup.h"

#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "comm/agree.h"
#include "layers/model_plan.h"
#include "runtime/check.h"
#include "runtime/log.h"

namespace moerun {

namespace fs = std::filesystem;

void resolve_train_config(TrainConfig& cfg, const Topology& topo) {
  const int W = topo.world.size();
  ModelConfig& mc = cfg.model;
  mc.validate(topo.ep_size);
  // Scaling-law choices (DeepSeek LLM): deterministic, the same on every rank.
  if (cfg.batch_auto || cfg.lr_auto) {
    int64_t batch = cfg.batch_auto ? 1 : cfg.global_batch;
    ScalingChoice choice;
    for (int it = 0; it < (cfg.batch_auto ? 30 : 1); ++it) {  // B depends on C = M * steps * B
      choice = scaling_law_choice(mc, cfg.steps * batch * mc.seq_len);
      if (cfg.batch_auto) {
        // Round up to a multiple of ranks x micro-batch so that it shards evenly.
        const int64_t unit = static_cast<int64_t>(W) * cfg.micro_batch;
        batch = std::max<int64_t>(unit, (choice.global_batch_seqs + unit - 1) / unit * unit);
      }
    }
    if (cfg.batch_auto) cfg.global_batch = batch;
    if (cfg.lr_auto) cfg.schedule.peak = choice.lr;
    log::info("moerun train: --lr {}, --global-batch {} from the scaling laws:\n{}",
              cfg.lr_auto ? fmt::format("{:.3g}", cfg.schedule.peak) : "given",
              cfg.batch_auto ? std::to_string(cfg.global_batch) : "given", choice.explanation);
    if (cfg.batch_auto)
      log::info("  (the global batch is rounded up to a multiple of ranks x --micro-batch = {})",
                static_cast<int64_t>(W) * cfg.micro_batch);
  }
  cfg.schedule.total_steps = cfg.steps;
  if (cfg.schedule.warmup_steps > cfg.steps) {  // e.g. a preset's warmup with a short --steps
    log::info("moerun train: --warmup-steps {} > --steps {}; warming up over all {}",
              cfg.schedule.warmup_steps, cfg.steps, cfg.steps);
    cfg.schedule.warmup_steps = cfg.steps;
  }
  cfg.schedule.validate();
}

void check_train_memory(const TrainConfig& cfg, const Topology& topo) {
  if (!cfg.check_memory) return;
  const MemoryEstimate est =
      estimate_memory(cfg.model, topo.ep_size, topo.world.size(), cfg.micro_batch, cfg.zero);
  const int64_t avail = available_memory_bytes();
  const int64_t ranks_here = topo.local_size();
  MOERUN_CONFIG_REQUIRE(avail == 0 || est.total_bytes * ranks_here <= avail,
                        "this model needs about {:.1f} GiB per rank x {} ranks on this node, "
                        "but only {:.1f} GiB is available (--no-memory-check to try anyway):\n{}",
                        static_cast<double>(est.total_bytes) / (1 << 30), ranks_here,
                        static_cast<double>(avail) / (1 << 30), est.breakdown);
}

namespace {

std::shared_ptr<io::TokenSource> open_split(const std::string& path, io::Split split,
                                            int64_t vocab) {
  MOERUN_CONFIG_REQUIRE(fs::exists(path) || fs::exists(path + ".idx"),
                        "--data {}: no such file (build the default dataset with "
                        "jobs/make_default_dataset.sh, or give a Megatron .bin/.idx prefix)",
                        path);
  try {
    return io::open_token_source(path, split, vocab);
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    if (what.find("vocab") != std::string::npos && what.find("--vocab") == std::string::npos)
      throw ConfigError(fmt::format("--data {} does not fit --vocab {}: {}", path, vocab, what));
    throw;
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("--data {}: {}", path, e.what()));
  }
}

}  // namespace

TrainData open_train_data(const TrainConfig& cfg, const Topology& topo) {
  const int W = topo.world.size();
  const ModelConfig& mc = cfg.model;
  TrainData d;
  d.train = open_split(cfg.data, io::Split::kTrain, mc.vocab);
  d.validation = open_split(cfg.data, io::Split::kValidation, mc.vocab);
  io::LoaderOptions lo;
  lo.seq_len = mc.seq_len;
  lo.global_batch = cfg.global_batch;
  lo.micro_batch = cfg.micro_batch;
  lo.dp_rank = topo.world.rank();
  lo.dp_size = W;
  lo.seed = cfg.seed;
  {
    io::TokenLoader probe(d.train, lo);
    MOERUN_CONFIG_REQUIRE(probe.steps_per_epoch() >= 1,
                          "--data {}: the train split has {} windows of --seq-len {} + 1 tokens, "
                          "fewer than one --global-batch of {}",
                          cfg.data, probe.windows_per_epoch(), mc.seq_len, cfg.global_batch);
  }
  io::LoaderOptions vo = lo;
  vo.global_batch = static_cast<int64_t>(W) * cfg.micro_batch;
  io::TokenLoader probe(d.validation, vo);
  MOERUN_CONFIG_REQUIRE(probe.steps_per_epoch() >= 1,
                        "--data {}: the validation split has {} windows of --seq-len {} + 1, "
                        "fewer than ranks x --micro-batch = {}",
                        cfg.data, probe.windows_per_epoch(), mc.seq_len, vo.global_batch);
  return d;
}

MetricsWriter prepare_run_dir(const TrainConfig& cfg, const Comm& world) {
  MetricsWriter metrics;
  on_rank0<ConfigError, ConfigError>(world, "setting up the run directory", [&] {
    try {
      fs::create_directories(cfg.out);
    } catch (const fs::filesystem_error& e) {
      throw ConfigError(fmt::format("--out {}: cannot create the run directory: {}", cfg.out,
                                    e.code().message()));
    }
    const fs::path path = fs::path(cfg.out) / "metrics.jsonl";
    if (fs::exists(path) && cfg.resume.empty()) {  // keep an earlier run's metrics
      int n = 1;
      while (fs::exists(fs::path(cfg.out) / fmt::format("metrics.{}.jsonl", n))) ++n;
      fs::rename(path, fs::path(cfg.out) / fmt::format("metrics.{}.jsonl", n));
      log::info("moerun train: kept the previous metrics as metrics.{}.jsonl", n);
    }
    std::ofstream(fs::path(cfg.out) / "config.ini") << to_ini(cfg);
    metrics = MetricsWriter(path.string());
  });
  return metrics;
}

void check_checkpoint_dir(const std::string& dir, int64_t checkpoint_bytes, const Comm& world) {
  on_every_rank<ConfigError, ConfigError>(world, "checking --ckpt-dir", [&] {
    std::error_code ec;
    if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
      throw ConfigError(fmt::format("--ckpt-dir {}: exists and is not a directory", dir));
    fs::create_directories(dir, ec);
    if (ec)
      throw ConfigError(
          fmt::format("--ckpt-dir {}: cannot create the directory: {}", dir, ec.message()));
    // A real write, not an access() check: read-only mounts, quotas and ACLs all show here.
    const fs::path probe = fs::path(dir) / fmt::format(".probe.rank{}", world.rank());
    {
      std::ofstream out(probe, std::ios::binary | std::ios::trunc);
      out << "moerun checkpoint-directory probe\n";
      out.flush();
      if (!out.good()) {
        const int err = errno;
        fs::remove(probe, ec);
        throw ConfigError(fmt::format("--ckpt-dir {}: cannot write a file there: {}", dir,
                                      err ? std::strerror(err) : "write failed"));
      }
    }
    fs::remove(probe, ec);
    struct statvfs st {};
    if (::statvfs(dir.c_str(), &st) == 0) {
      const double free_bytes = static_cast<double>(st.f_bavail) * static_cast<double>(st.f_frsize);
      if (free_bytes < static_cast<double>(checkpoint_bytes))
        throw ConfigError(fmt::format(
            "--ckpt-dir {}: {:.1f} MB free, but one checkpoint of this model (parameters + "
            "AdamW moments) needs {:.1f} MB",
            dir, free_bytes / 1e6, static_cast<double>(checkpoint_bytes) / 1e6));
    }
  });
}

}  // namespace moerun
