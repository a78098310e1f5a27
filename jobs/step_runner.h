// StepRunner: one optimizer step of a TrainState.
//   for each micro-batch: forward + backward (MoE layers dispatch/combine over the EP group),
//                         add each MoE layer's routed counts to the LoadCounters
//   dense gradients: summed over the world; expert gradients: over the expert-DP group
//   one int64 all-reduce of the load counters (all layers) -> MaxVio_batch, bias update
//   global gradient norm (each parameter counted once) -> clip factor
//   AdamW with grad_scale = clip / (world * micro-batches)  (the mean over all sequences)
//   after the timed step: GradSync's byte counts of the step, summed over the world (one int64
//   all-reduce; the metrics' sync_bytes, which `moerun plan` predicts)
// With ZeRO-1 (--zero 1) the gradients are reduce-scattered instead (each rank keeps the sum of
// its shard), the norm comes from the shards, AdamW updates the local shard of the parameters,
// and the parameters are all-gathered (dense over the world, experts over the expert-DP group).
#pragma once

#include <cstdint>
#include <vector>

#include "comm/ep/load_counters.h"
#include "comm/grad_sync.h"
#include "jobs/train_options.h"
#include "jobs/train_state.h"

namespace moerun {

struct StepResult {
  double loss = 0.0;       // mean over the global batch (cross-entropy + aux losses)
  double grad_norm = 0.0;  // before clipping
  double lr = 0.0;
  double seconds = 0.0;
  // ZeRO-1: t_allreduce holds the reduce-scatter, t_optimizer the all-gather after AdamW.
  double t_compute = 0.0, t_alltoall = 0.0, t_allreduce = 0.0, t_optimizer = 0.0;
  std::vector<double> maxvio_batch;  // per MoE layer, from the global counts
  int64_t dropped = 0;               // (token, expert) pairs over capacity, all layers
  // GradSync's bytes of this step summed over the world's ranks (comm/grad_sync.h SyncBytes):
  // dense regions over the world, routed experts over their expert-DP group.
  SyncBytes sync_dense, sync_expert;
};

class StepRunner {
 public:
  StepRunner(const TrainConfig& cfg, const Model& model);
  StepResult run(TrainState& state);                          // collective over the world
  const LoadCounters& counters() const { return counters_; }  // the last step's global counts

 private:
  void sync_gradients(TrainState& state, StepResult& r);
  void sync_gradient_shards(TrainState& state, StepResult& r);  // ZeRO-1
  void gather_parameters(TrainState& state);                    // ZeRO-1, after AdamW

  const TrainConfig& cfg_;
  LoadCounters counters_;
  GradSync dense_sync_;   // over the world
  GradSync expert_sync_;  // over the expert-DP group; two instances keep the byte counts apart
  std::vector<int32_t> tokens_, targets_;  // (micro_batch, seq_len)
};

// Seconds all MoE layers of the model have spent in dispatch + combine so far.
double dispatch_seconds(Model& m);

}  // namespace moerun
