// TrainState: everything a training run is at a step boundary, and so everything a checkpoint
// holds: the model (parameters and router biases), the optimizer with its own moments, the
// loader's position and the step count. checkpoint_tensors() + meta() are the one schema
// (checkpoint_schema.h); restore() is its inverse.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "comm/topology.h"
#include "io/checkpoint.h"
#include "io/token_loader.h"
#include "jobs/checkpoint_schema.h"
#include "jobs/train_options.h"
#include "layers/model.h"
#include "layers/optimizer.h"

namespace moerun {

struct TrainState {
  // Builds the model (initialised from cfg.seed), the optimizer and the loader. Collective on
  // the EP group (the model's MoE layers); cfg is already resolved and validated.
  TrainState(const TrainConfig& cfg, Topology& topo, std::shared_ptr<io::TokenSource> train);

  // Every tensor of the state with its checkpoint name, global shape and sharding: parameters
  // with their moments, then the router biases. Expert tensors are (E_local, ...) slices of
  // (E, ...) at the EP rank's first expert; only the first expert-DP replica writes them. With
  // ZeRO-1 each moment is every rank's flat slice (io::CkptTensor::flat_begin) of the same tensor.
  std::vector<io::CkptTensor> checkpoint_tensors();
  TrainMeta meta(const TrainConfig& cfg) const;
  // Sets the step, optimizer steps and loader position from a loaded checkpoint's meta.
  void restore(const TrainMeta& meta);

  Topology& topo;
  std::unique_ptr<Model> model;
  std::unique_ptr<Optimizer> optimizer;
  std::unique_ptr<io::TokenLoader> loader;
  int64_t step = 0;  // optimizer steps taken
};

}  // namespace moerun
