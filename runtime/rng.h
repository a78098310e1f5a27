// Deterministic counter-based random numbers: the same seed gives the same stream on every
// rank and every run, and any element can be drawn without drawing the ones before it.
#pragma once

#include <cmath>
#include <cstdint>

namespace moerun {

// SplitMix64 finaliser: a bijective mix of a 64-bit counter.
constexpr uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed, uint64_t stream = 0) : key_(mix64(seed ^ mix64(stream))) {}
  uint64_t next_u64() { return mix64(key_ + counter_++); }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  // Standard normal by Box-Muller (one value per call; simple and deterministic).
  double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  void skip_to(uint64_t counter) { counter_ = counter; }
  uint64_t counter() const { return counter_; }

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

}  // namespace moerun
