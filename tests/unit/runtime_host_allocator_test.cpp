// HostAllocator: large blocks are reused by size class, the cache bound holds, alignment holds.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "runtime/host_allocator.h"
#include "runtime/tensor.h"

namespace moerun {
namespace {

class HostAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = HostAllocator::stats().limit_bytes;
    HostAllocator::release_all();
    HostAllocator::set_limit(int64_t{1} << 30);  // a sanitizer build defaults to 0
  }
  void TearDown() override {
    HostAllocator::set_limit(saved_);
    HostAllocator::release_all();
  }
  int64_t saved_ = 0;
};

TEST_F(HostAllocatorTest, SizeClassesAreTightAndMonotone) {
  EXPECT_EQ(HostAllocator::size_class(1), 64u);
  EXPECT_EQ(HostAllocator::size_class(1000), 1024u);
  size_t prev = 0;
  for (size_t b = 1 << 20; b < (size_t{1} << 28); b += 777777) {
    const size_t c = HostAllocator::size_class(b);
    EXPECT_GE(c, b);
    EXPECT_LE(static_cast<double>(c), 1.125 * static_cast<double>(b) + 64);
    EXPECT_GE(c, prev);
    prev = c;
  }
}

TEST_F(HostAllocatorTest, FreedLargeBlockIsReusedForASimilarSize) {
  const size_t n = (size_t{3} << 20) + 100;
  void* a = HostAllocator::allocate(n);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(a) % HostAllocator::kAlignment, 0u);
  std::memset(a, 1, n);
  HostAllocator::deallocate(a, n);
  EXPECT_EQ(HostAllocator::stats().cached_bytes,
            static_cast<int64_t>(HostAllocator::size_class(n)));
  const int64_t hits = HostAllocator::stats().hits;
  void* b = HostAllocator::allocate(n + 1000);  // same size class
  EXPECT_EQ(b, a);
  EXPECT_EQ(HostAllocator::stats().hits, hits + 1);
  EXPECT_EQ(HostAllocator::stats().cached_bytes, 0);
  HostAllocator::deallocate(b, n + 1000);
}

TEST_F(HostAllocatorTest, CacheNeverExceedsItsLimit) {
  HostAllocator::set_limit(int64_t{5} << 20);
  void* blocks[4];
  for (auto& p : blocks) p = HostAllocator::allocate(size_t{2} << 20);
  for (auto& p : blocks) {
    HostAllocator::deallocate(p, size_t{2} << 20);
    EXPECT_LE(HostAllocator::stats().cached_bytes, int64_t{5} << 20);
  }
  EXPECT_EQ(HostAllocator::stats().cached_bytes, int64_t{4} << 20);
  HostAllocator::set_limit(0);
  EXPECT_EQ(HostAllocator::stats().cached_bytes, 0);
  void* p = HostAllocator::allocate(size_t{2} << 20);
  HostAllocator::deallocate(p, size_t{2} << 20);
  EXPECT_EQ(HostAllocator::stats().cached_bytes, 0);  // limit 0: nothing kept
}

TEST_F(HostAllocatorTest, TensorsReuseStorageAcrossSteps) {
  const float* first = nullptr;
  for (int step = 0; step < 3; ++step) {
    Tensor t = Tensor::zeros({1024, 1024});
    if (step == 0) first = t.f32();
    EXPECT_EQ(t.f32(), first) << "step " << step;
    EXPECT_EQ(t.f32()[12345], 0.0f);
  }
}

}  // namespace
}  // namespace moerun
