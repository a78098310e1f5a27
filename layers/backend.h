// How an op picks its implementation: the device of its tensors. Each op's front-end (layers/X.cpp)
// checks shapes, allocates outputs on that device and calls cpu::X (layers/cpu/X.cpp) or, in a
// CUDA build, cuda::X (layers/cuda/X.cu).
#pragma once

#include "runtime/check.h"
#include "runtime/tensor.h"

namespace moerun {

// The error for a device this build has no kernels for.
[[noreturn]] inline void no_backend(const char* op, Device device) {
  throw Error(fmt::format("{}: no {} backend in this build", op, to_string(device)));
}

}  // namespace moerun
