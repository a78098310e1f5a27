// Topology: EP groups are consecutive ranks, EDP groups join ranks with the same EP rank,
// world = EP x EDP; a bad --ep-size is a ConfigError on every rank before any collective.
#include <gtest/gtest.h>

#include <vector>

#include "comm/topology.h"
#include "runtime/check.h"
#include "tests/common/mpi_test.h"

namespace moerun::testing {
namespace {

TEST(Topology, EveryDivisorOfTheWorldGivesConsistentGroups) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  for (int ep = 1; ep <= W; ++ep) {
    if (W % ep != 0) continue;
    Topology t = Topology::create(ep);
    bool ok = t.ep.size() == ep && t.edp.size() == W / ep && t.ep_size == ep &&
              t.edp_size == W / ep && t.ep.rank() == me % ep && t.edp.rank() == me / ep;
    // The members of my EP group are me - me%ep ... : gather their world ranks to check.
    std::vector<int64_t> mine(static_cast<size_t>(ep), 0);
    mine[static_cast<size_t>(t.ep.rank())] = me;
    t.ep.allreduce_sum(std::span<int64_t>(mine));
    for (int i = 0; i < ep; ++i) ok = ok && mine[static_cast<size_t>(i)] == me - me % ep + i;
    std::vector<int64_t> peers(static_cast<size_t>(W / ep), 0);
    peers[static_cast<size_t>(t.edp.rank())] = me;
    t.edp.allreduce_sum(std::span<int64_t>(peers));
    for (int j = 0; j < W / ep; ++j) ok = ok && peers[static_cast<size_t>(j)] == me % ep + j * ep;
    ok = ok && t.local_size() >= 1 && t.local_rank() < t.local_size();
    MOERUN_EXPECT_ALL(world, ok) << " at ep_size " << ep;
  }
}

TEST(Topology, BadEpSizeIsAConfigErrorOnEveryRank) {
  const Comm world = Comm::world();
  EXPECT_THROW(Topology::create(0), ConfigError);
  EXPECT_THROW(Topology::create(-2), ConfigError);
  EXPECT_THROW(Topology::create(world.size() + 1), ConfigError);
  world.barrier();  // nobody is left inside a split
}

}  // namespace
}  // namespace moerun::testing
