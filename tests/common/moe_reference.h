// An independent, straightforward double-precision DeepSeekMoE layer for tests: loops over
// tokens and their experts, no dispatch, no GEMMs. Gradients come from central differences of
// this forward (exact to ~1e-9 in double), so they check the analytic backward independently.
#pragma once

#include <cstdint>
#include <vector>

#include "layers/moe_config.h"

namespace moerun::testing {

struct RefLayer {
  MoEConfig cfg;
  int64_t T = 0;
  int64_t seq_len = 0;       // 0 = one sequence
  int ep_size = 1;           // devices of the device-level aux loss
  std::vector<double> x;     // (T, H)
  std::vector<double> gate;  // (E, H)
  std::vector<double> bias;  // (E)
  std::vector<double> w13;   // (E, 2F, H)
  std::vector<double> w2;    // (E, H, F)
  std::vector<double> sw13;  // (2SF, H)
  std::vector<double> sw2;   // (H, SF)
  std::vector<double> dy;    // (T, H): loss = sum(y * dy) + aux
};

struct RefResult {
  std::vector<double> y;        // (T, H)
  std::vector<int> topk_idx;    // (T, K), -1 where capacity dropped (capacity over all T)
  std::vector<double> weight;   // (T, K)
  std::vector<int64_t> counts;  // (E) kept pairs
  int64_t dropped = 0;
  double aux = 0.0;
  double loss = 0.0;
};

RefResult ref_forward(const RefLayer& L);

// d loss / d (L.*member)[i] for every i, by central differences (eps relative to 1).
std::vector<double> ref_grad(RefLayer L, std::vector<double> RefLayer::*member, double eps = 1e-6);

// Random layer with the given config; weights ~ N(0, std), x ~ N(0, 1), bias ~ N(0, bias_std).
RefLayer random_ref_layer(const MoEConfig& cfg, int64_t T, uint64_t seed, double std = 0.3,
                          double bias_std = 0.05);

}  // namespace moerun::testing
