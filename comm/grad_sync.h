// Gradient synchronisation: sums many gradient tensors over a communicator in a few large
// MPI_Allreduce calls (buckets), instead of one latency-bound call per tensor. Averaging is left
// to the optimizer's grad_scale, so no extra pass over the gradients is made here.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "comm/comm.h"

namespace moerun {

class GradSync {
 public:
  // bucket_bytes: the most bytes packed into one allreduce (a tensor larger than this is reduced
  // in place on its own).
  explicit GradSync(size_t bucket_bytes = size_t{32} << 20) : bucket_bytes_(bucket_bytes) {}

  // In place: every tensor becomes its sum over `comm`. Every rank must pass the same tensor
  // sizes in the same order. A communicator of size 1 returns at once.
  void allreduce_sum(const Comm& comm, std::span<const std::span<float>> tensors);

 private:
  void flush(const Comm& comm, std::vector<std::span<float>>& pending);
  size_t bucket_bytes_;
  std::vector<float> bucket_;
};

}  // namespace moerun
