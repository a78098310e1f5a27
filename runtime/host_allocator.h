// HostAllocator: 64-byte aligned CPU memory for tensor storage, with a cache of large blocks.
//
// A training step allocates the same large activations every step. glibc serves blocks above its
// mmap threshold (at most 32 MiB) with a fresh mmap and unmaps them on free, so every step would
// page-fault its activations back in (measured: 2x slower dispatch+combine on this shape).
// Freed blocks of at least kMinCachedBytes are kept, binned by size class (12.5% steps), and
// handed out again; the cache is bounded (MOERUN_HOST_CACHE_MIB, default 8192; 0 under
// AddressSanitizer, which then sees every use after free) and trimmed
// (largest size classes first) when it would grow past the bound. Small blocks go straight to
// malloc.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moerun {

struct HostAllocatorStats {
  int64_t hits = 0;          // large allocations served from the cache
  int64_t misses = 0;        // large allocations that went to the system
  int64_t cached_bytes = 0;  // bytes held in the cache now
  int64_t limit_bytes = 0;   // the bound on cached_bytes
};

class HostAllocator {
 public:
  static constexpr size_t kMinCachedBytes = size_t{1} << 20;
  static constexpr size_t kAlignment = 64;

  static void* allocate(size_t bytes);                     // never null (throws std::bad_alloc)
  static void deallocate(void* p, size_t bytes) noexcept;  // bytes as passed to allocate
  static HostAllocatorStats stats();
  static void set_limit(int64_t bytes);    // 0 disables caching; frees what is over the bound
  static void release_all();               // return every cached block to the system
  static size_t size_class(size_t bytes);  // what a request of `bytes` really allocates
  // Bytes of live tensor storage (size classes; the cache not included), and their high-water
  // mark since the last reset_peak() (which sets it to the live bytes now). Counted, not measured
  // by the OS: the same run gives the same numbers.
  static int64_t live_bytes();
  static int64_t peak_live_bytes();
  static void reset_peak();

 private:
  static void* allocate_class(size_t cls);  // uncounted
};

}  // namespace moerun
