// RMSNorm: shape checks and backend choice, and the module.
#include "layers/rmsnorm.h"

#include "layers/backend.h"
#include "runtime/check.h"

namespace moerun {

RMSNormOut rmsnorm_forward(const Tensor& x, const Tensor& w, float eps) {
  MOERUN_REQUIRE(x.ndim() == 2 && w.ndim() == 1 && x.dim(1) == w.dim(0),
                 "RMSNorm needs x (N, H) and w (H) (got {} and {})", x.shape_str(), w.shape_str());
  const Device d = backend_of("rmsnorm_forward", {&x, &w});
  RMSNormOut out{Tensor::empty(x.shape(), DType::kF32, d),
                 Tensor::empty({x.dim(0)}, DType::kF32, d)};
  switch (d) {
    case Device::kCpu:
      cpu::rmsnorm_forward(x, w, eps, out.y, out.rstd);
      return out;
    case Device::kCuda:
      break;
  }
  no_backend("rmsnorm_forward", d);
}

Tensor rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                        Tensor& dw) {
  MOERUN_REQUIRE(x.ndim() == 2 && dy.shape() == x.shape() && w.shape() == dw.shape() &&
                     w.ndim() == 1 && w.dim(0) == x.dim(1) && rstd.numel() == x.dim(0),
                 "RMSNorm backward: x {}, dy {}, w {}, dw {}, rstd {} do not match", x.shape_str(),
                 dy.shape_str(), w.shape_str(), dw.shape_str(), rstd.shape_str());
  const Device d = backend_of("rmsnorm_backward", {&x, &w, &rstd, &dy, &dw});
  Tensor dx = Tensor::empty(x.shape(), DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::rmsnorm_backward(x, w, rstd, dy, dw, dx);
      return dx;
    case Device::kCuda:
      break;
  }
  no_backend("rmsnorm_backward", d);
}

RMSNorm::RMSNorm(int64_t hidden, float eps)
    : weight(Tensor::zeros({hidden})), dweight(Tensor::zeros({hidden})), eps_(eps) {}

Tensor RMSNorm::forward(const Tensor& x) {
  RMSNormOut out = rmsnorm_forward(x, weight, eps_);
  saved_.x = x;
  saved_.rstd = out.rstd;
  return out.y;
}

Tensor RMSNorm::backward(const Tensor& dy) {
  return rmsnorm_backward(saved_.x, weight, saved_.rstd, dy, dweight);
}

void RMSNorm::named_params(const std::string& prefix, std::vector<NamedParam>& out) {
  out.push_back({prefix + "weight", &weight, &dweight, false, false});
}

}  // namespace moerun
