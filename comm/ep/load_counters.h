// LoadCounters: per MoE layer, per expert token counts for one optimizer step (every
// micro-batch), summed over the whole world in ONE int64 MPI_Allreduce for all layers, so the
// loss-free bias update sees bit-identical integers on every rank.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "comm/comm.h"

namespace moerun {

class LoadCounters {
 public:
  LoadCounters(int64_t layers, int64_t experts);
  void add(int64_t layer, std::span<const int64_t> tokens_per_expert, int64_t dropped);
  void allreduce(const Comm& world);  // collective; counts become global
  std::span<const int64_t> counts(int64_t layer) const;
  int64_t dropped(int64_t layer) const;
  int64_t layers() const { return layers_; }
  int64_t experts() const { return experts_; }
  void reset();

 private:
  int64_t layers_, experts_;
  std::vector<int64_t> data_;  // (layers, experts + 1): the last column counts dropped pairs
};

// MaxVio = (max_i c_i - mean_i c_i) / mean_i c_i; 0 when no tokens were routed.
double max_violation(std::span<const int64_t> counts);

}  // namespace moerun
