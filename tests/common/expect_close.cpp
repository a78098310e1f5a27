// Element-wise closeness (see expect_close.h).
#include "tests/common/expect_close.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace moerun::testing {

Closeness closeness(Values got, Values ref, double atol, double rtol) {
  Closeness c;
  c.got_size = got.size();
  c.ref_size = ref.size();
  const size_t n = std::min(got.size(), ref.size());
  for (size_t i = 0; i < n; ++i) {
    const double g = got[i], r = ref[i];
    const double diff = std::abs(g - r), allowed = atol + rtol * std::abs(r);
    const bool pass = diff <= allowed;  // false for NaN on either side
    double ratio = diff == 0.0 ? 0.0 : diff / allowed;
    if (!pass && !(ratio > 1.0)) ratio = std::numeric_limits<double>::infinity();  // NaN
    c.failed += !pass;
    c.max_diff = std::max(c.max_diff, diff);
    c.need_atol = std::max(c.need_atol, diff - rtol * std::abs(r));
    if (diff > atol)
      c.need_rtol = std::max(c.need_rtol, r != 0.0 ? (diff - atol) / std::abs(r)
                                                   : std::numeric_limits<double>::infinity());
    if (i == 0 || ratio > c.ratio) {
      c.worst = i;
      c.got = g;
      c.ref = r;
      c.allowed = allowed;
      c.ratio = ratio;
    }
  }
  return c;
}

std::string describe(const Closeness& c, std::string_view what, double atol, double rtol,
                     std::span<const int64_t> index) {
  std::ostringstream os;
  os.precision(9);
  os << what << ": ";
  if (c.got_size != c.ref_size) {
    os << c.got_size << " elements, the reference has " << c.ref_size;
    return os.str();
  }
  const int64_t at = c.worst < index.size() ? index[c.worst] : static_cast<int64_t>(c.worst);
  os << c.failed << " of " << c.got_size << " elements outside atol " << atol << " + rtol " << rtol
     << " * |ref|; worst [" << at << "]: got " << c.got << ", ref " << c.ref << ", |diff| "
     << std::abs(c.got - c.ref) << ", allowed " << c.allowed << " (x" << c.ratio << ")";
  return os.str();
}

bool expect_close(const Closeness& c, std::string_view what, double atol, double rtol,
                  std::span<const int64_t> index, std::source_location where) {
  static const bool report = [] {
    const char* v = std::getenv("MOERUN_TEST_CLOSE_REPORT");
    return v != nullptr && std::string_view(v) == "1";
  }();
  if (report)
    std::printf(
        "[ close ] %s:%u %.*s: worst ratio %.3g, max |diff| %.3g; passes with atol >= %.3g (rtol "
        "%.3g) or rtol >= %.3g (atol %.3g)\n",
        where.file_name(), where.line(), static_cast<int>(what.size()), what.data(), c.ratio,
        c.max_diff, c.need_atol, rtol, c.need_rtol, atol);
  if (!c.ok())
    ADD_FAILURE_AT(where.file_name(), static_cast<int>(where.line()))
        << describe(c, what, atol, rtol, index);
  return c.ok();
}

bool expect_close(Values got, Values ref, double atol, double rtol, std::string_view what,
                  std::source_location where) {
  return expect_close(closeness(got, ref, atol, rtol), what, atol, rtol, {}, where);
}

}  // namespace moerun::testing
