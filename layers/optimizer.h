// Optimizer: AdamW together with the state it owns (the first and second moments of every
// parameter, and the step count), listed as named tensors so that checkpoints save it like any
// other state. With ZeRO-1 each rank owns the moments of one even shard of the model's flat
// dense region (over the world) and of its flat expert region (over the expert-DP group) only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "comm/grad_sync.h"
#include "layers/adamw.h"
#include "layers/model.h"
#include "runtime/tensor.h"

namespace moerun {

// One tensor of the optimizer's state, named after its parameter ("optim.m.layers.1.moe.w13").
struct NamedState {
  std::string name;
  Tensor* value;
  bool is_expert;  // sharded over the EP group like its parameter
  // -1: value is the whole moment (shaped like the parameter). ZeRO-1: value (1-D) holds the
  // elements [flat_begin, flat_begin + numel) of the parameter's row-major moment (possibly none).
  int64_t flat_begin = -1;
};

// ZeRO-1: the model's flat buffers (Model::param_buffer / grad_buffer: the dense region
// [0, dense_numel), then the expert region) and the ranks that share each region.
struct ZeroLayout {
  Tensor param_buffer, grad_buffer;
  int64_t dense_numel = 0;
  const Comm* dense = nullptr;   // every rank holding the dense parameters: the world
  const Comm* expert = nullptr;  // every rank holding this rank's experts: the expert-DP group
};

class Optimizer {
 public:
  // The parameters must outlive the optimizer (the model's own tensors).
  Optimizer(std::vector<NamedParam> params, const AdamWConfig& cfg);
  // ZeRO-1 over `zero` (its comms must outlive the optimizer). params must be views into
  // zero.param_buffer / grad_buffer, as Model::params() are.
  Optimizer(std::vector<NamedParam> params, const AdamWConfig& cfg, const ZeroLayout& zero);

  // One AdamW step: g = grad_scale * grad (see AdamW::step). Unsharded: every parameter from
  // its gradient. ZeRO-1: only this rank's shard of the flat parameters, from grad_shard();
  // the caller reduce-scatters the gradients before and all-gathers the parameters after.
  void step(double lr, double grad_scale);

  std::vector<NamedState> state();  // m then v of each parameter, in params() order
  int64_t steps() const { return adamw_.steps(); }
  void set_steps(int64_t t) { adamw_.set_steps(t); }
  const std::vector<NamedParam>& params() const { return params_; }
  bool zero() const { return zero_; }
  // ZeRO-1: this rank's summed gradients of its shard of the dense (expert=false) or expert flat
  // region, flat_shard(region numel, group size, group rank) values. At a group of one rank it
  // is the model's gradient region itself.
  Tensor grad_shard(bool expert) { return regions_[expert ? 1 : 0].grad; }
  // Bytes of the moments this rank holds (m and v; ZeRO-1: its shards, gaps included).
  int64_t state_bytes() const;

  static std::string moment_name(char moment, const std::string& param);  // 'm' or 'v'

 private:
  struct Region {
    FlatShard shard;  // within the region
    Tensor m, v;      // (shard.size) this rank's moments
    Tensor grad;      // (shard.size) the summed gradients of the shard
  };
  // ZeRO-1: where parameter `param`'s elements [param_begin, param_begin + count) sit in its
  // region's shard (at most one piece per parameter: both are contiguous).
  struct Piece {
    size_t param = 0;
    int region = 0;
    int64_t param_begin = 0, shard_begin = 0, count = 0;
  };

  std::vector<NamedParam> params_;
  // Unsharded: each shaped like its parameter. ZeRO-1: views of the pieces (empty when none).
  std::vector<Tensor> m_, v_;
  std::vector<int64_t> flat_begin_;  // ZeRO-1: each piece's param_begin
  bool zero_ = false;
  Region regions_[2];  // dense, expert
  std::vector<Piece> pieces_;
  AdamW adamw_;
};

}  // namespace moerun
