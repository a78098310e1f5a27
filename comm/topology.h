// Topology: how the world splits into expert-parallel (EP) groups of consecutive ranks and
// expert-data-parallel (EDP) groups of ranks that hold the same experts; plus the node group,
// and where every rank runs (the same discovery under srun, mpirun and a singleton).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "runtime/launch.h"

namespace moerun {

// MOERUN_FAKE_RANKS_PER_NODE=k: pretend that every k consecutive ranks share a node
// ("fake-node0", "fake-node1", ...) whatever the machine, so that node-aware code (the
// intra/inter-node traffic split) is tested on one host. nullopt when unset; ConfigError when
// not a whole number >= 1.
std::optional<int> fake_ranks_per_node();

struct Topology {
  Comm world;
  Comm ep;    // R consecutive ranks; rank i of it owns experts [i*E_local, (i+1)*E_local)
  Comm edp;   // ranks with the same ep rank: expert gradients are all-reduced here
  Comm node;  // ranks sharing memory (local rank)
  int ep_size = 1;
  int edp_size = 1;
  LaunchInfo launch;               // this rank's launcher, host and Slurm job
  std::vector<std::string> hosts;  // (W) the host of every world rank (LaunchInfo::host, or the
                                   // fake node of MOERUN_FAKE_RANKS_PER_NODE)

  // Validates ep_size against the world size on every rank before any collective.
  static Topology create(int ep_size);
  int world_rank() const { return world.rank(); }
  int ep_rank() const { return ep.rank(); }
  int local_rank() const { return node.rank(); }
  int local_size() const { return node.size(); }

  // Per host: the distinct hosts and the most ranks one of them runs.
  int num_hosts() const;
  int max_ranks_per_host() const;
  bool same_host(int a, int b) const {
    return hosts[static_cast<size_t>(a)] == hosts[static_cast<size_t>(b)];
  }

  // The table printed once at start, one line per rank:
  //   rank  host  local_rank  ep_rank  edp_rank  device
  // Collective (gathers every rank's row); the lines are returned on every rank.
  std::vector<std::string> table(const std::string& device) const;
};

}  // namespace moerun
