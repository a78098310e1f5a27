// Router: backend choice (the shape checks sit with the kernels, which own the routing rules).
#include "layers/router.h"

#include "layers/backend.h"

namespace moerun {

RouterOutput router_forward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                            const Tensor& bias, int64_t seq_len) {
  const Device d = backend_of("router_forward", {&x, &gate, &bias});
  switch (d) {
    case Device::kCpu:
      return cpu::router_forward(cfg, ep_size, x, gate, bias, seq_len);
    case Device::kCuda:
      break;
  }
  no_backend("router_forward", d);
}

void router_backward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                     const RouterOutput& out, const Tensor& dtopk_weight, int64_t seq_len,
                     Tensor& dgate, Tensor& dx) {
  const Device d =
      backend_of("router_backward", {&x, &gate, &out.scores, &dtopk_weight, &dgate, &dx});
  switch (d) {
    case Device::kCpu:
      cpu::router_backward(cfg, ep_size, x, gate, out, dtopk_weight, seq_len, dgate, dx);
      return;
    case Device::kCuda:
      break;
  }
  no_backend("router_backward", d);
}

}  // namespace moerun
