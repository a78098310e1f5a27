// Errors and check macros: every failed check throws moerun::Error with the call text and location.
// Checks never compile out and never sit inside assert().
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace moerun {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad user input (an option, a file): every rank sees the same error before any collective,
// so a job can exit cleanly instead of aborting the MPI world.
class ConfigError : public Error {
 public:
  using Error::Error;
};

[[noreturn]] void throw_error(const char* what, const char* file, int line, const std::string& msg);

}  // namespace moerun

// MOERUN_REQUIRE(cond, "experts ({}) must divide by EP size ({})", E, R)
#define MOERUN_REQUIRE(cond, ...)                                                            \
  do {                                                                                       \
    if (!(cond)) ::moerun::throw_error(#cond, __FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)

// Config errors: the message is for the user (names the option), no source location.
#define MOERUN_CONFIG_REQUIRE(cond, ...)                                \
  do {                                                                  \
    if (!(cond)) throw ::moerun::ConfigError(fmt::format(__VA_ARGS__)); \
  } while (0)
