// Peak resident memory of this process over an interval, from Linux's /proc: reset, run, read.
// (runtime/timer.h's peak_rss_bytes is getrusage's peak since the start, which cannot be reset.)
#pragma once

#include <cstdint>

namespace moerun {

// Sets the high-water mark of resident memory to the resident memory now ("5" to
// /proc/self/clear_refs). False where that is not possible (not Linux, no permission).
bool reset_rss_high_water();

// The high-water mark of resident memory (VmHWM in /proc/self/status) in bytes, -1 if unknown.
int64_t rss_high_water_bytes();

}  // namespace moerun
