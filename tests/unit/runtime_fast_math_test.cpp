// fast_expf / fast_sigmoidf against double-precision libm over the whole useful range.
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/fast_math.h"

namespace moerun {
namespace {

TEST(FastMath, ExpIsWithinFourUlpEverywhere) {
  double worst = 0.0;
  float at = 0.0f;
  for (float x = -87.0f; x <= 88.0f; x += 0.0013f) {
    const double want = std::exp(static_cast<double>(x));
    const double rel = std::abs(fast_expf(x) - want) / want;
    if (rel > worst) worst = rel, at = x;
  }
  EXPECT_LT(worst, 4.8e-7) << "worst relative error at x = " << at;  // 4 ulp of float
  EXPECT_EQ(fast_expf(0.0f), 1.0f);
  EXPECT_GT(fast_expf(-1000.0f), 0.0f);  // clamped, never 0 or denormal trouble
  EXPECT_TRUE(std::isfinite(fast_expf(1000.0f)));
}

TEST(FastMath, SigmoidMatchesAndSaturates) {
  double worst = 0.0;
  for (float x = -30.0f; x <= 30.0f; x += 0.001f) {
    const double want = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    worst = std::max(worst, std::abs(fast_sigmoidf(x) - want) / want);
  }
  EXPECT_LT(worst, 4.8e-7);
  EXPECT_EQ(fast_sigmoidf(200.0f), 1.0f);
  EXPECT_GE(fast_sigmoidf(-200.0f), 0.0f);
  EXPECT_LT(fast_sigmoidf(-200.0f), 1e-30f);
}

}  // namespace
}  // namespace moerun
