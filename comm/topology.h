// Topology: how the world splits into expert-parallel (EP) groups of consecutive ranks and
// expert-data-parallel (EDP) groups of ranks that hold the same experts; plus the node group.
#pragma once

#include "comm/comm.h"

namespace moerun {

struct Topology {
  Comm world;
  Comm ep;    // R consecutive ranks; rank i of it owns experts [i*E_local, (i+1)*E_local)
  Comm edp;   // ranks with the same ep rank: expert gradients are all-reduced here
  Comm node;  // ranks sharing memory (local rank)
  int ep_size = 1;
  int edp_size = 1;

  // Validates ep_size against the world size on every rank before any collective.
  static Topology create(int ep_size);
  int world_rank() const { return world.rank(); }
  int ep_rank() const { return ep.rank(); }
  int local_rank() const { return node.rank(); }
  int local_size() const { return node.size(); }
};

}  // namespace moerun
