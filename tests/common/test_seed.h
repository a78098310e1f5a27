// Seeds of randomised tests, so that every failure reproduces. A test that draws random inputs
// takes its seed from a TestSeed: a fixed one (`const TestSeed seed(0xe1b);`) or a fresh one each
// run (`TestSeed::fresh()`, `TestSeed::shared(comm)` for one seed on every rank). While the
// TestSeed lives, every failure prints "seed N (MOERUN_TEST_SEED=N reproduces it)" (a
// SCOPED_TRACE), and the test's XML report records the property "seed".
//
// MOERUN_TEST_SEED=N replaces the value of every TestSeed by N, to rerun a failure or to sweep
// seeds past the fixed ones (mpiexec passes the variable on to the ranks of one host):
//   MOERUN_TEST_SEED=1234 build/tests/moerun_unit_tests --gtest_filter='MoEGradCheck.*'
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <source_location>
#include <string>

#include "comm/comm.h"

namespace moerun::testing {

class TestSeed {
 public:
  // `fixed`, unless MOERUN_TEST_SEED says otherwise.
  explicit TestSeed(uint64_t fixed, std::source_location where = std::source_location::current());
  // A new seed every run (std::random_device), unless MOERUN_TEST_SEED says otherwise.
  static TestSeed fresh(std::source_location where = std::source_location::current());
  // fresh() drawn on rank 0 of `comm` and broadcast: the same seed on every rank (collective).
  static TestSeed shared(const Comm& comm,
                         std::source_location where = std::source_location::current());

  uint64_t value() const { return value_; }
  operator uint64_t() const { return value_; }  // NOLINT: a seed is used as a number

  TestSeed(const TestSeed&) = delete;
  TestSeed& operator=(const TestSeed&) = delete;

 private:
  TestSeed(std::optional<uint64_t> override, uint64_t fallback, std::source_location where);
  static std::string describe(uint64_t value, bool overridden);

  uint64_t value_;
  ::testing::ScopedTrace trace_;
};

// MOERUN_TEST_SEED as a number, if set (a value that is not one fails the current test).
std::optional<uint64_t> seed_override();

}  // namespace moerun::testing
