// Command-line / INI options of one MoE layer, shared by the jobs that build MoE layers.
#pragma once

#include <boost/program_options.hpp>

#include "layers/moe_config.h"

namespace moerun {

// Adds --hidden, --expert-width, --experts, --shared-experts, --top-k, routing and balancing
// options, with defaults from `defaults`.
void add_moe_options(boost::program_options::options_description& desc, const MoEConfig& defaults);
// Reads them back; enum strings are parsed here (unknown values name the option).
MoEConfig moe_config_from(const boost::program_options::variables_map& vm);

}  // namespace moerun
