// The logger behind runtime/log.h: one spdlog stderr sink, flushed on every line (a killed job
// keeps everything it said), with the rank and level as the prefix.
#include "runtime/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>

#include "runtime/check.h"

namespace moerun::log {

namespace {

struct State {
  Options opts;
  int rank = -1;
  std::shared_ptr<spdlog::logger> logger;
  std::mutex mu;  // init may race with a watchdog thread's first line
};

State& state() {
  static State s;  // owned here: the one process-wide logger
  return s;
}

spdlog::level::level_enum to_spdlog(Level l) {
  switch (l) {
    case Level::kDebug:
      return spdlog::level::debug;
    case Level::kInfo:
      return spdlog::level::info;
    case Level::kWarn:
      return spdlog::level::warn;
    case Level::kError:
      return spdlog::level::err;
    case Level::kOff:
      return spdlog::level::off;
  }
  return spdlog::level::info;
}

std::shared_ptr<spdlog::logger> make_logger(int rank) {
  // Not registered globally: a library's own spdlog use cannot reconfigure ours.
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("moerun", sink);
  logger->set_pattern(rank >= 0 ? fmt::format("[r{} %l] %v", rank) : "[r? %l] %v");
  logger->set_level(spdlog::level::trace);  // filtering is ours (enabled())
  logger->flush_on(spdlog::level::trace);
  return logger;
}

spdlog::logger& logger() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.logger) s.logger = make_logger(s.rank);
  return *s.logger;
}

}  // namespace

void init(int rank, const Options& opts) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.opts = opts;
  s.rank = rank;
  s.logger = make_logger(rank);
}

const Options& options() {
  return state().opts;
}
int rank() {
  return state().rank;
}

bool enabled(Level level) {
  const State& s = state();
  if (level < s.opts.level || level == Level::kOff) return false;
  return s.opts.ranks == Ranks::kAll || s.rank <= 0;
}

void write(Level level, std::string_view text) {
  if (!enabled(level)) return;
  logger().log(to_spdlog(level), "{}", text);
}

void write_any_rank(Level level, std::string_view text) {
  if (level < state().opts.level || level == Level::kOff) return;
  logger().log(to_spdlog(level), "{}", text);
}

Level parse_level(const std::string& text) {
  if (text == "debug") return Level::kDebug;
  if (text == "info") return Level::kInfo;
  if (text == "warning" || text == "warn") return Level::kWarn;
  if (text == "error") return Level::kError;
  if (text == "off") return Level::kOff;
  throw ConfigError(
      fmt::format("--log-level must be debug, info, warning, error or off (got '{}')", text));
}

Ranks parse_ranks(const std::string& text) {
  if (text == "0") return Ranks::kRoot;
  if (text == "all") return Ranks::kAll;
  throw ConfigError(fmt::format("--log-ranks must be 0 or all (got '{}')", text));
}

std::string to_string(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warning";
    case Level::kError:
      return "error";
    case Level::kOff:
      return "off";
  }
  return "?";
}

}  // namespace moerun::log
