// Helpers for multi-rank tests: a verdict is all-reduced before it is asserted, so one failing
// rank never leaves the others waiting in a collective.
#pragma once

#include <gtest/gtest.h>

#include "comm/comm.h"

namespace moerun::testing {

inline int world_size() {
  return Comm::world().size();
}
inline int world_rank() {
  return Comm::world().rank();
}

// Every rank asserts the same global verdict.
#define MOERUN_EXPECT_ALL(comm, local_ok) EXPECT_TRUE((comm).all_true(local_ok)) << "on some rank"

}  // namespace moerun::testing
