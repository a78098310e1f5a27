// Formatting of check failures.
#include "runtime/check.h"

namespace moerun {

void throw_error(const char* what, const char* file, int line, const std::string& msg) {
  throw Error(fmt::format("{} (check `{}` failed at {}:{})", msg, what, file, line));
}

}  // namespace moerun
