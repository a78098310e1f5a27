// Elementwise add on the CPU.
#include "layers/add.h"

namespace moerun::cpu {

void add_into(Tensor& dst, const Tensor& src) {
  float* d = dst.f32();
  const float* s = src.f32();
  for (int64_t i = 0; i < dst.numel(); ++i) d[i] += s[i];
}

}  // namespace moerun::cpu
