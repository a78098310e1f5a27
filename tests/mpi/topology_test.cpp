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

TEST(Topology, HostsAndTheTableNameEveryRank) {
  const Comm world = Comm::world();
  const int W = world.size();
  Topology t = Topology::create(W);
  bool ok = static_cast<int>(t.hosts.size()) == W &&
            t.hosts[static_cast<size_t>(world.rank())] == t.launch.host;
  // Every rank sees the same host list, and on one machine (this test) one host holds them all.
  ok = ok && t.num_hosts() >= 1 && t.max_ranks_per_host() * t.num_hosts() >= W;
  const std::vector<std::string> table = t.table("cpu");
  ok = ok && static_cast<int>(table.size()) == W + 1 &&
       table[0].find("edp_rank") != std::string::npos;
  for (int r = 0; r < W && ok; ++r) {
    const std::string& line = table[static_cast<size_t>(r + 1)];
    ok = line.find(t.hosts[static_cast<size_t>(r)]) != std::string::npos &&
         line.find("cpu") != std::string::npos;
  }
  MOERUN_EXPECT_ALL(world, ok);
  const std::vector<std::string> all =
      world.allgather(std::string(static_cast<size_t>(world.rank()), 'x'));
  bool lengths = static_cast<int>(all.size()) == W;
  for (int r = 0; r < W && lengths; ++r)
    lengths = all[static_cast<size_t>(r)] == std::string(static_cast<size_t>(r), 'x');
  MOERUN_EXPECT_ALL(world, lengths) << " (allgather of strings of length = rank)";
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
