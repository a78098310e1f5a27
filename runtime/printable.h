// Bytes from a file, made safe to put in a message.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moerun {

// Printable ASCII is kept, everything else is escaped (\n, \t, \\, \xNN), and bytes beyond
// max_bytes become "...": a damaged file never puts raw binary on the terminal.
std::string printable(std::string_view bytes, size_t max_bytes = 64);

}  // namespace moerun
