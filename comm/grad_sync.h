// Gradient synchronisation: sums a flat gradient buffer (Model::dense_grads() over the world,
// Model::expert_grads() over the expert-data-parallel group) in place, in a few large
// MPI_Allreduce calls of at most bucket_bytes each. The buffer is already contiguous, so nothing
// is packed or unpacked. Averaging is left to the optimizer's grad_scale, so no extra pass over
// the gradients is made here.
#pragma once

#include <cstddef>

#include "comm/comm.h"
#include "runtime/tensor.h"

namespace moerun {

class GradSync {
 public:
  // bucket_bytes: the most bytes one allreduce call sums (the unit a later overlap with the
  // backward would issue as soon as its gradients are final).
  explicit GradSync(size_t bucket_bytes = size_t{32} << 20) : bucket_bytes_(bucket_bytes) {}

  // In place: every element of grads (f32, CPU) becomes its sum over `comm`. Every rank must
  // pass a buffer of the same size. A communicator of size 1 returns at once.
  void allreduce_sum(const Comm& comm, Tensor grads) const;

 private:
  size_t bucket_bytes_;
};

}  // namespace moerun
