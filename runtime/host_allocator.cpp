// Size-class cache of large host blocks; see host_allocator.h.
#include "runtime/host_allocator.h"

#include <atomic>
#include <bit>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <vector>

namespace moerun {

namespace {

int64_t default_limit() {
#if defined(__SANITIZE_ADDRESS__)
  return 0;  // keep AddressSanitizer's use-after-free detection on tensor storage
#endif
  const char* env = std::getenv("MOERUN_HOST_CACHE_MIB");
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long long mib = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && mib >= 0) return static_cast<int64_t>(mib) << 20;
  }
  return int64_t{8192} << 20;
}

struct Cache {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free_blocks;  // size class -> blocks
  HostAllocatorStats stats{0, 0, 0, default_limit()};

  // Frees cached blocks, largest classes first, until cached + incoming <= limit.
  void trim_locked(int64_t incoming) {
    while (stats.cached_bytes + incoming > stats.limit_bytes && !free_blocks.empty()) {
      auto it = std::prev(free_blocks.end());
      std::free(it->second.back());
      it->second.pop_back();
      stats.cached_bytes -= static_cast<int64_t>(it->first);
      if (it->second.empty()) free_blocks.erase(it);
    }
  }
};

std::atomic<int64_t> g_live{0}, g_peak{0};

void count_allocated(size_t cls) {
  const int64_t now = g_live.fetch_add(static_cast<int64_t>(cls), std::memory_order_relaxed) +
                      static_cast<int64_t>(cls);
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void count_freed(size_t cls) {
  g_live.fetch_sub(static_cast<int64_t>(cls), std::memory_order_relaxed);
}

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may outlive static destructors
  return *c;
}

void* system_alloc(size_t bytes) {
  void* p = std::aligned_alloc(HostAllocator::kAlignment, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

size_t HostAllocator::size_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  bytes = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (bytes < kMinCachedBytes) return bytes;
  // Eight classes per power of two: at most 12.5% over the request.
  const int top = static_cast<int>(std::bit_width(bytes)) - 1;  // 2^top <= bytes
  const size_t step = size_t{1} << (top - 3);
  return (bytes + step - 1) / step * step;
}

void* HostAllocator::allocate(size_t bytes) {
  const size_t cls = size_class(bytes);
  void* p = allocate_class(cls);
  count_allocated(cls);
  return p;
}

void* HostAllocator::allocate_class(size_t cls) {
  if (cls < kMinCachedBytes) return system_alloc(cls);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.find(cls);
    if (it != c.free_blocks.end()) {
      void* p = it->second.back();
      it->second.pop_back();
      if (it->second.empty()) c.free_blocks.erase(it);
      c.stats.cached_bytes -= static_cast<int64_t>(cls);
      ++c.stats.hits;
      return p;
    }
    ++c.stats.misses;
  }
  return system_alloc(cls);
}

void HostAllocator::deallocate(void* p, size_t bytes) noexcept {
  if (p == nullptr) return;
  const size_t cls = size_class(bytes);
  count_freed(cls);
  if (cls < kMinCachedBytes) {
    std::free(p);
    return;
  }
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  if (static_cast<int64_t>(cls) > c.stats.limit_bytes) {
    std::free(p);
    return;
  }
  c.trim_locked(static_cast<int64_t>(cls));
  try {
    c.free_blocks[cls].push_back(p);
  } catch (...) {
    std::free(p);
    return;
  }
  c.stats.cached_bytes += static_cast<int64_t>(cls);
}

HostAllocatorStats HostAllocator::stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.stats;
}

int64_t HostAllocator::live_bytes() {
  return g_live.load(std::memory_order_relaxed);
}

int64_t HostAllocator::peak_live_bytes() {
  return g_peak.load(std::memory_order_relaxed);
}

void HostAllocator::reset_peak() {
  g_peak.store(g_live.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

void HostAllocator::set_limit(int64_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.stats.limit_bytes = bytes < 0 ? 0 : bytes;
  c.trim_locked(0);
}

void HostAllocator::release_all() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [cls, blocks] : c.free_blocks)
    for (void* p : blocks) std::free(p);
  c.free_blocks.clear();
  c.stats.cached_bytes = 0;
}

}  // namespace moerun
