// Load counting and the MaxVio metric.
#include "comm/ep/load_counters.h"

#include <algorithm>

#include "runtime/check.h"

namespace moerun {

LoadCounters::LoadCounters(int64_t layers, int64_t experts)
    : layers_(layers), experts_(experts), data_(static_cast<size_t>(layers * (experts + 1)), 0) {
  MOERUN_REQUIRE(layers >= 0 && experts > 0, "bad load counter shape ({}, {})", layers, experts);
}

void LoadCounters::add(int64_t layer, std::span<const int64_t> tokens_per_expert, int64_t dropped) {
  MOERUN_REQUIRE(layer >= 0 && layer < layers_, "layer {} out of range [0, {})", layer, layers_);
  MOERUN_REQUIRE(static_cast<int64_t>(tokens_per_expert.size()) == experts_,
                 "expected {} expert counts, got {}", experts_, tokens_per_expert.size());
  int64_t* row = data_.data() + layer * (experts_ + 1);
  for (int64_t i = 0; i < experts_; ++i) row[i] += tokens_per_expert[static_cast<size_t>(i)];
  row[experts_] += dropped;
}

void LoadCounters::allreduce(const Comm& world) {
  world.allreduce_sum(data_);
}

std::span<const int64_t> LoadCounters::counts(int64_t layer) const {
  MOERUN_REQUIRE(layer >= 0 && layer < layers_, "layer {} out of range [0, {})", layer, layers_);
  return {data_.data() + layer * (experts_ + 1), static_cast<size_t>(experts_)};
}

int64_t LoadCounters::dropped(int64_t layer) const {
  return counts(layer).data()[experts_];
}

void LoadCounters::reset() {
  std::fill(data_.begin(), data_.end(), 0);
}

double max_violation(std::span<const int64_t> counts) {
  if (counts.empty()) return 0.0;
  int64_t sum = 0, mx = counts[0];
  for (int64_t c : counts) {
    sum += c;
    mx = std::max(mx, c);
  }
  if (sum == 0) return 0.0;
  const double mean = static_cast<double>(sum) / static_cast<double>(counts.size());
  return (static_cast<double>(mx) - mean) / mean;
}

}  // namespace moerun
