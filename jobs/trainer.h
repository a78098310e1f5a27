// Trainer: the training loop. Joins the model, AdamW, the token loader, gradient sync, the
// load counters and Loss-Free Balancing, evaluation, metrics and the progress line.
//
// One optimizer step:
//   for each micro-batch: forward + backward (MoE layers dispatch/combine over the EP group),
//                         add each MoE layer's routed counts to the LoadCounters
//   dense gradients: summed over the world; expert gradients: over the expert-DP group
//   one int64 all-reduce of the load counters (all layers) -> MaxVio_batch, bias update
//   global gradient norm (each parameter counted once) -> clip factor
//   AdamW with grad_scale = clip / (world * micro-batches)  (the mean over all sequences)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/ep/load_counters.h"
#include "comm/grad_sync.h"
#include "comm/topology.h"
#include "io/checkpoint.h"
#include "io/token_loader.h"
#include "jobs/train_options.h"
#include "layers/adamw.h"
#include "layers/model.h"
#include "runtime/metrics.h"

namespace moerun {

struct StepResult {
  double loss = 0.0;       // mean over the global batch (cross-entropy + aux losses)
  double grad_norm = 0.0;  // before clipping
  double lr = 0.0;
  double seconds = 0.0;
  double t_compute = 0.0, t_alltoall = 0.0, t_allreduce = 0.0, t_optimizer = 0.0;
  std::vector<double> maxvio_batch;  // per MoE layer, from the global counts
  int64_t dropped = 0;               // (token, expert) pairs over capacity, all layers
};

struct EvalResult {
  double val_loss = 0.0;
  std::vector<double> maxvio_global;  // per MoE layer over the whole evaluation
  std::vector<std::string> domains;
  std::vector<double> domain_loss;                 // per domain (NaN when it had no sequence)
  std::vector<std::vector<double>> domain_maxvio;  // per domain, per MoE layer
};

class Trainer {
 public:
  // Validates everything (config, data, memory) on every rank before the first collective.
  Trainer(const TrainConfig& cfg, Topology& topo);

  StepResult step();  // one optimizer step
  // Checkpoint of everything a resume needs (parameters, AdamW moments and step, router biases,
  // loader position, config, layout) at the current step, into cfg.ckpt_dir. Collective.
  io::SaveStats save();
  // Loads the newest committed step of `dir` (written at any rank count and EP size). Collective.
  void resume(const std::string& dir);
  EvalResult evaluate();  // the validation split (same sequences every time)
  void run();             // cfg.steps steps with logging, evals and metrics

  Model& model() { return *model_; }
  int64_t steps_done() const { return step_; }
  const TrainConfig& config() const { return cfg_; }
  double sgemm_peak_gflops() const { return peak_gflops_; }  // per rank, measured at start-up

 private:
  void sync_gradients(StepResult& r);
  void log_step(const StepResult& r);
  void write_loads();
  std::vector<io::CkptTensor> checkpoint_tensors();

  TrainConfig cfg_;
  Topology& topo_;
  std::unique_ptr<Model> model_;
  std::vector<NamedParam> params_;
  std::vector<Tensor> adam_m_, adam_v_;
  std::unique_ptr<AdamW> adamw_;
  std::shared_ptr<io::TokenSource> train_src_, val_src_;
  std::unique_ptr<io::TokenLoader> loader_;
  LoadCounters counters_;
  GradSync grad_sync_;
  MetricsWriter metrics_;
  int64_t step_ = 0;
  int64_t n_moe_ = 0;
  double flops_per_token_ = 0.0;  // fwd + bwd model FLOPs per token (for MFU)
  double peak_gflops_ = 0.0;      // sgemm peak per rank, measured at start-up
  std::vector<int32_t> tokens_, targets_;
};

}  // namespace moerun
