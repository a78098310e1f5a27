// Helpers shared by the Trainer tests: generated text, the command line of a tiny model, and
// topologies (the world as `moerun train` builds it).
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "comm/topology.h"
#include "jobs/train_options.h"

namespace moerun::testing {

// Generated prose: words of a small list in random order, so that the next byte inside a word
// is predictable while single bytes are spread out (the model can beat the unigram entropy).
inline std::string prose(uint64_t seed, int n_words) {
  static const char* const kWords[] = {"the",     "expert", "router", "sends", "each",    "token",
                                       "to",      "two",    "of",     "four",  "experts", "and",
                                       "shared",  "one",    "learns", "from",  "all",     "gate",
                                       "balance", "load",   "bias",   "layer", "quickly", "while"};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  std::string s;
  for (int i = 0; i < n_words; ++i) {
    s += kWords[pick(rng)];
    s += (i % 11 == 10) ? ".\n" : " ";
  }
  return s;
}

// Parses args (later options win, as on the command line) into a TrainConfig.
inline TrainConfig parse(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  TrainConfig cfg;
  EXPECT_TRUE(parse_train_config(static_cast<int>(argv.size()), argv.data(), cfg, false));
  return cfg;
}

// args with options changed: `changes` holds option, value pairs; an option already in args gets
// the new value (the parser refuses an option given twice), others are appended.
inline std::vector<std::string> with(std::vector<std::string> args,
                                     const std::vector<std::string>& changes) {
  for (size_t i = 0; i + 1 < changes.size(); i += 2) {
    auto it = std::find(args.begin(), args.end(), changes[i]);
    if (it != args.end() && it + 1 != args.end()) {
      *(it + 1) = changes[i + 1];
    } else {
      args.push_back(changes[i]);
      args.push_back(changes[i + 1]);
    }
  }
  return args;
}

// Topology of the world as `moerun train` builds it (ep 0 = all ranks).
inline Topology world_topology(TrainConfig& cfg) {
  Topology t = Topology::create(cfg.ep_size > 0 ? cfg.ep_size : Comm::world().size());
  cfg.ep_size = t.ep_size;
  return t;
}

}  // namespace moerun::testing
