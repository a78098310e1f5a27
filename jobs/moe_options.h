// Command-line / INI options of one MoE layer, shared by the jobs that build MoE layers.
#pragma once

#include <boost/program_options.hpp>

#include "comm/topology.h"
#include "layers/moe_config.h"

namespace moerun {

// Adds --hidden, --expert-width, --experts, --shared-experts, --top-k, routing and balancing
// options, with defaults from `defaults`.
void add_moe_options(boost::program_options::options_description& desc, const MoEConfig& defaults);
// Reads them back; enum strings are parsed here (unknown values name the option).
MoEConfig moe_config_from(const boost::program_options::variables_map& vm);

// The node of each rank of EP group `ep_group`, from the topology's hosts (numbered in EP-rank
// order; a node's ranks need not be consecutive).
std::vector<int32_t> ep_rank_nodes(const Topology& topo, int ep_group);
// With --max-nodes-per-token: sets cfg.ep_rank_node for this rank's EP group, after validating
// cfg against the node map of every EP group (ConfigError naming the option, the same on every
// rank). Does nothing when the option is off. Local, no comm.
void set_node_map(MoEConfig& cfg, const Topology& topo);

}  // namespace moerun
