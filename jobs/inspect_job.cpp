// `moerun inspect CKPT_DIR`: what a checkpoint directory holds, without MPI collectives or a
// model. Rank 0 does the work (one process is enough; the others learn its exit status or its
// error): the step (newest committed by default; the uncommitted step directories it
// ignored), the writing layout and model shape from the manifest meta, a table of the tensors,
// totals, the files' sizes on disk against the manifest, a full verification (verify_checkpoint:
// file sizes, every dataset's shape, dtype and CRC32, no unlisted datasets; exit 1 on any problem)
// and whether every parameter name maps to a HuggingFace name (io/hf_names.h, what `moerun convert
// --to hf` uses).
#include <fmt/format.h>

#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "comm/agree.h"
#include "comm/comm.h"
#include "io/checkpoint.h"
#include "io/checkpoint_manifest.h"
#include "io/hf_names.h"
#include "jobs/checkpoint_schema.h"
#include "jobs/jobs.h"
#include "runtime/check.h"
#include "runtime/log.h"
#include "runtime/timer.h"

namespace moerun {

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t dtype_bytes(DType d) {
  return d == DType::kI64 ? 8 : 4;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("({})", fmt::join(shape, ", "));
}

// What a tensor is for, by moerun's naming scheme.
std::string category(const std::string& name) {
  if (is_optimizer_state(name)) return "optimizer state";
  if (is_router_bias(name)) return "router biases";
  return "parameters";
}

// A JSON number from meta, or nullopt.
std::optional<int64_t> meta_int(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object() || !obj.contains(key) || !obj.at(key).is_number_integer())
    return std::nullopt;
  return obj.at(key).get<int64_t>();
}

// HF export readiness: every parameter (not optim.*) is a tensor of the HF map of the model
// shape in meta, at the same shape, and every tensor of the map is there.
void report_hf_readiness(const io::Manifest& m) {
  std::printf("HF export readiness: ");
  io::HfShape s;
  try {  // the mapping convert --to hf uses (jobs/checkpoint_schema.h)
    s = hf_shape_of(model_from_meta(m.meta, "the manifest meta"));
  } catch (const ConfigError& e) {
    std::printf("unknown (%s); skipped\n", e.what());
    return;
  }
  std::map<std::string, const io::ManifestTensor*> params;
  for (const auto& t : m.tensors)
    if (!is_optimizer_state(t.name)) params[t.name] = &t;
  s.score_bias = std::any_of(params.begin(), params.end(),
                             [](const auto& p) { return category(p.first) == "router biases"; });
  std::vector<io::HfTensor> map;
  try {
    map = io::hf_tensor_map(s);
  } catch (const std::exception& e) {
    std::printf("NOT READY: the model shape cannot be exported: %s\n", e.what());
    return;
  }
  std::vector<std::string> missing, misshaped;
  size_t hf_names = 0;
  for (const io::HfTensor& t : map) {
    hf_names += t.pieces.size();
    auto it = params.find(t.name);
    if (it == params.end()) {
      missing.push_back(t.name);
      continue;
    }
    if (it->second->shape != t.shape)
      misshaped.push_back(fmt::format("{} is {}, HF expects {}", t.name,
                                      shape_text(it->second->shape), shape_text(t.shape)));
    params.erase(it);
  }
  if (missing.empty() && misshaped.empty() && params.empty()) {
    std::printf("ready: all %zu parameter tensors map to %zu HF tensors (moerun convert --to hf)\n",
                map.size(), hf_names);
    return;
  }
  std::printf("NOT READY\n");
  if (!params.empty()) {
    std::vector<std::string> names;
    for (const auto& p : params) names.push_back(p.first);
    std::printf("  no HF name for: %s\n", fmt::format("{}", fmt::join(names, ", ")).c_str());
  }
  if (!missing.empty())
    std::printf("  missing for HF: %s\n", fmt::format("{}", fmt::join(missing, ", ")).c_str());
  for (const auto& x : misshaped) std::printf("  mis-shaped: %s\n", x.c_str());
}

// The whole report; returns the exit status (0 sound, 1 problems found). Throws ConfigError
// for a directory or step that cannot be inspected at all.
int inspect(const std::string& dir, std::optional<int64_t> want_step, bool verify) {
  MOERUN_CONFIG_REQUIRE(fs::is_directory(dir), "'{}' is not a directory", dir);
  const io::CheckpointScan scan = io::scan_checkpoints(dir);
  int64_t step = 0;
  if (want_step) {
    step = *want_step;
    if (std::find(scan.committed.begin(), scan.committed.end(), step) == scan.committed.end()) {
      for (const auto& p : scan.partial)
        MOERUN_CONFIG_REQUIRE(p.step != step, "--step {}: {} is not committed: {}", step,
                              io::step_dir(dir, step), p.reason);
      MOERUN_CONFIG_REQUIRE(false, "--step {}: no such step in {} (committed: {})", step, dir,
                            scan.committed.empty()
                                ? std::string("none")
                                : fmt::format("{}", fmt::join(scan.committed, ", ")));
    }
  } else {
    MOERUN_CONFIG_REQUIRE(
        !scan.committed.empty(), "no committed checkpoint in {}{}", dir,
        scan.partial.empty() ? std::string()
                             : fmt::format(" ({} uncommitted step director{})", scan.partial.size(),
                                           scan.partial.size() == 1 ? "y" : "ies"));
    step = scan.committed.back();
  }
  std::printf("checkpoint %s\n", io::step_dir(dir, step).c_str());
  std::printf("step %lld (%s; committed steps: %s; latest file: %s)\n",
              static_cast<long long>(step), want_step ? "--step" : "the newest committed",
              fmt::format("{}", fmt::join(scan.committed, ", ")).c_str(),
              io::describe_latest(scan).c_str());
  for (const auto& p : scan.partial)
    std::printf("ignored uncommitted step %lld: %s\n", static_cast<long long>(p.step),
                p.reason.c_str());

  const io::Manifest m = io::read_manifest(dir, step);
  const nlohmann::json& meta = m.meta;
  const nlohmann::json layout =
      meta.contains("layout") ? meta.at("layout") : nlohmann::json::object();
  const auto ep = meta_int(layout, "ep");
  std::printf("written by %d rank(s), EP %s\n", m.world_size,
              ep ? std::to_string(*ep).c_str() : "unknown (no layout in meta)");
  if (meta.contains("model") && meta.at("model").is_object()) {
    // moerun's order first, then any other key.
    const nlohmann::json& model = meta.at("model");
    std::string shape;
    std::set<std::string> shown;
    auto show = [&](const std::string& k) {
      shape += fmt::format("{}{} {}", shape.empty() ? "" : ", ", k, model.at(k).dump());
      shown.insert(k);
    };
    for (const ModelKey& k : model_keys())
      if (model.contains(k.key)) show(k.key);
    for (const auto& [k, v] : model.items())
      if (!shown.count(k)) show(k);
    std::printf("model: %s\n", shape.c_str());
  } else {
    std::printf("model: unknown (no model in meta)\n");
  }
  if (auto a = meta_int(meta, "adamw_steps")) {
    std::string loader;
    if (meta.contains("loader") && meta.at("loader").is_object())
      for (const auto& [k, v] : meta.at("loader").items())
        loader += fmt::format(" {} {}", k, v.dump());
    std::printf("training: AdamW steps %lld; loader%s\n", static_cast<long long>(*a),
                loader.c_str());
  }

  // The tensor table and totals per category.
  size_t wname = 4, wshape = 5;
  for (const auto& t : m.tensors) {
    wname = std::max(wname, t.name.size());
    wshape = std::max(wshape, shape_text(t.shape).size());
  }
  std::printf("\n  %-*s  %-5s  %-*s  %10s  %s\n", static_cast<int>(wname), "name", "dtype",
              static_cast<int>(wshape), "shape", "MB", "kind");
  std::map<std::string, std::pair<int64_t, int64_t>> totals;  // category -> (tensors, bytes)
  int64_t total_bytes = 0, sharded_bytes = 0;
  for (const auto& t : m.tensors) {
    const int64_t bytes = numel(t.shape) * dtype_bytes(t.dtype);
    std::printf("  %-*s  %-5s  %-*s  %10.3f  %s\n", static_cast<int>(wname), t.name.c_str(),
                io::checkpoint_dtype_name(t.dtype), static_cast<int>(wshape),
                shape_text(t.shape).c_str(), static_cast<double>(bytes) / 1e6,
                io::to_string(t.kind));
    auto& c = totals[category(t.name)];
    ++c.first;
    c.second += bytes;
    total_bytes += bytes;
    if (t.kind == io::TensorKind::kSharded) sharded_bytes += bytes;
  }
  std::printf("\ntotal: %zu tensors, %.3f MB (%.3f MB sharded)\n", m.tensors.size(),
              static_cast<double>(total_bytes) / 1e6, static_cast<double>(sharded_bytes) / 1e6);
  for (const auto& [name, c] : totals)
    std::printf("  %-16s %6lld tensors  %12.3f MB\n", name.c_str(), static_cast<long long>(c.first),
                static_cast<double>(c.second) / 1e6);
  // The files as they are on disk, each compared with the size the manifest recorded.
  int status = 0;
  for (const auto& f : m.files) {
    const fs::path path = fs::path(io::step_dir(dir, step)) / f.path;
    std::error_code ec;
    const auto st = fs::symlink_status(path, ec);
    const int64_t size =
        fs::is_regular_file(st) ? static_cast<int64_t>(fs::file_size(path, ec)) : int64_t{-1};
    if (size < 0 || ec) {
      std::printf("  file %s: MISSING (the manifest says %lld bytes)\n", f.path.c_str(),
                  static_cast<long long>(f.bytes));
      status = 1;
    } else if (size != f.bytes) {
      std::printf("  file %s: %lld bytes on disk, the manifest says %lld (%s)\n", f.path.c_str(),
                  static_cast<long long>(size), static_cast<long long>(f.bytes),
                  size < f.bytes ? "TRUNCATED" : "LARGER: replaced or appended to");
      status = 1;
    } else {
      std::printf("  file %s: %.3f MB on disk\n", f.path.c_str(), static_cast<double>(size) / 1e6);
    }
  }
  std::printf("\n");

  if (verify) {
    const double t0 = now_seconds();
    const std::vector<std::string> problems = io::verify_checkpoint(dir, step);
    const double dt = now_seconds() - t0;
    if (problems.empty()) {
      std::printf("checksums verified: %zu datasets, %.3f MB read in %.2f s\n", m.tensors.size(),
                  static_cast<double>(total_bytes) / 1e6, dt);
    } else {
      std::printf("checksums NOT verified: %zu problem(s)\n", problems.size());
      for (const auto& p : problems) std::printf("  %s\n", p.c_str());
      status = 1;
    }
  } else {
    std::printf("checksums not verified (--no-verify)\n");
  }
  report_hf_readiness(m);
  std::fflush(stdout);
  if (status != 0)
    log::error("moerun inspect: error: checkpoint step {} in {} is damaged (see above)", step, dir);
  return status;
}

}  // namespace

int run_inspect(int argc, char** argv) {
  const Comm world = Comm::world();
  po::options_description desc(
      "moerun inspect CKPT_DIR: the step, writing layout, model shape, tensors and totals of a\n"
      "checkpoint; verifies every checksum (exit 1 on any problem). One process does the work");
  auto add = desc.add_options();
  add("help,h", "show this help");
  add("ckpt-dir", po::value<std::string>(),
      "the checkpoint directory (also the first positional argument)");
  add("step", po::value<int64_t>(), "the step to inspect (default: the newest committed one)");
  add("no-verify", "skip reading the tensor data (no checksum verification)");
  po::positional_options_description pos;
  pos.add("ckpt-dir", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (world.rank() == 0)
      std::cout << "usage: moerun inspect CKPT_DIR [--step N] [--no-verify]\n" << desc << "\n";
    return 0;
  }
  MOERUN_CONFIG_REQUIRE(vm.count("ckpt-dir"),
                        "a checkpoint directory is required: moerun inspect CKPT_DIR");
  std::optional<int64_t> step;
  if (vm.count("step")) {
    step = vm["step"].as<int64_t>();
    MOERUN_CONFIG_REQUIRE(*step >= 0, "--step {} is negative", *step);
  }
  const std::string dir = vm["ckpt-dir"].as<std::string>();

  // Rank 0 only; the others learn its exit status, or its error (a clean exit everywhere).
  int64_t status = 0;
  on_rank0<ConfigError, ConfigError>(world, "inspect", [&] {
    struct FlushStdout {  // the report so far reaches the terminal before the error line
      ~FlushStdout() { std::fflush(stdout); }
    } flush;
    status = inspect(dir, step, !vm.count("no-verify"));
  });
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(&status, 1)), 0);
  return static_cast<int>(status);
}

}  // namespace moerun
