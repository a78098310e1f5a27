// Gradient all-reduce over a flat buffer, bucket by bucket, in place.
#include "comm/grad_sync.h"

#include <algorithm>
#include <span>

namespace moerun {

void GradSync::allreduce_sum(const Comm& comm, Tensor grads) const {
  if (comm.size() <= 1 || grads.numel() == 0) return;
  const std::span<float> g = grads.span<float>();
  const size_t cap = std::max<size_t>(1, bucket_bytes_ / sizeof(float));
  for (size_t off = 0; off < g.size(); off += cap)
    comm.allreduce_sum(g.subspan(off, std::min(cap, g.size() - off)));
}

}  // namespace moerun
