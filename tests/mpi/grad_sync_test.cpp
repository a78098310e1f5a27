// GradSync: a flat buffer summed in place, bucket by bucket, equals one MPI_Allreduce of the
// whole buffer, for every bucket size (including buckets that split the buffer unevenly).
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

}  // namespace
}  // namespace moerun::testing
