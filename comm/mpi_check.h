// MPI_CHECK: throws moerun::Error with the call text, MPI's error string and the location.
#pragma once

#include <mpi.h>

#include "runtime/check.h"

namespace moerun {
[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);
}

#define MPI_CHECK(call)                                                     \
  do {                                                                      \
    int moerun_mpi_rc_ = (call);                                            \
    if (moerun_mpi_rc_ != MPI_SUCCESS)                                      \
      ::moerun::throw_mpi_error(moerun_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)
