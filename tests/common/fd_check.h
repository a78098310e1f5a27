// Central-difference gradient checks of float tensors: d loss / d param[k] by (L(p+h) - L(p-h))
// over the step actually representable in float around each value, against the analytic
// gradient, through expect_close (|analytic - numeric| <= atol + rtol*|numeric|).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <source_location>
#include <string_view>

#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace moerun::testing {

struct FdOptions {
  double atol = 0.0, rtol = 0.0;  // every caller chooses (and explains) its own
  float h = 1e-2f;                // the step: truncation ~h^2 f''' / 6, rounding ~eps(L) / h
  int64_t samples = 40;           // coordinates drawn (with repeats); all when numel <= samples
};

// The loss at the current parameter values; nullopt when the difference across this step is
// meaningless (a routing decision flipped), which skips the coordinate.
using FdLoss = std::function<std::optional<double>()>;

struct FdResult {
  int64_t checked = 0, skipped = 0;
  bool ok = true;
};

// Perturbs param in place (restoring every value) and adds one failure naming `name`, the
// worst coordinate and its values if any checked coordinate is out of tolerance.
FdResult fd_check(std::string_view name, Tensor& param, const Tensor& grad, const FdLoss& loss,
                  Rng& rng, const FdOptions& opt,
                  std::source_location where = std::source_location::current());

}  // namespace moerun::testing
