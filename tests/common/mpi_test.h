// Helpers for multi-rank tests: a verdict is all-reduced before it is asserted, so one failing
// rank never leaves the others waiting in a collective.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "runtime/check.h"

namespace moerun::testing {

inline int world_size() {
  return Comm::world().size();
}
inline int world_rank() {
  return Comm::world().rank();
}

// Every rank asserts the same global verdict.
#define MOERUN_EXPECT_ALL(comm, local_ok) EXPECT_TRUE((comm).all_true(local_ok)) << "on some rank"

// Every rank must throw a ConfigError whose message contains every one of `needles`.
inline void expect_config_error_everywhere(const std::function<void()>& f,
                                           const std::vector<std::string>& needles) {
  bool ok = false;
  std::string msg = "no exception";
  try {
    f();
  } catch (const ConfigError& e) {
    msg = e.what();
    ok = true;
    for (const std::string& n : needles) ok = ok && msg.find(n) != std::string::npos;
  } catch (const std::exception& e) {
    msg = std::string("wrong exception type (not ConfigError): ") + e.what();
  }
  std::string want;
  for (const std::string& n : needles) want += " '" + n + "'";
  if (!ok) ADD_FAILURE() << "expected a ConfigError mentioning" << want << ", got: " << msg;
  EXPECT_TRUE(Comm::world().all_true(ok)) << "some rank did not report" << want;
}
inline void expect_config_error_everywhere(const std::function<void()>& f, const char* needle) {
  expect_config_error_everywhere(f, std::vector<std::string>{needle});
}

}  // namespace moerun::testing
