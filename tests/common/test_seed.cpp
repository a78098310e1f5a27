// Seeds of randomised tests (see test_seed.h).
#include "tests/common/test_seed.h"

#include <cerrno>
#include <cstdlib>
#include <random>
#include <span>

namespace moerun::testing {

std::optional<uint64_t> seed_override() {
  const char* v = std::getenv("MOERUN_TEST_SEED");
  if (v == nullptr || *v == '\0') return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(v, &end, 0);
  if (*end != '\0' || errno != 0 || *v == '-') {
    ADD_FAILURE() << "MOERUN_TEST_SEED='" << v << "' is not an unsigned 64-bit integer";
    return std::nullopt;
  }
  return static_cast<uint64_t>(n);
}

TestSeed::TestSeed(uint64_t fixed, std::source_location where)
    : TestSeed(seed_override(), fixed, where) {}

TestSeed::TestSeed(std::optional<uint64_t> override, uint64_t fallback, std::source_location where)
    : value_(override.value_or(fallback)),
      trace_(where.file_name(), static_cast<int>(where.line()),
             describe(value_, override.has_value())) {
  ::testing::Test::RecordProperty("seed", std::to_string(value_));
}

std::string TestSeed::describe(uint64_t value, bool overridden) {
  const std::string n = std::to_string(value);
  return overridden ? "seed " + n + " (from MOERUN_TEST_SEED)"
                    : "seed " + n + " (MOERUN_TEST_SEED=" + n + " reproduces it)";
}

TestSeed TestSeed::fresh(std::source_location where) {
  const std::optional<uint64_t> o = seed_override();
  uint64_t v = 0;
  if (!o) {
    std::random_device dev;
    v = (static_cast<uint64_t>(dev()) << 32) ^ dev();
  }
  return TestSeed(o, v, where);
}

TestSeed TestSeed::shared(const Comm& comm, std::source_location where) {
  const std::optional<uint64_t> o = seed_override();
  uint64_t v = 0;
  if (!o && comm.rank() == 0) {
    std::random_device dev;
    v = (static_cast<uint64_t>(dev()) << 32) ^ dev();
  }
  // Every rank joins, whatever its environment says: a collective is never skipped by one rank.
  comm.broadcast(std::as_writable_bytes(std::span<uint64_t>(&v, 1)), 0);
  return TestSeed(o, v, where);
}

}  // namespace moerun::testing
