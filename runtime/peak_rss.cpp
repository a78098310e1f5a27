// Peak RSS from /proc; see peak_rss.h.
#include "runtime/peak_rss.h"

#include <fstream>
#include <sstream>
#include <string>

namespace moerun {

bool reset_rss_high_water() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

int64_t rss_high_water_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) != 0) continue;
    std::istringstream in(line.substr(6));
    int64_t kib = -1;
    std::string unit;
    in >> kib >> unit;  // "VmHWM:    123456 kB"
    return in && unit == "kB" ? kib * 1024 : -1;
  }
  return -1;
}

}  // namespace moerun
