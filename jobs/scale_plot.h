// The PNG plots of a scaling study (`moerun scale collect`), drawn by gnuplot: throughput and
// efficiency against ranks, a weak and a strong panel each, one line per series (EP size).
#pragma once

#include <string>
#include <vector>

#include "jobs/scale_collect.h"

namespace moerun {

// Writes OUT_DIR/scaling_throughput.png and OUT_DIR/scaling_efficiency.png and returns their
// paths. Throws ConfigError when gnuplot is not installed and Error when it fails.
std::vector<std::string> plot_scaling(const std::vector<ScalePoint>& points,
                                      const std::string& out_dir, const std::string& title);

}  // namespace moerun
