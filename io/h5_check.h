// H5_CHECK: throws moerun::Error with the call text, HDF5's own error stack and the location.
// It is an expression, so it also passes an id through: `hid_t f = H5_CHECK(H5Fopen(...));`.
#pragma once

#include <hdf5.h>

#include <string>

#include "runtime/check.h"

namespace moerun {

// Collects the messages of the current HDF5 error stack (innermost last) and clears it.
std::string h5_error_stack();
[[noreturn]] void throw_h5_error(const char* call, const char* file, int line);

// HDF5 prints every failure to stderr by default; moerun reports failures by exception (with
// the stack's messages), so the printing is turned off once per process.
void h5_silence_auto_print();

namespace detail {
// herr_t, hid_t and htri_t all signal failure with a negative value.
template <class T>
T h5_check(T rc, const char* call, const char* file, int line) {
  if (rc < 0) throw_h5_error(call, file, line);
  return rc;
}
}  // namespace detail

}  // namespace moerun

#define H5_CHECK(call) ::moerun::detail::h5_check((call), #call, __FILE__, __LINE__)
