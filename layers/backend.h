// How an op picks its implementation: the device of its tensors. Each op's front-end (layers/X.cpp)
// checks shapes, allocates outputs on that device and calls cpu::X (layers/cpu/X.cpp) or, in a
// CUDA build, cuda::X (layers/cuda/X.cu).
#pragma once

#include <initializer_list>

#include "runtime/check.h"
#include "runtime/tensor.h"

namespace moerun {

// The error for a device this build has no kernels for.
[[noreturn]] inline void no_backend(const char* op, Device device) {
  throw Error(fmt::format("{}: no {} backend in this build", op, to_string(device)));
}

// The device of an op's tensors (they must agree), checked against the backends that have
// kernels, before any output is allocated there: CPU only today; the CUDA backend (layers/cuda/,
// with its device allocator) admits Device::kCuda here.
inline Device backend_of(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Device d = device_of(tensors);
  if (d != Device::kCpu) no_backend(op, d);
  return d;
}

}  // namespace moerun
