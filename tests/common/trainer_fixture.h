// Helpers shared by the Trainer tests: generated text, a dataset written once per test suite, the
// command line of a tiny model, and topologies (the world as `moerun train` builds it).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "comm/topology.h"
#include "io/prepare.h"
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

// A prose (+ arithmetic) dataset that rank 0 writes once per test suite and every rank reads.
struct SuiteDatasetSpec {
  int files = 8;              // prose documents
  uint64_t first_seed = 100;  // prose(first_seed + f, words) for document f
  int words = 500;
  int64_t arithmetic_docs = 300;
};
struct SuiteDataset {
  std::filesystem::path root;  // a fresh directory under the temp dir, named after the suite
  std::filesystem::path data;  // root / "d.h5"
  bool ready = false;          // on every rank: rank 0 built it (else its stderr says why)
};

// Collective. `suite` names the directory (with rank 0's pid, so parallel runs do not collide).
inline SuiteDataset make_suite_dataset(const std::string& suite,
                                       const SuiteDatasetSpec& spec = {}) {
  namespace fs = std::filesystem;
  const Comm world = Comm::world();
  int64_t pid = static_cast<int64_t>(::getpid());
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(&pid, 1)), 0);
  SuiteDataset d;
  d.root = fs::temp_directory_path() / ("moerun-" + suite + "-" + std::to_string(pid));
  d.data = d.root / "d.h5";
  std::string error;
  if (world.rank() == 0) {
    try {
      fs::remove_all(d.root);
      fs::create_directories(d.root / "text");
      for (int f = 0; f < spec.files; ++f)
        std::ofstream(d.root / "text" / ("doc" + std::to_string(f) + ".txt"))
            << prose(spec.first_seed + static_cast<uint64_t>(f), spec.words);
      io::PrepareOptions o;
      o.inputs = {"prose=" + (d.root / "text").string()};
      o.arithmetic_docs = spec.arithmetic_docs;
      o.seed = 7;
      o.validation_fraction = 0.15;
      o.output = d.data.string();
      o.progress = io::Progress::kQuiet;
      io::prepare_dataset(o);
    } catch (const std::exception& e) {
      error = e.what();
      std::fprintf(stderr, "%s: building the dataset failed: %s\n", suite.c_str(), error.c_str());
    }
  }
  d.ready = world.all_true(error.empty());
  return d;
}

// Collective: removes what make_suite_dataset wrote (after every rank is done with it).
inline void remove_suite_dataset(const std::filesystem::path& root) {
  const Comm world = Comm::world();
  world.barrier();
  std::error_code ec;
  if (world.rank() == 0) std::filesystem::remove_all(root, ec);
}

// The fixture of the trainer-level mpi tests: a suite dataset built once per test suite, and a run
// directory per test. `Derived` names its suite (kSuite) and may give its own dataset (spec()).
template <class Derived>
class SuiteDatasetTest : public ::testing::Test {
 protected:
  static SuiteDatasetSpec spec() { return {}; }

  static void SetUpTestSuite() {
    const SuiteDataset d = make_suite_dataset(Derived::kSuite, Derived::spec());
    root_ = d.root;
    data_ = d.data;
    ready_ = d.ready;
  }
  static void TearDownTestSuite() { remove_suite_dataset(root_); }

  void SetUp() override {
    if (!ready_) GTEST_FAIL() << "the test dataset could not be built (see rank 0's stderr)";
  }

  // A run directory unique to this test and `what` (the Trainer creates it on rank 0).
  static std::filesystem::path run_dir(const std::string& what) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return root_ / "runs" / (std::string(info->name()) + "-" + what);
  }

  inline static std::filesystem::path root_, data_;
  inline static bool ready_ = false;
};

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

// The attention of the tiny model, to parametrise the trainer tests: MHA as tiny_args gives it,
// or the attention (and routing) of an MLA preset at the tiny shape.
struct TinyAttention {
  const char* name;               // a test-name suffix
  std::vector<std::string> args;  // appended to tiny_args (the command line wins over --config)
};
inline std::vector<TinyAttention> tiny_attentions() {
  const std::string dir = std::string(MOERUN_SOURCE_DIR) + "/jobs/presets/";
  return {
      {"mha", {}},
      {"tiny_mla", {"--config", dir + "tiny-mla.ini"}},
      // 4 experts: 2 groups of 2 (the preset's 4 groups of 4 hold 16; top2sum needs 2 a group).
      {"tiny_mla_v3", {"--config", dir + "tiny-mla-v3.ini", "--n-group", "2", "--topk-group", "1"}},
  };
}
inline std::string tiny_attention_name(const ::testing::TestParamInfo<TinyAttention>& info) {
  return info.param.name;
}
inline std::vector<std::string> operator+(std::vector<std::string> a,
                                          const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
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
