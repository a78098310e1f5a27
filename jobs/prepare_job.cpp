// `moerun prepare`: the command line of io::prepare_dataset. World rank 0 writes the dataset;
// the other ranks only learn whether it succeeded, so a multi-rank launch neither hangs nor
// writes the file twice.
#include <boost/program_options.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include "comm/agree.h"
#include "comm/comm.h"
#include "io/prepare.h"
#include "jobs/jobs.h"
#include "runtime/check.h"

namespace moerun {

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

// "py,txt" and repeated --extensions both end up as one list; blanks are dropped.
std::vector<std::string> split_list(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const auto& value : values) {
    size_t begin = 0;
    while (begin <= value.size()) {
      size_t end = value.find(',', begin);
      if (end == std::string::npos) end = value.size();
      std::string item = value.substr(begin, end - begin);
      const auto first = item.find_first_not_of(" \t");
      const auto last = item.find_last_not_of(" \t");
      if (first != std::string::npos) out.push_back(item.substr(first, last - first + 1));
      begin = end + 1;
    }
  }
  return out;
}

// Checks that need the filesystem of the writing rank, before any input is read.
void check_output(const std::string& output, bool force) {
  const fs::path path(output);
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (fs::exists(status)) {
    MOERUN_CONFIG_REQUIRE(!fs::is_directory(status), "--output '{}' is a directory", output);
    MOERUN_CONFIG_REQUIRE(force, "--output '{}' already exists (pass --force to overwrite it)",
                          output);
  }
  const fs::path parent = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  MOERUN_CONFIG_REQUIRE(fs::is_directory(parent, ec),
                        "--output '{}': directory '{}' does not exist", output, parent.string());
}

}  // namespace

int run_prepare(int argc, char** argv) {
  Comm world = Comm::world();
  const bool root = world.rank() == 0;

  po::options_description desc(
      "moerun prepare: text files and generated arithmetic -> one moerun token dataset (.h5).\n"
      "Byte tokenizer, deterministic train/validation split; written by rank 0 only");
  auto add = desc.add_options();
  add("help,h", "show this help");
  add("input", po::value<std::vector<std::string>>()->composing(),
      "DOMAIN=PATH (repeatable): a file is one document, a directory is read recursively "
      "(every file one document, hidden entries skipped, sorted by path); required unless "
      "--arithmetic-docs > 0");
  add("extensions", po::value<std::vector<std::string>>()->composing(),
      "only files with these extensions are read from directories, e.g. py or .py "
      "(repeatable or comma list; default: all files; a file named directly is always read)");
  add("arithmetic-docs", po::value<int64_t>()->default_value(0),
      "documents of the generated \"arithmetic\" domain (0 = none)");
  add("seed", po::value<uint64_t>()->default_value(1), "seed of the arithmetic text and the split");
  add("validation-fraction", po::value<double>()->default_value(0.05, "0.05"),
      "share of each domain's documents in the validation split, in [0, 1)");
  add("output", po::value<std::string>(), "the .h5 dataset to write (required)");
  add("force", "overwrite --output if it exists");
  add("quiet", "no progress lines on stderr (the summary table is still printed)");

  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (root) std::cout << desc << "\n";
    return 0;
  }

  io::PrepareOptions options;
  if (vm.count("input")) options.inputs = vm["input"].as<std::vector<std::string>>();
  if (vm.count("extensions"))
    options.extensions = split_list(vm["extensions"].as<std::vector<std::string>>());
  options.arithmetic_docs = vm["arithmetic-docs"].as<int64_t>();
  options.seed = vm["seed"].as<uint64_t>();
  options.validation_fraction = vm["validation-fraction"].as<double>();
  if (vm.count("output")) options.output = vm["output"].as<std::string>();
  options.progress = vm.count("quiet") ? io::Progress::kQuiet : io::Progress::kStderr;
  const bool force = vm.count("force") > 0;
  // Same command line on every rank: every rank throws the same ConfigError here.
  options.validate();

  // Only rank 0 touches the filesystem; a failure there (a missing input, an existing output, a
  // full disk) reaches every rank, so all of them exit cleanly instead of waiting.
  io::PrepareSummary summary;
  on_rank0<ConfigError, ConfigError>(world, "prepare", [&] {
    check_output(options.output, force);
    summary = io::prepare_dataset(options);
  });
  if (root) {
    std::fputs(summary.to_string().c_str(), stdout);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace moerun
