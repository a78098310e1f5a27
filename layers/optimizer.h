// Optimizer: AdamW together with the state it owns (the first and second moments of every
// parameter, and the step count), listed as named tensors so that checkpoints save it like any
// other state and ZeRO-1 can later shard it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/adamw.h"
#include "layers/model.h"
#include "runtime/tensor.h"

namespace moerun {

// One tensor of the optimizer's state, named after its parameter ("optim.m.layers.1.moe.w13").
struct NamedState {
  std::string name;
  Tensor* value;
  bool is_expert;  // sharded over the EP group like its parameter
};

class Optimizer {
 public:
  // The parameters must outlive the optimizer (the model's own tensors).
  Optimizer(std::vector<NamedParam> params, const AdamWConfig& cfg);

  // One AdamW step over every parameter: g = grad_scale * grad (see AdamW::step).
  void step(double lr, double grad_scale);

  std::vector<NamedState> state();  // m then v of each parameter, in params() order
  int64_t steps() const { return adamw_.steps(); }
  void set_steps(int64_t t) { adamw_.set_steps(t); }
  const std::vector<NamedParam>& params() const { return params_; }

  static std::string moment_name(char moment, const std::string& param);  // 'm' or 'v'

 private:
  std::vector<NamedParam> params_;
  std::vector<Tensor> m_, v_;  // each shaped like its parameter
  AdamW adamw_;
};

}  // namespace moerun
