// Agreement: "one rank does the work, every rank agrees on failure". Local work that may throw
// runs on rank 0 (on_rank0) or on every rank (on_every_rank); afterwards every rank knows whether
// it failed and throws the same error, so no rank is left waiting in a later collective.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <utility>

#include "comm/comm.h"
#include "runtime/check.h"

namespace moerun {

// What local work threw on one rank (nothing when it succeeded).
struct LocalFailure {
  enum class Kind : uint8_t { kNone, kConfig, kError };
  Kind kind = Kind::kNone;
  std::string message;
  int rank = -1;  // after agree_on_failure: the rank whose failure this is
  bool failed() const { return kind != Kind::kNone; }
};

// Runs fn and records what it threw: a ConfigError (bad input) as kConfig, any other exception as
// kError. Nothing escapes.
template <class Fn>
LocalFailure capture_failure(Fn&& fn) {
  try {
    std::forward<Fn>(fn)();
  } catch (const ConfigError& e) {
    return {LocalFailure::Kind::kConfig, e.what()};
  } catch (const std::exception& e) {
    return {LocalFailure::Kind::kError, e.what()};
  } catch (...) {
    return {LocalFailure::Kind::kError, "unknown exception"};
  }
  return {};
}

// Collective: every rank learns the failure of the lowest failing rank (its kind, message and
// rank), or that no rank failed (kind kNone).
LocalFailure agree_on_failure(const Comm& comm, const LocalFailure& local);

// Collective: throws the agreed failure on every rank, a ConfigErrorT (ConfigError or a class
// derived from it, e.g. io::CheckpointError) for a kConfig failure and an ErrorT otherwise.
// ErrorT = ConfigError suits a job whose whole work runs on one rank: every rank knows of the
// failure, so every rank can exit cleanly (no MPI_Abort), whatever the failure was.
template <class ConfigErrorT = ConfigError, class ErrorT = Error>
void agree(const Comm& comm, const char* what, const LocalFailure& local) {
  LocalFailure f = agree_on_failure(comm, local);
  if (!f.failed()) return;
  // The failing rank keeps its message as it is; the others say whose it is.
  if (f.rank != comm.rank()) f.message += fmt::format(" ({} failed on rank {})", what, f.rank);
  if (f.kind == LocalFailure::Kind::kConfig) throw ConfigErrorT(f.message);
  throw ErrorT(f.message);
}

// Collective: fn runs on rank 0 only (filesystem checks, a file only one rank writes); every rank
// throws what it threw, as agree() does.
template <class ConfigErrorT = ConfigError, class ErrorT = Error, class Fn>
void on_rank0(const Comm& comm, const char* what, Fn&& fn) {
  LocalFailure local;
  if (comm.rank() == 0) local = capture_failure(std::forward<Fn>(fn));
  agree<ConfigErrorT, ErrorT>(comm, what, local);
}

// Collective: fn runs on every rank; if it threw anywhere, every rank throws the failure of the
// lowest failing rank, as agree() does.
template <class ConfigErrorT = ConfigError, class ErrorT = Error, class Fn>
void on_every_rank(const Comm& comm, const char* what, Fn&& fn) {
  agree<ConfigErrorT, ErrorT>(comm, what, capture_failure(std::forward<Fn>(fn)));
}

}  // namespace moerun
