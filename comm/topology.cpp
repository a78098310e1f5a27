// Builds the EP / expert-DP / node communicators from --ep-size.
#include "comm/topology.h"

#include "runtime/check.h"

namespace moerun {

Topology Topology::create(int ep_size) {
  Topology t;
  t.world = Comm::world().dup();
  const int W = t.world.size();
  MOERUN_CONFIG_REQUIRE(ep_size >= 1, "--ep-size must be >= 1 (got {})", ep_size);
  MOERUN_CONFIG_REQUIRE(W % ep_size == 0,
                        "--ep-size {} must divide the number of ranks {} (world = EP x expert-DP)",
                        ep_size, W);
  t.ep_size = ep_size;
  t.edp_size = W / ep_size;
  const int r = t.world.rank();
  t.ep = t.world.split(r / ep_size, r);
  t.edp = t.world.split(r % ep_size, r);
  t.node = t.world.split_shared_memory();
  return t;
}

}  // namespace moerun
