// Trainer: `moerun train` put together. It settles the options and checks the inputs
// (train_setup.h), builds the TrainState, and drives a StepRunner and an Evaluator through the
// loop's hooks (train_loop.h): progress and metrics, evaluations, checkpoints, agreed stops.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "comm/topology.h"
#include "io/checkpoint.h"
#include "jobs/evaluator.h"
#include "jobs/preemption.h"
#include "jobs/step_runner.h"
#include "jobs/train_loop.h"
#include "jobs/train_options.h"
#include "jobs/train_state.h"
#include "runtime/metrics.h"

namespace moerun {

class Trainer {
 public:
  // Validates everything (config, data, memory, run and checkpoint directories) on every rank
  // before the first collective, then builds the state (and resumes it when cfg.resume says).
  Trainer(const TrainConfig& cfg, Topology& topo);

  StepResult step();  // one optimizer step
  // Checkpoint of the whole TrainState at the current step into cfg.ckpt_dir. Collective.
  io::SaveStats save();
  // Loads a committed step of `dir` (written at any rank count and EP size): cfg.resume_step,
  // or the step `latest` names (see resume_step_of). Collective.
  void resume(const std::string& dir);
  EvalResult evaluate();  // the validation split (same sequences every time)
  // cfg.steps steps with logging, evals and checkpoints; a stop signal or the Slurm time limit
  // saves and ends early (and requeues under Slurm: preemption.h).
  struct Outcome {
    LoopOutcome loop;
    int exit_status = 0;  // the process's: 0, 128 + signal, or 75 (under Slurm, not requeued)
  };
  Outcome run();

  Model& model() { return *state_->model; }
  TrainState& state() { return *state_; }
  int64_t steps_done() const { return state_->step; }
  const TrainConfig& config() const { return cfg_; }
  double sgemm_peak_gflops() const { return peak_gflops_; }  // per rank, measured at start-up
  // The last step's memory high-water marks, max over ranks (step() measures them): resident
  // memory from the OS (-1 if unknown) and live tensor bytes counted by the allocator.
  struct StepMemory {
    int64_t peak_rss_bytes = -1, peak_tensor_bytes = 0;
  };
  const StepMemory& step_memory() const { return step_memory_; }

 private:
  // Bytes the EP all-to-all moved between ranks in the last step (rows a rank keeps excluded),
  // summed over the world, split by whether sender and receiver share a host:
  // {intra_node, inter_node}. Collective.
  std::array<int64_t, 2> step_a2a_bytes();
  void log_step(const StepResult& r, const std::array<int64_t, 2>& a2a_bytes);
  void write_loads();
  void log_eval(const EvalResult& ev);
  // Tries the chosen step, and with --resume auto the older committed ones, newest first.
  void load_first_verified(const std::string& dir, const std::vector<int64_t>& candidates);

  TrainConfig cfg_;
  Topology& topo_;
  std::unique_ptr<TrainState> state_;
  std::unique_ptr<StepRunner> runner_;
  std::unique_ptr<Evaluator> evaluator_;
  std::unique_ptr<Preemption> preemption_;
  std::array<int64_t, 2> a2a_bytes_total_{};  // step_a2a_bytes's running totals (this rank)
  MetricsWriter metrics_;
  double flops_per_token_ = 0.0;  // fwd + bwd model FLOPs per token (for MFU)
  double peak_gflops_ = 0.0;      // sgemm peak per rank, measured at start-up
  StepMemory step_memory_;
};

}  // namespace moerun
