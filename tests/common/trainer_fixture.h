// Helpers shared by the Trainer tests: generated text, the command line of a tiny model, and
// topologies (the world as `moerun train` builds it).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
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

// The tiny model every test trains, as command-line options (vocab 257, H 16, 2 blocks with the
// first dense, 2 heads, T 16, E 4 routed experts of width 8, top-2, 1 shared).
inline std::vector<std::string> tiny_args(const std::filesystem::path& data,
                                          const std::filesystem::path& out, int64_t steps = 5) {
  return {"train",
          "--vocab",
          "257",
          "--hidden",
          "16",
          "--layers",
          "2",
          "--first-k-dense",
          "1",
          "--heads",
          "2",
          "--seq-len",
          "16",
          "--dense-ffn",
          "32",
          "--experts",
          "4",
          "--top-k",
          "2",
          "--expert-width",
          "8",
          "--shared-experts",
          "1",
          "--init-std",
          "0.02",
          "--no-memory-check",
          "--threads",
          "1",
          "--data",
          data.string(),
          "--out",
          out.string(),
          "--steps",
          std::to_string(steps),
          "--global-batch",
          "8",
          "--micro-batch",
          "2",
          "--lr",
          "3e-3",
          "--warmup-steps",
          "2",
          "--eval-batches",
          "2",
          "--seed",
          "1"};
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
