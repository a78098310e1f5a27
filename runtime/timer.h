// Wall-clock timing for benchmarks and metrics (never asserted in tests).
#pragma once

#include <chrono>

namespace moerun {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Adds the seconds between construction and destruction to a counter.
class ScopedTimer {
 public:
  explicit ScopedTimer(double& total) : total_(total), start_(now_seconds()) {}
  ~ScopedTimer() { total_ += now_seconds() - start_; }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double& total_;
  double start_;
};

// Peak resident set size of this process in bytes (Linux getrusage).
long long peak_rss_bytes();

}  // namespace moerun
