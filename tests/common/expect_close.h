// Element-wise closeness for the numeric tests (golden files, gradient checks, EP/DP
// invariance): |got[i] - ref[i]| <= atol + rtol * |ref[i]| for every i, with the worst element
// named on failure. Each test picks atol and rtol for its own arithmetic and says why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <source_location>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tensor.h"

namespace moerun::testing {

// A read-only view of float or double values (an f32 tensor, a vector, a span), read as double.
class Values {
 public:
  Values(std::span<const float> v) : f_(v.data()), n_(v.size()) {}
  Values(std::span<const double> v) : d_(v.data()), n_(v.size()) {}
  Values(const std::vector<float>& v) : Values(std::span<const float>(v)) {}
  Values(const std::vector<double>& v) : Values(std::span<const double>(v)) {}
  Values(const Tensor& t) : Values(t.span<float>()) {}
  size_t size() const { return n_; }
  double operator[](size_t i) const { return f_ != nullptr ? f_[i] : d_[i]; }

 private:
  const float* f_ = nullptr;
  const double* d_ = nullptr;
  size_t n_ = 0;
};

// got against ref, element by element.
struct Closeness {
  size_t got_size = 0, ref_size = 0;
  size_t failed = 0;  // elements outside atol + rtol*|ref| (a NaN on either side fails)
  size_t worst = 0;   // the element with the largest ratio
  double got = 0.0, ref = 0.0;
  double allowed = 0.0;    // atol + rtol*|ref| there
  double ratio = 0.0;      // |got - ref| / allowed there (<= 1 passes; inf for NaN)
  double max_diff = 0.0;   // max |got - ref|
  double need_atol = 0.0;  // the least atol that passes at this rtol
  double need_rtol = 0.0;  // the least rtol that passes at this atol (inf: none does)
  bool ok() const { return got_size == ref_size && failed == 0; }
};

Closeness closeness(Values got, Values ref, double atol, double rtol);

// "what: 3 of 64 elements outside atol 1e-06 + rtol 0.0001 * |ref|; worst [17]: got .., ref ..,
// |diff| .., allowed .. (x2.3)". index, when given, maps element i to the index to print
// (the coordinate a sampled check perturbed).
std::string describe(const Closeness& c, std::string_view what, double atol, double rtol,
                     std::span<const int64_t> index = {});

// Adds a (non-fatal) failure at the caller's line unless every element is close; returns the
// verdict, so that a multi-rank test can all-reduce it before asserting. With
// MOERUN_TEST_CLOSE_REPORT=1 every call also prints its worst ratio, max |diff|, and the least
// atol (at its rtol) and rtol (at its atol) that would pass: the margin a tolerance leaves.
bool expect_close(Values got, Values ref, double atol, double rtol, std::string_view what,
                  std::source_location where = std::source_location::current());

// The same for a comparison already made (index as in describe).
bool expect_close(const Closeness& c, std::string_view what, double atol, double rtol,
                  std::span<const int64_t> index,
                  std::source_location where = std::source_location::current());

}  // namespace moerun::testing
