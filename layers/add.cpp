// Elementwise add: shape check and backend choice.
#include "layers/add.h"

#include "layers/backend.h"
#include "runtime/check.h"

namespace moerun {

Tensor& add_into(Tensor& dst, const Tensor& src) {
  MOERUN_REQUIRE(dst.shape() == src.shape(), "cannot add {} into {}", src.shape_str(),
                 dst.shape_str());
  const Device d = backend_of("add_into", {&dst, &src});
  switch (d) {
    case Device::kCpu:
      cpu::add_into(dst, src);
      return dst;
    case Device::kCuda:
      break;
  }
  no_backend("add_into", d);
}

}  // namespace moerun
