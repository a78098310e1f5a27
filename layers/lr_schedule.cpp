// Learning-rate schedules; see lr_schedule.h.
#include "layers/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "runtime/check.h"

namespace moerun {

Schedule parse_schedule(std::string_view s) {
  if (s == "cosine") return Schedule::kCosine;
  if (s == "multistep") return Schedule::kMultistep;
  if (s == "constant") return Schedule::kConstant;
  MOERUN_CONFIG_REQUIRE(false, "--schedule must be cosine|multistep|constant (got '{}')", s);
  return Schedule::kConstant;
}

std::string to_string(Schedule s) {
  switch (s) {
    case Schedule::kCosine:
      return "cosine";
    case Schedule::kMultistep:
      return "multistep";
    case Schedule::kConstant:
      return "constant";
  }
  return "?";
}

void LrSchedule::validate() const {
  MOERUN_CONFIG_REQUIRE(peak > 0 && std::isfinite(peak), "--lr must be > 0 (got {})", peak);
  MOERUN_CONFIG_REQUIRE(total_steps >= 1, "--steps must be >= 1 (got {})", total_steps);
  MOERUN_CONFIG_REQUIRE(warmup_steps >= 0 && warmup_steps <= total_steps,
                        "--warmup-steps must be in [0, --steps={}] (got {})", total_steps,
                        warmup_steps);
  MOERUN_CONFIG_REQUIRE(min_ratio >= 0 && min_ratio <= 1,
                        "--min-lr-ratio must be in [0, 1] (got {})", min_ratio);
}

double LrSchedule::at(int64_t step) const {
  if (step < warmup_steps)
    return peak * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  switch (kind) {
    case Schedule::kConstant:
      return peak;
    case Schedule::kMultistep: {
      const double f = static_cast<double>(step) / static_cast<double>(total_steps);
      return f >= 0.9 ? peak * 0.316 * 0.316 : (f >= 0.8 ? peak * 0.316 : peak);
    }
    case Schedule::kCosine: {
      const int64_t span = std::max<int64_t>(1, total_steps - 1 - warmup_steps);
      const double p = std::clamp(
          static_cast<double>(step - warmup_steps) / static_cast<double>(span), 0.0, 1.0);
      const double lo = peak * min_ratio;
      return lo + (peak - lo) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
    }
  }
  return peak;
}

}  // namespace moerun
