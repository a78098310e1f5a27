// Learning-rate schedules (DeepSeek LLM and the Loss-Free Balancing paper use warmup + multistep;
// warmup + cosine is the common default): lr(step) for optimizer steps 0, 1, ...
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace moerun {

enum class Schedule { kCosine, kMultistep, kConstant };
Schedule parse_schedule(
    std::string_view s);  // cosine|multistep|constant; ConfigError names --schedule
std::string to_string(Schedule s);

struct LrSchedule {
  Schedule kind = Schedule::kCosine;
  double peak = 1e-3;        // lr after warmup
  int64_t warmup_steps = 0;  // linear from peak/warmup to peak over the first warmup steps
  int64_t total_steps = 1;   // the run's length (cosine reaches min at the last step)
  double min_ratio = 0.1;    // cosine floor, as a fraction of peak
  void validate() const;     // ConfigError naming --lr, --warmup-steps, --steps, --min-lr-ratio
  // Warmup: peak * (step+1) / warmup. Then
  //   cosine:    min + (peak - min) * (1 + cos(pi * p)) / 2, p = progress after warmup in [0, 1]
  //   multistep: peak, x0.316 from 80% of the steps, x0.316^2 from 90% (DeepSeek LLM)
  //   constant:  peak
  double at(int64_t step) const;
};

}  // namespace moerun
