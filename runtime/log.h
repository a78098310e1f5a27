// The one logger: every line carries the writing rank and the level ("[r3 warning] ..."), so
// that interleaved output of many ranks under Slurm says who wrote what. By default only rank 0
// logs (info and above); --log-level and --log-ranks all change that. Built on spdlog (Debian's,
// which formats with the fmt the project already uses).
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>
#include <utility>

namespace moerun::log {

enum class Level { kDebug, kInfo, kWarn, kError, kOff };
enum class Ranks { kRoot, kAll };  // who writes: rank 0 only, or every rank

struct Options {
  Level level = Level::kInfo;
  Ranks ranks = Ranks::kRoot;
};

// Call once per process after the rank is known (before that, lines say "r?").
void init(int rank, const Options& opts);
const Options& options();
int rank();
// Whether a line of this level from this rank would be written.
bool enabled(Level level);
void write(Level level, std::string_view text);
// Written whatever --log-ranks says (still filtered by level): for a rank that has something
// to say that rank 0 cannot know, such as its own fatal error.
void write_any_rank(Level level, std::string_view text);

// "debug|info|warning|error|off" and "0|all"; throw ConfigError naming the option otherwise.
Level parse_level(const std::string& text);
Ranks parse_ranks(const std::string& text);
std::string to_string(Level level);

template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kDebug)) write(Level::kDebug, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kInfo)) write(Level::kInfo, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kWarn)) write(Level::kWarn, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kError)) write(Level::kError, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace moerun::log
