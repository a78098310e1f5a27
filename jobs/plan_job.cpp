// `moerun plan`: a training layout on paper (jobs/layout_plan.h does the arithmetic). Runs on one
// process, builds no model; any `moerun train` model option (--top-k, --experts, ...) given
// beside the plan's own overrides the config file.
#include <boost/program_options.hpp>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "jobs/jobs.h"
#include "jobs/layout_plan.h"
#include "jobs/train_options.h"
#include "runtime/check.h"

namespace moerun {

namespace po = boost::program_options;

int run_plan(int argc, char** argv) {
  po::options_description desc(
      "moerun plan: parameters, memory per rank, bytes per step, FLOPs, step time and MFU of a "
      "training layout, with a verdict and the smallest EP size / node count that fit.\n"
      "Any `moerun train` model or batch option (e.g. --top-k 8, --global-batch 512) also "
      "overrides the config.\noptions");
  desc.add_options()("help,h", "this help")(
      "config", po::value<std::string>()->required(),
      "model preset INI (as for `moerun train`), e.g. jobs/presets/deepseekmoe-145b.ini")(
      "nodes", po::value<int>()->required(), "nodes")(
      "ranks-per-node", po::value<int>()->required(), "ranks (devices) per node")(
      "ep-size", po::value<int>()->required(),
      "expert-parallel group size: divides the experts and the world; fits in a node or spans "
      "whole nodes")("micro-batch", po::value<int64_t>(),
                     "sequences per rank per forward/backward (default: the config's)")(
      "hardware", po::value<std::string>()->required(),
      "profile name in the hardware file (h100, h200, a100, cpu)")(
      "hardware-file", po::value<std::string>(),
      "hardware profiles (default: hardware.ini in the folder above the config's, i.e. "
      "jobs/hardware.ini for jobs/presets/*.ini)")(
      "zero", po::value<int>()->default_value(0),
      "1: ZeRO-1, AdamW moments sharded over the ranks that share a parameter")(
      "recompute", po::value<std::string>()->default_value("none"),
      "none | moe | full: activation recomputation per decoder block")(
      "max-nodes-per-token", po::value<int>()->default_value(0),
      "node-limited routing M: each token's experts on at most M nodes (0 = off); bounds the "
      "inter-node all-to-all")(
      "max-devices-per-token", po::value<int>()->default_value(0),
      "device-limited routing M (DeepSeek-V2): each token's experts on at most M ranks of its EP "
      "group (0 = off); bounds the all-to-all")("max-search-nodes",
                                                po::value<int>()->default_value(1024),
                                                "largest node count the fit search tries")(
      "json", "print one JSON object instead of the text report");
  po::parsed_options parsed =
      po::command_line_parser(argc, argv).options(desc).allow_unregistered().run();
  po::variables_map vm;
  po::store(parsed, vm);
  if (vm.count("help")) {
    if (Comm::world().rank() == 0) std::cout << desc << "\n";
    return 0;
  }
  po::notify(vm);
  const std::vector<std::string> rest =
      po::collect_unrecognized(parsed.options, po::include_positional);

  // The model comes from `moerun train`'s own parser, so the plan sees the config train would.
  std::vector<std::string> targs = {"train",
                                    "--config",
                                    vm["config"].as<std::string>(),
                                    "--zero",
                                    std::to_string(vm["zero"].as<int>()),
                                    "--recompute",
                                    vm["recompute"].as<std::string>()};
  if (vm.count("micro-batch")) {
    targs.push_back("--micro-batch");
    targs.push_back(std::to_string(vm["micro-batch"].as<int64_t>()));
  }
  targs.insert(targs.end(), rest.begin(), rest.end());
  std::vector<char*> tv;
  for (std::string& s : targs) tv.push_back(s.data());
  tv.push_back(nullptr);
  TrainConfig cfg;
  parse_train_config(static_cast<int>(targs.size()), tv.data(), cfg, false);

  Layout l;
  l.nodes = vm["nodes"].as<int>();
  l.ranks_per_node = vm["ranks-per-node"].as<int>();
  l.ep_size = vm["ep-size"].as<int>();
  l.micro_batch = cfg.micro_batch;
  l.global_batch = cfg.batch_auto ? 0 : cfg.global_batch;
  l.zero = cfg.zero;
  l.max_nodes_per_token = vm["max-nodes-per-token"].as<int>();
  l.max_devices_per_token = vm["max-devices-per-token"].as<int>();
  const int max_search = vm["max-search-nodes"].as<int>();
  MOERUN_CONFIG_REQUIRE(max_search >= 1, "--max-search-nodes must be >= 1 (got {})", max_search);

  std::string hw_file;
  if (vm.count("hardware-file")) {
    hw_file = vm["hardware-file"].as<std::string>();
  } else {
    namespace fs = std::filesystem;
    hw_file = (fs::path(cfg.config_file).parent_path().parent_path() / "hardware.ini").string();
  }
  const HardwareProfile hw = find_hardware(hw_file, vm["hardware"].as<std::string>());
  const LayoutPlan p = plan_layout(cfg.model, l, hw);
  const FitSearch f = search_fit(cfg.model, l, hw, max_search);
  if (Comm::world().rank() != 0) return 0;
  if (vm.count("json")) {
    nlohmann::json j = plan_json(cfg.model, p, f);
    j["config"] = cfg.config_file;
    j["hardware_file"] = hw_file;
    std::cout << j.dump() << "\n";
  } else {
    std::cout << "moerun plan: " << cfg.config_file << " (hardware profiles: " << hw_file << ")\n"
              << plan_text(cfg.model, p, f);
  }
  return 0;
}

}  // namespace moerun
