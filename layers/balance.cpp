// The bias update rules. Done in double, rounded once to the fp32 bias.
#include "layers/balance.h"

namespace moerun {

void update_bias(const MoEConfig& cfg, std::span<const int64_t> global_counts, Tensor& bias) {
  if (cfg.balance != Balance::kLossFree) return;
  const int64_t E = cfg.routed_experts;
  MOERUN_REQUIRE(static_cast<int64_t>(global_counts.size()) == E && bias.numel() == E,
                 "bias update needs {} counts and biases (got {}, {})", E, global_counts.size(),
                 bias.numel());
  int64_t sum = 0;
  for (int64_t c : global_counts) sum += c;
  const double mean = static_cast<double>(sum) / static_cast<double>(E);
  float* b = bias.f32();
  for (int64_t i = 0; i < E; ++i) {
    const double e = mean - static_cast<double>(global_counts[static_cast<size_t>(i)]);
    const double step = cfg.bias_update == BiasUpdate::kSign ? (e > 0   ? 1.0
                                                                : e < 0 ? -1.0
                                                                        : 0.0) *
                                                                   cfg.bias_update_rate
                                                             : e * cfg.bias_update_rate;
    b[i] = static_cast<float>(static_cast<double>(b[i]) + step);
  }
}

}  // namespace moerun
