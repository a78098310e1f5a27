// `moerun train` options: one table for the command line and INI files (--config FILE; keys are
// the long option names without dashes; the command line wins), read into a TrainConfig.
#pragma once

#include <boost/program_options.hpp>
#include <cstdint>
#include <string>

#include "layers/lr_schedule.h"
#include "layers/model.h"

namespace moerun {

struct TrainConfig {
  ModelConfig model;
  std::string config_file;  // the INI the run started from ("" = defaults + command line)
  int64_t steps = 0;
  int64_t global_batch = 0;  // sequences per optimizer step over all ranks
  int64_t micro_batch = 0;   // sequences per rank per forward/backward
  bool lr_auto = false, batch_auto = false;
  LrSchedule schedule;  // peak lr, warmup, kind, min ratio
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, grad_clip = 1.0;
  uint64_t seed = 1;
  int ep_size = 0;   // 0 = all ranks
  int zero = 0;      // 1: ZeRO-1, AdamW moments sharded over the ranks that share a parameter
  int threads = 0;   // BLAS threads per rank, 0 = cores / ranks on the node
  std::string data;  // moerun HDF5 dataset or Megatron prefix
  int64_t eval_every = 0, eval_batches = 0, log_every = 0, loads_every = 0;
  std::string out;           // run directory
  std::string ckpt_dir;      // checkpoints ("" = <out>/ckpt)
  int64_t save_every = 0;    // also every N steps (0 = only at the end)
  int keep_last = 2;         // committed checkpoints kept (0 = all)
  std::string resume;        // "" (no resume), "auto" (from ckpt_dir if it holds a step) or a dir
  int64_t resume_step = -1;  // -1: the step `latest` names
  bool check_memory = true;
  double step_timeout = 1800;  // watchdog: seconds per step, eval or save before exit 75 (0 = off)
  int max_requeues = 10;       // under Slurm: requeues after a stop (SLURM_RESTART_COUNT below)
  double exit_before_limit = 0;  // under Slurm: save + requeue this many minutes before the limit
};

boost::program_options::options_description train_options();
// Parses argv (argv[0] = "train") and the --config file. Returns false after printing --help.
// Throws ConfigError / program_options errors naming the option.
bool parse_train_config(int argc, char** argv, TrainConfig& cfg, bool print_help);
// The effective options as an INI file (written into the run directory).
std::string to_ini(const TrainConfig& cfg);

}  // namespace moerun
