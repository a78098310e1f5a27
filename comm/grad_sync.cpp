// Bucketed gradient all-reduce: pack small tensors into one buffer, reduce, unpack.
#include "comm/grad_sync.h"

#include <algorithm>

namespace moerun {

void GradSync::flush(const Comm& comm, std::vector<std::span<float>>& pending) {
  if (pending.empty()) return;
  size_t n = 0;
  for (const auto& t : pending) n += t.size();
  if (bucket_.size() < n) bucket_.resize(n);
  size_t off = 0;
  for (const auto& t : pending) {
    std::copy(t.begin(), t.end(), bucket_.begin() + static_cast<std::ptrdiff_t>(off));
    off += t.size();
  }
  comm.allreduce_sum(std::span<float>(bucket_.data(), n));
  off = 0;
  for (const auto& t : pending) {
    std::copy_n(bucket_.begin() + static_cast<std::ptrdiff_t>(off), t.size(), t.begin());
    off += t.size();
  }
  pending.clear();
}

void GradSync::allreduce_sum(const Comm& comm, std::span<const std::span<float>> tensors) {
  if (comm.size() <= 1) return;
  const size_t cap = std::max<size_t>(1, bucket_bytes_ / sizeof(float));
  std::vector<std::span<float>> pending;
  size_t pending_n = 0;
  for (const auto& t : tensors) {
    if (t.empty()) continue;
    if (t.size() >= cap) {  // large: reduce in place, no copies
      comm.allreduce_sum(t);
      continue;
    }
    if (pending_n + t.size() > cap) {
      flush(comm, pending);
      pending_n = 0;
    }
    pending.push_back(t);
    pending_n += t.size();
  }
  flush(comm, pending);
}

}  // namespace moerun
