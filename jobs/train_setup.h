// Everything `moerun train` settles before the model exists, each step checked on every rank
// before the first collective that could hang on bad input: the options the scaling laws fill
// in, the memory check, the data splits, the run directory and the checkpoint directory.
#pragma once

#include <memory>
#include <string>

#include "comm/topology.h"
#include "io/token_loader.h"
#include "jobs/train_options.h"
#include "runtime/metrics.h"

namespace moerun {

// --lr auto / --global-batch auto (DeepSeek LLM scaling laws, said on rank 0), a warmup longer
// than the run, then the schedule's own validation. Deterministic: the same on every rank.
void resolve_train_config(TrainConfig& cfg, const Topology& topo);

// The memory estimate against MemAvailable (unless --no-memory-check): ConfigError with the
// breakdown when the ranks on this node would not fit.
void check_train_memory(const TrainConfig& cfg, const Topology& topo);

struct TrainData {
  std::shared_ptr<io::TokenSource> train, validation;
};
// Opens both splits of --data and checks them against the model and the batch.
TrainData open_train_data(const TrainConfig& cfg, const Topology& topo);

// Rank 0 creates --out, keeps an earlier run's metrics.jsonl (renamed metrics.N.jsonl unless
// resuming), writes config.ini and returns the metrics writer (disabled on other ranks).
MetricsWriter prepare_run_dir(const TrainConfig& cfg, const Comm& world);

// Every rank creates --ckpt-dir, writes and removes a probe file there, and checks that the
// file system has room for one checkpoint of `checkpoint_bytes`: one ConfigError naming the
// option, the rank and the cause, before any training is done.
void check_checkpoint_dir(const std::string& ckpt_dir, int64_t checkpoint_bytes, const Comm& world);

}  // namespace moerun
