// Loss-Free Balancing: after each optimizer step, move every expert's bias toward balance
// from the GLOBAL integer loads of that step (algorithms.md section 3).
#pragma once

#include <cstdint>
#include <span>

#include "layers/moe_config.h"
#include "runtime/tensor.h"

namespace moerun {

// e_i = mean(c) - c_i; sign: b_i += u * sign(e_i); proportional: b_i += u * e_i.
// A pure function of the integer counts: identical counts give bit-identical biases on every
// rank. Does nothing unless cfg.balance is loss-free.
void update_bias(const MoEConfig& cfg, std::span<const int64_t> global_counts, Tensor& bias);

}  // namespace moerun
