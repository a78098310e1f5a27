// Gradient synchronisation: sums a flat gradient buffer (Model::dense_grads() over the world,
// Model::expert_grads() over the expert-data-parallel group) in place, in a few large
// MPI_Allreduce calls of at most bucket_bytes each. The buffer is already contiguous, so nothing
// is packed or unpacked. Averaging is left to the optimizer's grad_scale, so no extra pass over
// the gradients is made here. ZeRO-1 instead reduce-scatters the buffer (each rank keeps the sum
// of its own shard, see flat_shard) and all-gathers the updated parameters. It counts the bytes
// it hands to MPI (SyncBytes) so that `moerun plan` can be checked against a run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "comm/comm.h"
#include "runtime/tensor.h"

namespace moerun {

// ZeRO-1's split of a flat buffer of n values over `parts` ranks: consecutive even shards of
// ceil(n / parts) values, the last ones shorter (or empty), independent of parameter boundaries.
struct FlatShard {
  int64_t begin = 0, size = 0;
};
FlatShard flat_shard(int64_t n, int parts, int part);
std::vector<int64_t> flat_shard_sizes(int64_t n, int parts);  // (parts)

// Bytes GradSync has handed to MPI on this rank, per kind of collective. The convention (the
// one `moerun plan` predicts, jobs/layout_plan.h): each call adds the bytes of the whole flat
// region it works on, as every rank of the group holds it: an all-reduce the region it sums, a
// reduce-scatter the region it reads (not only this rank's shard), an all-gather the region it
// fills; in rounds (a region larger than one bucket) the rounds' zero padding counts too.
// Nothing is counted for a group of one rank (no call is made). Summed over the world's ranks
// this is the payload of the step; a ring algorithm sends (p - 1) / p of it between the p ranks
// of a group for a reduce-scatter or an all-gather and 2 (p - 1) / p for an all-reduce. These are
// not the bytes MPI's own algorithms put on the wire, which the runtime cannot see.
struct SyncBytes {
  int64_t allreduce = 0, reduce_scatter = 0, allgather = 0;
  SyncBytes operator-(const SyncBytes& o) const {
    return {allreduce - o.allreduce, reduce_scatter - o.reduce_scatter, allgather - o.allgather};
  }
};

class GradSync {
 public:
  // bucket_bytes: the most bytes one allreduce call sums (the unit a later overlap with the
  // backward would issue as soon as its gradients are final).
  static constexpr size_t kDefaultBucketBytes = size_t{32} << 20;
  explicit GradSync(size_t bucket_bytes = kDefaultBucketBytes) : bucket_bytes_(bucket_bytes) {}

  // In place: every element of grads (f32, CPU) becomes its sum over `comm`. Every rank must
  // pass a buffer of the same size. A communicator of size 1 returns at once.
  void allreduce_sum(const Comm& comm, Tensor grads);
  // ZeRO-1: shard (f32, flat_shard(grads.numel(), size, rank).size values, not inside grads)
  // becomes the sum over `comm` of this rank's shard of grads; grads is not changed. A region
  // larger than one bucket goes in rounds of bucket_bytes (packed; see the .cpp).
  void reduce_scatter_sum(const Comm& comm, Tensor grads, Tensor shard);
  // ZeRO-1: every rank's flat_shard of `values` (f32) from that rank to all, in place.
  void allgather(const Comm& comm, Tensor values);

  // Since construction, this rank (see SyncBytes for what counts).
  const SyncBytes& bytes() const { return bytes_; }

 private:
  int64_t values_per_rank(int parts) const;  // per round of the bucketed ZeRO-1 collectives

  size_t bucket_bytes_;
  SyncBytes bytes_;
};

}  // namespace moerun
