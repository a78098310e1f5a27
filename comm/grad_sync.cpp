// Gradient all-reduce over a flat buffer, bucket by bucket, in place.
#include "comm/grad_sync.h"

#include <algorithm>
#include <span>

#include "runtime/check.h"

namespace moerun {

void GradSync::allreduce_sum(const Comm& comm, Tensor grads) const {
  if (comm.size() <= 1 || grads.numel() == 0) return;
  const std::span<float> g = grads.span<float>();
  const size_t cap = std::max<size_t>(1, bucket_bytes_ / sizeof(float));
  for (size_t off = 0; off < g.size(); off += cap)
    comm.allreduce_sum(g.subspan(off, std::min(cap, g.size() - off)));
}

FlatShard flat_shard(int64_t n, int parts, int part) {
  const int64_t per = parts > 0 ? (n + parts - 1) / parts : 0;
  const int64_t b = std::min(n, per * part), e = std::min(n, per * (part + 1));
  return {b, e - b};
}

std::vector<int64_t> flat_shard_sizes(int64_t n, int parts) {
  std::vector<int64_t> out;
  for (int r = 0; r < parts; ++r) out.push_back(flat_shard(n, parts, r).size);
  return out;
}

void GradSync::reduce_scatter_sum(const Comm& comm, Tensor grads, Tensor shard) const {
  if (grads.numel() == 0) return;
  const FlatShard mine = flat_shard(grads.numel(), comm.size(), comm.rank());
  MOERUN_REQUIRE(shard.numel() == mine.size, "reduce_scatter: shard holds {} values, not {}",
                 shard.numel(), mine.size);
  if (comm.size() == 1) {
    const std::span<const float> g = grads.span<float>();
    if (shard.f32() != g.data()) std::copy(g.begin(), g.end(), shard.f32());
    return;
  }
  const std::vector<int64_t> sizes = flat_shard_sizes(grads.numel(), comm.size());
  comm.reduce_scatter_sum(grads.span<float>(), shard.span<float>(), sizes);
}

void GradSync::allgather(const Comm& comm, Tensor values) const {
  if (comm.size() <= 1 || values.numel() == 0) return;
  comm.allgather_inplace(values.span<float>(), flat_shard_sizes(values.numel(), comm.size()));
}

}  // namespace moerun
