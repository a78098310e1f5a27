// Central-difference gradient checks (see fd_check.h).
#include "tests/common/fd_check.h"

#include <string>
#include <vector>

#include "tests/common/expect_close.h"

namespace moerun::testing {

FdResult fd_check(std::string_view name, Tensor& param, const Tensor& grad, const FdLoss& loss,
                  Rng& rng, const FdOptions& opt, std::source_location where) {
  const int64_t n = param.numel();
  const bool all = n <= opt.samples;
  std::vector<int64_t> index;
  std::vector<double> analytic, numeric;
  FdResult r;
  for (int64_t s = 0; s < (all ? n : opt.samples); ++s) {
    const int64_t k = all ? s : static_cast<int64_t>(rng.next_u64() % static_cast<uint64_t>(n));
    float* p = param.f32() + k;
    const float orig = *p;
    const float up = orig + opt.h, down = orig - opt.h;
    *p = up;
    const std::optional<double> lp = loss();
    *p = down;
    const std::optional<double> lm = loss();
    *p = orig;
    if (!lp || !lm) {
      ++r.skipped;
      continue;
    }
    index.push_back(k);
    analytic.push_back(grad.f32()[k]);
    numeric.push_back((*lp - *lm) / (static_cast<double>(up) - static_cast<double>(down)));
  }
  r.checked = static_cast<int64_t>(index.size());
  r.ok = expect_close(closeness(analytic, numeric, opt.atol, opt.rtol),
                      std::string(name) + " (analytic vs central differences)", opt.atol, opt.rtol,
                      index, where);
  return r;
}

}  // namespace moerun::testing
