// Elementwise add in place: the residual stream and the sums of branch outputs.
#pragma once

#include "runtime/tensor.h"

namespace moerun {

// dst += src, elementwise (same shape). Returns dst.
Tensor& add_into(Tensor& dst, const Tensor& src);

namespace cpu {
void add_into(Tensor& dst, const Tensor& src);
}  // namespace cpu

}  // namespace moerun
