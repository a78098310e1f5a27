// GradSync: a flat buffer summed in place, bucket by bucket, equals one MPI_Allreduce of the
// whole buffer, for every bucket size (including buckets that split the buffer unevenly).
// ZeRO-1's pair: the reduce-scatter leaves each rank the exact sum of its even shard (integer
// payloads: every order sums to the same float), and the all-gather returns every rank's shard to
// all, at sizes that W divides, that it does not, and smaller than W (empty shards).
#include <gtest/gtest.h>

#include <vector>

#include "comm/grad_sync.h"
#include "runtime/rng.h"
#include "tests/common/mpi_test.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

TEST(GradSync, BucketedInPlaceSumEqualsOneAllreduce) {
  const Comm world = Comm::world();
  const TestSeed seed(17);
  for (size_t bucket_bytes : {size_t{4}, size_t{64}, size_t{4096}, size_t{1} << 20}) {
    Rng rng(seed, static_cast<uint64_t>(world.rank()));
    Tensor got = Tensor::empty({6351});
    for (float& x : got.span<float>()) x = static_cast<float>(rng.normal());
    const float* before = got.f32();
    std::vector<float> want(got.span<float>().begin(), got.span<float>().end());
    world.allreduce_sum(std::span<float>(want));
    GradSync sync(bucket_bytes);
    // A view, as Model::dense_grads() hands out: the sum lands in the buffer behind it.
    Tensor whole = got;
    sync.allreduce_sum(world, whole.view(0, {got.numel()}));
    bool ok = got.f32() == before;
    for (int64_t i = 0; i < got.numel(); ++i)
      ok = ok && got.f32()[i] == want[static_cast<size_t>(i)];
    MOERUN_EXPECT_ALL(world, ok) << " bucket " << bucket_bytes;
  }
  GradSync sync;
  EXPECT_NO_THROW(sync.allreduce_sum(world, Tensor::empty({0})));
}

TEST(GradSync, ReduceScatterThenAllgatherOfEvenShards) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  // Buckets of one value per rank up to all at once: rounds that split the shards unevenly.
  for (size_t bucket_bytes : {size_t{4}, size_t{4 * 5 * 4}, size_t{1} << 20})
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{64}, int64_t{6351}}) {
      GradSync sync(bucket_bytes);
      // Element i of rank r: r * 1000 + i % 997, so the sum over the ranks is known exactly.
      Tensor grads = Tensor::empty({n});
      for (int64_t i = 0; i < n; ++i) grads.f32()[i] = static_cast<float>(me * 1000 + i % 997);
      const FlatShard mine = flat_shard(n, W, me);
      const std::vector<int64_t> sizes = flat_shard_sizes(n, W);
      int64_t covered = 0;
      for (int r = 0; r < W; ++r) {
        EXPECT_EQ(flat_shard(n, W, r).begin, covered) << "n " << n << " rank " << r;
        covered += sizes[static_cast<size_t>(r)];
      }
      EXPECT_EQ(covered, n);
      EXPECT_LE(mine.size, (n + W - 1) / W);
      Tensor shard = Tensor::empty({mine.size});
      shard.fill(-1.0f);
      sync.reduce_scatter_sum(world, grads, shard);
      bool ok = true;
      const double rank_sum = 1000.0 * W * (W - 1) / 2;
      for (int64_t i = 0; i < mine.size; ++i) {
        const int64_t g = mine.begin + i;
        ok = ok && shard.f32()[i] == static_cast<float>(rank_sum + W * (g % 997));
      }
      // The all-gather: each rank writes its shard (marked with its rank) into a poisoned buffer.
      Tensor values = Tensor::empty({n});
      values.fill(-7.0f);
      for (int64_t i = 0; i < mine.size; ++i) values.f32()[mine.begin + i] = static_cast<float>(me);
      sync.allgather(world, values);
      for (int r = 0; r < W; ++r) {
        const FlatShard s = flat_shard(n, W, r);
        for (int64_t i = 0; i < s.size; ++i) ok = ok && values.f32()[s.begin + i] == r;
      }
      MOERUN_EXPECT_ALL(world, ok) << " n " << n << " bucket " << bucket_bytes;
    }
}

}  // namespace
}  // namespace moerun::testing
