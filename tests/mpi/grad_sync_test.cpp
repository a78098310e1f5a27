// GradSync: many tensors (small ones bucketed, large ones in place) sum exactly like one
// MPI_Allreduce per tensor, for every size mix and bucket size.
#include <gtest/gtest.h>

#include <vector>

#include "comm/grad_sync.h"
#include "runtime/rng.h"
#include "tests/common/mpi_test.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

TEST(GradSync, BucketedSumEqualsPerTensorAllreduce) {
  const Comm world = Comm::world();
  const TestSeed seed(17);
  for (size_t bucket_bytes : {size_t{64}, size_t{4096}, size_t{1} << 20}) {
    Rng rng(seed, static_cast<uint64_t>(world.rank()));
    const std::vector<size_t> sizes = {1, 7, 300, 5000, 16, 0, 1024, 3};
    std::vector<std::vector<float>> got, want;
    for (size_t n : sizes) {
      std::vector<float> v(n);
      for (float& x : v) x = static_cast<float>(rng.normal());
      got.push_back(v);
      want.push_back(v);
    }
    for (auto& w : want) world.allreduce_sum(std::span<float>(w));
    std::vector<std::span<float>> spans;
    for (auto& g : got) spans.emplace_back(g);
    GradSync sync(bucket_bytes);
    sync.allreduce_sum(world, spans);
    bool ok = true;
    for (size_t i = 0; i < sizes.size(); ++i) ok = ok && got[i] == want[i];
    MOERUN_EXPECT_ALL(world, ok) << " bucket " << bucket_bytes;
  }
}

}  // namespace
}  // namespace moerun::testing
