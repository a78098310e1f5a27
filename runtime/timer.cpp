// Resource readings for benchmarks.
#include "runtime/timer.h"

#include <sys/resource.h>

namespace moerun {

long long peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<long long>(ru.ru_maxrss) * 1024;
}

}  // namespace moerun
