// Gradient all-reduce over a flat buffer, bucket by bucket, in place.
#include "comm/grad_sync.h"

#include <algorithm>
#include <span>

#include "runtime/check.h"

namespace moerun {

void GradSync::allreduce_sum(const Comm& comm, Tensor grads) {
  if (comm.size() <= 1 || grads.numel() == 0) return;
  const std::span<float> g = grads.span<float>();
  const size_t cap = std::max<size_t>(1, bucket_bytes_ / sizeof(float));
  for (size_t off = 0; off < g.size(); off += cap) {
    const size_t n = std::min(cap, g.size() - off);
    comm.allreduce_sum(g.subspan(off, n));
    bytes_.allreduce += static_cast<int64_t>(n * sizeof(float));
  }
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

// ZeRO-1 in rounds: each round moves up to `per_rank` values of every rank's shard, packed into
// one contiguous bucket of size * per_rank values (the last shards padded with zeros), so that
// no MPI count nears INT_MAX and the scratch stays at bucket_bytes. A region that fits one
// bucket goes in one call, in place, without packing.
int64_t GradSync::values_per_rank(int parts) const {
  return std::max<int64_t>(1, static_cast<int64_t>(bucket_bytes_ / sizeof(float)) / parts);
}

void GradSync::reduce_scatter_sum(const Comm& comm, Tensor grads, Tensor shard) {
  const int64_t n = grads.numel();
  if (n == 0) return;
  const int W = comm.size();
  const FlatShard mine = flat_shard(n, W, comm.rank());
  MOERUN_REQUIRE(shard.numel() == mine.size, "reduce_scatter: shard holds {} values, not {}",
                 shard.numel(), mine.size);
  const std::span<const float> g = grads.span<float>();
  if (W == 1) {
    if (shard.f32() != g.data()) std::copy(g.begin(), g.end(), shard.f32());
    return;
  }
  const int64_t S = (n + W - 1) / W, C = values_per_rank(W);
  if (S <= C) {
    comm.reduce_scatter_sum(g, shard.span<float>(), flat_shard_sizes(n, W));
    bytes_.reduce_scatter += n * static_cast<int64_t>(sizeof(float));
    return;
  }
  std::vector<float> send(static_cast<size_t>(W * C)), recv(static_cast<size_t>(C));
  for (int64_t off = 0; off < S; off += C) {
    const int64_t c = std::min(C, S - off);
    for (int r = 0; r < W; ++r) {
      const int64_t b = std::min(n, r * S + off), e = std::min(n, r * S + off + c);
      float* dst = send.data() + r * c;
      std::copy(g.begin() + b, g.begin() + e, dst);
      std::fill(dst + (e - b), dst + c, 0.0f);
    }
    const std::vector<int64_t> counts(static_cast<size_t>(W), c);
    comm.reduce_scatter_sum(std::span<const float>(send.data(), static_cast<size_t>(W * c)),
                            std::span<float>(recv.data(), static_cast<size_t>(c)), counts);
    bytes_.reduce_scatter += W * c * static_cast<int64_t>(sizeof(float));
    const int64_t keep = std::clamp<int64_t>(mine.size - off, 0, c);
    std::copy(recv.begin(), recv.begin() + keep, shard.f32() + off);
  }
}

void GradSync::allgather(const Comm& comm, Tensor values) {
  const int64_t n = values.numel();
  const int W = comm.size();
  if (W <= 1 || n == 0) return;
  const std::span<float> v = values.span<float>();
  const int64_t S = (n + W - 1) / W, C = values_per_rank(W);
  if (S <= C) {
    comm.allgather_inplace(v, flat_shard_sizes(n, W));
    bytes_.allgather += n * static_cast<int64_t>(sizeof(float));
    return;
  }
  const int me = comm.rank();
  std::vector<float> buf(static_cast<size_t>(W * C));
  for (int64_t off = 0; off < S; off += C) {
    const int64_t c = std::min(C, S - off);
    const int64_t b = std::min(n, me * S + off), e = std::min(n, me * S + off + c);
    float* mine = buf.data() + me * c;
    std::copy(v.begin() + b, v.begin() + e, mine);
    std::fill(mine + (e - b), mine + c, 0.0f);
    const std::vector<int64_t> counts(static_cast<size_t>(W), c);
    comm.allgather_inplace(std::span<float>(buf.data(), static_cast<size_t>(W * c)), counts);
    bytes_.allgather += W * c * static_cast<int64_t>(sizeof(float));
    for (int r = 0; r < W; ++r) {
      const int64_t rb = std::min(n, r * S + off), re = std::min(n, r * S + off + c);
      std::copy(buf.data() + r * c, buf.data() + r * c + (re - rb), v.begin() + rb);
    }
  }
}

}  // namespace moerun
