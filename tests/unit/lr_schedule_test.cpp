// Learning-rate schedules: warmup ramp, cosine endpoints and monotonicity, multistep drops.
#include <gtest/gtest.h>

#include "layers/lr_schedule.h"
#include "runtime/check.h"

namespace moerun {
namespace {

TEST(LrSchedule, WarmupThenCosineToTheFloor) {
  LrSchedule s{Schedule::kCosine, 2e-3, 10, 110, 0.1};
  s.validate();
  EXPECT_DOUBLE_EQ(s.at(0), 2e-4);
  EXPECT_DOUBLE_EQ(s.at(9), 2e-3);
  EXPECT_DOUBLE_EQ(s.at(10), 2e-3);
  EXPECT_NEAR(s.at(109), 2e-4, 1e-12);
  for (int64_t t = 11; t < 110; ++t) EXPECT_LE(s.at(t), s.at(t - 1)) << t;
  EXPECT_NEAR(s.at(10 + 99 / 2), 0.5 * (2e-3 + 2e-4), 2e-5);
}

TEST(LrSchedule, MultistepDropsAt80And90Percent) {
  LrSchedule s{Schedule::kMultistep, 1.0, 0, 100, 0.0};
  EXPECT_DOUBLE_EQ(s.at(79), 1.0);
  EXPECT_DOUBLE_EQ(s.at(80), 0.316);
  EXPECT_DOUBLE_EQ(s.at(89), 0.316);
  EXPECT_NEAR(s.at(90), 0.316 * 0.316, 1e-15);
  LrSchedule c{Schedule::kConstant, 0.5, 3, 10, 0.0};
  EXPECT_DOUBLE_EQ(c.at(1), 0.5 * 2 / 3);
  EXPECT_DOUBLE_EQ(c.at(9), 0.5);
}

TEST(LrSchedule, BadValuesNameTheOption) {
  auto msg = [](const LrSchedule& s) {
    try {
      s.validate();
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg({Schedule::kCosine, 0.0, 0, 10, 0.1}).find("--lr"), std::string::npos);
  EXPECT_NE(msg({Schedule::kCosine, 1e-3, 20, 10, 0.1}).find("--warmup-steps"), std::string::npos);
  EXPECT_NE(msg({Schedule::kCosine, 1e-3, 0, 0, 0.1}).find("--steps"), std::string::npos);
  EXPECT_NE(msg({Schedule::kCosine, 1e-3, 0, 10, 2.0}).find("--min-lr-ratio"), std::string::npos);
  EXPECT_THROW(parse_schedule("linear"), ConfigError);
  EXPECT_EQ(parse_schedule(to_string(Schedule::kMultistep)), Schedule::kMultistep);
}

}  // namespace
}  // namespace moerun
