// RMSNorm over rows of H: y = w * x / sqrt(mean(x^2) + eps), normalisation in fp32 as HF does,
// with the mean of squares accumulated in double so long rows lose nothing. Ops and the module.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/param.h"
#include "runtime/tensor.h"

namespace moerun {

struct RMSNormOut {
  Tensor y;     // (N, H)
  Tensor rstd;  // (N): 1/sqrt(mean(x^2) + eps), all the backward needs besides x and w
};

// x (N, H), w (H) -> y (N, H), rstd (N).
RMSNormOut rmsnorm_forward(const Tensor& x, const Tensor& w, float eps);

// dy (N, H) -> dx (N, H); dw (H) is accumulated into. x and rstd are the forward's.
Tensor rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                        Tensor& dw);

namespace cpu {
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                      Tensor& dw, Tensor& dx);
}  // namespace cpu

class RMSNorm {
 public:
  RMSNorm(int64_t hidden, float eps);
  // x (N, H) -> y (N, H). Saves x and rstd.
  Tensor forward(const Tensor& x);
  // dy (N, H) -> dx (N, H); accumulates dweight.
  Tensor backward(const Tensor& dy);
  void named_params(const std::string& prefix, std::vector<NamedParam>& out);
  void drop_saved() { saved_ = {}; }

  Tensor weight, dweight;  // (H)

 private:
  float eps_;
  struct Saved {
    Tensor x;     // (N, H)
    Tensor rstd;  // (N)
  } saved_;
};

}  // namespace moerun
