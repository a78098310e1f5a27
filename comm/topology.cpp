// Builds the EP / expert-DP / node communicators from --ep-size, and the hosts of the ranks.
#include "comm/topology.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>

#include "runtime/check.h"

namespace moerun {

std::optional<int> fake_ranks_per_node() {
  const char* v = std::getenv("MOERUN_FAKE_RANKS_PER_NODE");
  if (v == nullptr || *v == '\0') return std::nullopt;
  char* end = nullptr;
  const long k = std::strtol(v, &end, 10);
  MOERUN_CONFIG_REQUIRE(end != nullptr && *end == '\0' && k >= 1 && k <= 1 << 20,
                        "MOERUN_FAKE_RANKS_PER_NODE must be a whole number >= 1 (got '{}')", v);
  return static_cast<int>(k);
}

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
  t.launch = detect_launch();
  if (const auto k = fake_ranks_per_node()) t.launch.host = fmt::format("fake-node{}", r / *k);
  t.hosts = t.world.allgather(t.launch.host);
  return t;
}

int Topology::num_hosts() const {
  return static_cast<int>(std::set<std::string>(hosts.begin(), hosts.end()).size());
}

int Topology::max_ranks_per_host() const {
  std::map<std::string, int> n;
  int most = 0;
  for (const std::string& h : hosts) most = std::max(most, ++n[h]);
  return most;
}

std::vector<std::string> Topology::table(const std::string& device) const {
  // local rank = the rank's index among the ranks of its host (the host as the launcher names
  // it, so that fake Slurm nodes on one machine each count from 0, as real nodes would).
  std::map<std::string, int> seen;
  std::vector<int> local(hosts.size());
  for (size_t i = 0; i < hosts.size(); ++i) local[i] = seen[hosts[i]]++;
  const std::vector<std::string> devices = world.allgather(device);
  size_t w = 4;
  for (const std::string& h : hosts) w = std::max(w, h.size());
  std::vector<std::string> lines;
  lines.push_back(fmt::format("{:>5}  {:<{}}  {:>10}  {:>7}  {:>8}  {}", "rank", "host", w,
                              "local_rank", "ep_rank", "edp_rank", "device"));
  for (size_t i = 0; i < hosts.size(); ++i) {
    const int rank = static_cast<int>(i);  // the EP groups are consecutive ranks (see create)
    lines.push_back(fmt::format("{:>5}  {:<{}}  {:>10}  {:>7}  {:>8}  {}", rank, hosts[i], w,
                                local[i], rank % ep_size, rank / ep_size, devices[i]));
  }
  return lines;
}

}  // namespace moerun
