// H5_CHECK: throws moerun::Error with the call text, HDF5's own error stack and the location.
// It is an expression, so it also passes an id through: `hid_t f = H5_CHECK(H5Fopen(...));`.
#pragma once

#include <hdf5.h>

#include <exception>
#include <string>
#include <utility>

#include "runtime/check.h"

namespace moerun {

// An HDF5 call failed. Besides the full message (the call, HDF5's error stack, the location) it
// keeps the cause in a few words for a user: the system error that the stack reports for a failed
// read or write ("No space left on device"), else the innermost HDF5 message.
class H5Error : public Error {
 public:
  H5Error(const std::string& message, std::string cause, int sys_errno)
      : Error(message), cause_(std::move(cause)), sys_errno_(sys_errno) {}
  const std::string& cause() const { return cause_; }
  int sys_errno() const { return sys_errno_; }  // 0 when the stack names no system error

 private:
  std::string cause_;
  int sys_errno_ = 0;
};

// Why writing the file `path` failed, in a few words for a user: the system error an H5Error
// names ("No space left on device"); else, when the file system of `path` is (nearly) full, that;
// else, when `path` has reached the file size limit (ulimit -f), that; else the H5Error's cause or
// what(). (Under MPI-IO the system error is often lost: the probes tell the common causes.)
std::string write_failure_cause(const std::exception& e, const std::string& path);

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
