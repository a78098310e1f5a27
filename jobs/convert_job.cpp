// `moerun convert`: moerun checkpoints <-> HuggingFace DeepSeek safetensors, and a verified
// streaming copy of a checkpoint (--reshard). One process does the work (world rank 0, serial
// HDF5, one tensor in memory at a time); other ranks wait and share the exit status.
//
//   --to hf CKPT_DIR OUT_DIR     config.json + sharded safetensors + model.safetensors.index.json
//                                (convert_export.cpp)
//   --from hf HF_DIR CKPT_DIR    a moerun checkpoint `moerun train --resume` starts from
//                                (convert_import.cpp)
//   --reshard CKPT_DIR OUT_DIR   a CRC-verified copy (optionally without optimizer state)
//   --check-loss TOKENS CKPT_DIR the model's mean next-token cross-entropy on a token sequence
//                                (and its logits with --logits-out), compared with transformers
#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "comm/agree.h"
#include "comm/comm.h"
#include "io/checkpoint_manifest.h"
#include "io/checkpoint_stream.h"
#include "jobs/checkpoint_schema.h"
#include "jobs/convert_common.h"
#include "jobs/jobs.h"
#include "layers/model.h"
#include "layers/moe_config.h"
#include "layers/optimizer.h"
#include "runtime/check.h"
#include "runtime/durable_file.h"
#include "runtime/log.h"
#include "runtime/timer.h"

namespace moerun {

namespace po = boost::program_options;
namespace fs = std::filesystem;
using nlohmann::json;

namespace convert {

void say(const std::string& text) {
  log::info("moerun convert: {}", text);
}

std::string mb(double bytes) {
  return fmt::format("{:.1f} MB", bytes / 1e6);
}

// The newest committed step, or --step when given (it must be committed).
int64_t pick_step(const std::string& ckpt_dir, int64_t step) {
  MOERUN_CONFIG_REQUIRE(fs::is_directory(ckpt_dir), "checkpoint directory {} does not exist",
                        ckpt_dir);
  const io::CheckpointScan scan = io::scan_checkpoints(ckpt_dir);
  if (step >= 0) {
    MOERUN_CONFIG_REQUIRE(
        std::find(scan.committed.begin(), scan.committed.end(), step) != scan.committed.end(),
        "--step {}: {} has no committed step {} (committed: {})", step, ckpt_dir, step,
        scan.committed.empty() ? std::string("none")
                               : fmt::format("{}", fmt::join(scan.committed, ", ")));
    return step;
  }
  MOERUN_CONFIG_REQUIRE(!scan.committed.empty(), "{} holds no committed checkpoint", ckpt_dir);
  return scan.committed.back();
}

// ---- a new checkpoint directory (--from hf, --reshard) ---------------------------------------

CheckpointTarget inspect_target(const std::string& dir, const char* name) {
  CheckpointTarget t{dir, name, {}, {}, {}};
  std::error_code ec;
  if (!fs::exists(dir, ec)) return t;
  MOERUN_CONFIG_REQUIRE(fs::is_directory(dir, ec), "{} {} exists and is not a directory", name,
                        dir);
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    const bool ours = (io::parse_step_dir_name(n) && e.is_directory(ec)) || n == io::kLatestName ||
                      n == std::string(io::kLatestName) + ".tmp" || n == "model.ini" ||
                      n == "model.ini.tmp";
    (ours ? t.checkpoint_entries : t.other_entries).push_back(e.path());
  }
  std::sort(t.checkpoint_entries.begin(), t.checkpoint_entries.end());
  std::sort(t.other_entries.begin(), t.other_entries.end());
  if (t.checkpoint_entries.empty() && t.other_entries.empty()) return t;
  const io::CheckpointScan scan = io::scan_checkpoints(dir);
  std::vector<std::string> parts;
  if (!scan.committed.empty())
    parts.push_back(fmt::format("committed step{} {}", scan.committed.size() == 1 ? "" : "s",
                                fmt::join(scan.committed, ", ")));
  if (!scan.partial.empty())
    parts.push_back(fmt::format("{} uncommitted step director{}", scan.partial.size(),
                                scan.partial.size() == 1 ? "y" : "ies"));
  const std::string latest = io::describe_latest(scan);
  if (latest != "absent") parts.push_back("latest " + latest);
  if (fs::exists(fs::path(dir) / "model.ini")) parts.push_back("model.ini");
  if (!t.other_entries.empty())
    parts.push_back(fmt::format("{} other entr{}", t.other_entries.size(),
                                t.other_entries.size() == 1 ? "y" : "ies"));
  if (parts.empty())  // only leftovers such as latest.tmp
    parts.push_back(fmt::format("{} leftover entr{} of a checkpoint", t.checkpoint_entries.size(),
                                t.checkpoint_entries.size() == 1 ? "y" : "ies"));
  t.holds = fmt::format("{}", fmt::join(parts, ", "));
  return t;
}

void check_target(const CheckpointTarget& t, bool force) {
  if (t.holds.empty() || force) return;
  throw ConfigError(fmt::format(
      "{} {} is not empty (it holds {}): a new checkpoint would sit beside it and `moerun train "
      "--resume` would pick the newest committed step, which may be an old one; choose an empty "
      "directory, or pass --force to replace the checkpoint there",
      t.name, t.dir, t.holds));
}

void clear_target(const CheckpointTarget& t) {
  if (t.holds.empty()) return;
  if (t.checkpoint_entries.empty()) {
    say(fmt::format("--force: {} holds no checkpoint ({}); writing beside its files", t.dir,
                    t.holds));
    return;
  }
  say(fmt::format("--force: replacing the checkpoint in {} ({}){}", t.dir, t.holds,
                  t.other_entries.empty() ? "" : "; other files are kept"));
  for (const fs::path& p : t.checkpoint_entries) {
    std::error_code ec;
    fs::remove_all(p, ec);
    MOERUN_CONFIG_REQUIRE(!ec, "--force: cannot remove {}: {}", p.string(), ec.message());
  }
  fsync_path(t.dir);
}

}  // namespace convert

namespace {

using namespace convert;

// ---- --reshard -------------------------------------------------------------------------------

int convert_reshard(const std::string& ckpt_dir, const std::string& out_dir, int64_t step_opt,
                    bool drop_optimizer, bool force) {
  const int64_t step = pick_step(ckpt_dir, step_opt);
  say("moerun checkpoints are layout-independent: every tensor is stored at its global shape "
      "and load_checkpoint reads any rank count / EP size, so resharding is a verified "
      "streaming copy (each tensor's CRC32 checked on read and recomputed on write)");
  MOERUN_CONFIG_REQUIRE(fs::weakly_canonical(ckpt_dir) != fs::weakly_canonical(out_dir),
                        "OUT_DIR must differ from CKPT_DIR");
  const CheckpointTarget target = inspect_target(out_dir, "OUT_DIR");
  check_target(target, force);
  io::CheckpointReader reader = io::CheckpointReader::open(ckpt_dir, step);
  std::vector<io::CheckpointTensorSpec> specs;
  for (const io::ManifestTensor& e : reader.manifest().tensors) {
    if (drop_optimizer && is_optimizer_state(e.name)) continue;
    specs.push_back({e.name, e.dtype, e.shape, e.kind});
  }
  clear_target(target);
  io::CheckpointWriter writer(out_dir, step, specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    writer.write(specs[i].name, reader.read(specs[i].name));
    log::info("moerun convert: [{}/{}] {}", i + 1, specs.size(), specs[i].name);
  }
  json meta = reader.manifest().meta;
  if (drop_optimizer) meta["weights_only"] = true;
  writer.commit(meta);
  say(fmt::format("copied {} step {} -> {} ({} tensors, {}{})", ckpt_dir, step, out_dir,
                  specs.size(), mb(static_cast<double>(writer.bytes_written())),
                  drop_optimizer ? "; without optimizer state: a weights-only checkpoint, which "
                                   "`moerun train --resume` refuses (it needs the AdamW moments)"
                                 : ""));
  return 0;
}

// ---- --check-loss ----------------------------------------------------------------------------

// logits (rows, V) float32 as a NumPy .npy file (format 1.0, little-endian, C order).
void write_npy(const std::string& path, const std::vector<float>& data, int64_t rows,
               int64_t cols) {
  std::string header =
      fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", rows, cols);
  const size_t unpadded = 10 + header.size() + 1;  // magic(6) version(2) len(2) header '\n'
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
  write_file_atomic(path, out);
}

int check_loss(const std::string& tokens_file, const std::string& ckpt_dir, int64_t step_opt,
               const std::string& logits_out, const Comm& self) {
  std::ifstream in(tokens_file);
  MOERUN_CONFIG_REQUIRE(in.good(), "--check-loss {}: cannot read the file", tokens_file);
  std::vector<int32_t> ids;
  for (long long v; in >> v;) ids.push_back(static_cast<int32_t>(v));
  MOERUN_CONFIG_REQUIRE(ids.size() >= 2, "--check-loss {}: needs at least 2 token ids",
                        tokens_file);
  const int64_t step = pick_step(ckpt_dir, step_opt);
  io::CheckpointReader reader = io::CheckpointReader::open(ckpt_dir, step);
  ModelConfig mc = model_from_meta(reader.manifest().meta, io::step_dir(ckpt_dir, step));
  mc.seq_len = static_cast<int64_t>(ids.size()) - 1;
  for (int32_t id : ids)
    MOERUN_CONFIG_REQUIRE(id >= 0 && id < mc.vocab, "--check-loss: token {} is outside [0, {})", id,
                          mc.vocab);
  Model model(mc, self);
  for (const NamedParam& p : model.params()) {
    const Tensor x = reader.read(p.name);
    MOERUN_CONFIG_REQUIRE(x.shape() == p.value->shape(), "\"{}\" is {}, the model needs {}", p.name,
                          x.shape_str(), p.value->shape_str());
    std::copy(x.f32(), x.f32() + x.numel(), p.value->f32());
  }
  const std::vector<MoELayer*> moe = model.moe_layers();
  for (size_t l = 0; l < moe.size(); ++l) {
    const Tensor b = reader.read(router_bias_name(mc.first_k_dense + static_cast<int64_t>(l)));
    std::copy(b.f32(), b.f32() + b.numel(), moe[l]->params().bias.f32());
  }
  const std::span<const int32_t> all(ids);
  double loss = model.forward(Tensor::from_host(all.first(ids.size() - 1), {1, mc.seq_len}),
                              Tensor::from_host(all.subspan(1), {1, mc.seq_len}));
  for (MoELayer* l : moe) loss -= l->stats().aux_loss;  // the cross-entropy alone
  if (!logits_out.empty()) {
    // logits = final_hidden (T, H) x lm_head (V, H)^T, accumulated in double.
    const Tensor& xf = model.final_hidden();
    const Tensor& head = model.lm_head();
    const int64_t T = mc.seq_len, V = mc.vocab, H = mc.hidden;
    MOERUN_REQUIRE(xf.numel() == T * H && head.numel() == V * H, "unexpected logits shapes");
    std::vector<float> logits(static_cast<size_t>(T * V));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t v = 0; v < V; ++v) {
        double acc = 0;
        for (int64_t h = 0; h < H; ++h)
          acc += static_cast<double>(xf.f32()[t * H + h]) * head.f32()[v * H + h];
        logits[static_cast<size_t>(t * V + v)] = static_cast<float>(acc);
      }
    write_npy(logits_out, logits, T, V);
  }
  std::printf("%.9g\n", loss);
  return 0;
}

}  // namespace

int run_convert(int argc, char** argv) {
  const Comm world = Comm::world();
  const bool root = world.rank() == 0;
  po::options_description desc(
      "moerun convert: moerun checkpoints <-> HuggingFace DeepSeek safetensors, one tensor in\n"
      "memory at a time (world rank 0 does the work)\n"
      "  moerun convert --to hf CKPT_DIR OUT_DIR [--step N] [--dtype bf16|f32] "
      "[--max-shard-gb 5]\n"
      "  moerun convert --from hf HF_DIR CKPT_DIR [--step 0] [--force]\n"
      "  moerun convert --reshard CKPT_DIR OUT_DIR [--step N] [--drop-optimizer] [--force]\n"
      "  moerun convert --check-loss TOKENS_FILE CKPT_DIR [--step N] [--logits-out FILE.npy]");
  auto add = desc.add_options();
  add("help,h", "show this help");
  add("to", po::value<std::string>(),
      "export a moerun checkpoint to FORMAT (hf: config.json, sharded safetensors and "
      "model.safetensors.index.json; parameters only, no optimizer state)");
  add("from", po::value<std::string>(),
      "import FORMAT (hf: a DeepSeek-layout safetensors directory with config.json) into a "
      "moerun checkpoint with zero AdamW moments, which `moerun train --resume` starts from");
  add("reshard",
      "copy a checkpoint to OUT_DIR, verifying every tensor (checkpoints are layout-independent, "
      "so no data moves between shards)");
  add("check-loss", po::value<std::string>(),
      "print the mean next-token cross-entropy of the checkpoint's model on the whitespace-"
      "separated token ids in this file (one sequence; for comparing with an HF export)");
  add("step", po::value<int64_t>(),
      "the checkpoint step to read (default: the newest committed one); with --from: the step "
      "to write (default 0)");
  add("dtype", po::value<std::string>()->default_value("bf16"),
      "--to hf: safetensors dtype of the weights, bf16|f32 (the router bias stays f32)");
  add("max-shard-gb", po::value<double>()->default_value(5, "5"),
      "--to hf: largest safetensors shard in GB (10^9 bytes) of tensor data");
  add("force",
      "--to hf: write into a non-empty OUT_DIR (replacing an earlier export there); --from hf, "
      "--reshard: replace the checkpoint in a non-empty CKPT_DIR / OUT_DIR (its steps, latest "
      "and model.ini are removed first, so that --resume finds the new one)");
  add("hf-model-type", po::value<std::string>(),
      "--to hf with --attention mla: the config.json layout, deepseek_v3 (default; sigmoid "
      "routing with the score-correction bias) or deepseek_v2 (softmax routing, no bias); both "
      "load in transformers >= 5 without remote code. MHA models are written as deepseek (V1)");
  add("logits-out", po::value<std::string>(),
      "--check-loss: also write the logits of the N-1 input positions as a float32 NumPy .npy "
      "file of shape (N-1, vocab) (row t: the prediction of token t+1)");
  add("drop-optimizer", "--reshard: leave out the optimizer state (a weights-only checkpoint)");
  add("paths", po::value<std::vector<std::string>>()->composing(), "the two directories");
  po::positional_options_description pos;
  pos.add("paths", -1);

  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (root) std::cout << desc << "\n";
    return 0;
  }
  const int modes = static_cast<int>(vm.count("to") + vm.count("from") + vm.count("reshard") +
                                     vm.count("check-loss"));
  MOERUN_CONFIG_REQUIRE(modes == 1,
                        "give exactly one of --to hf, --from hf, --reshard, "
                        "--check-loss (see --help)");
  const std::vector<std::string> paths =
      vm.count("paths") ? vm["paths"].as<std::vector<std::string>>() : std::vector<std::string>();
  const size_t want = vm.count("check-loss") ? 1 : 2;
  MOERUN_CONFIG_REQUIRE(paths.size() == want, "expected {} director{} after the options, got {}",
                        want, want == 1 ? "y" : "ies", paths.size());
  for (const char* f : {"to", "from"})
    if (vm.count(f))
      MOERUN_CONFIG_REQUIRE(vm[f].as<std::string>() == "hf", "--{} {}: only hf is supported", f,
                            vm[f].as<std::string>());
  const std::string dtype = vm["dtype"].as<std::string>();
  MOERUN_CONFIG_REQUIRE(dtype == "bf16" || dtype == "f32", "--dtype must be bf16 or f32 (got {})",
                        dtype);
  if (vm.count("hf-model-type")) {
    const std::string t = vm["hf-model-type"].as<std::string>();
    MOERUN_CONFIG_REQUIRE(vm.count("to") && (t == "deepseek_v3" || t == "deepseek_v2"),
                          "--hf-model-type {}: only with --to hf, deepseek_v3 or deepseek_v2", t);
  }
  MOERUN_CONFIG_REQUIRE(!vm.count("logits-out") || vm.count("check-loss"),
                        "--logits-out needs --check-loss");
  const int64_t step = vm.count("step") ? vm["step"].as<int64_t>() : -1;
  MOERUN_CONFIG_REQUIRE(!vm.count("step") || step >= 0, "--step must be >= 0 (got {})", step);

  // Rank 0 works; the others learn whether it succeeded (any failure: a clean exit everywhere).
  const Comm self = world.split(world.rank(), 0);  // --check-loss: a one-rank model
  on_rank0<ConfigError, ConfigError>(world, "convert", [&] {
    if (vm.count("to")) {
      convert::ToHfOptions o;
      o.ckpt_dir = paths[0];
      o.out_dir = paths[1];
      o.step = step;
      o.dtype = dtype;
      o.max_shard_gb = vm["max-shard-gb"].as<double>();
      o.force = vm.count("force") > 0;
      if (vm.count("hf-model-type")) o.hf_model_type = vm["hf-model-type"].as<std::string>();
      convert::convert_to_hf(o);
    } else if (vm.count("from")) {
      convert::convert_from_hf({paths[0], paths[1], step < 0 ? 0 : step, vm.count("force") > 0});
    } else if (vm.count("reshard")) {
      convert_reshard(paths[0], paths[1], step, vm.count("drop-optimizer") > 0,
                      vm.count("force") > 0);
    } else {
      check_loss(vm["check-loss"].as<std::string>(), paths[0], step,
                 vm.count("logits-out") ? vm["logits-out"].as<std::string>() : std::string(), self);
    }
  });
  return 0;
}

}  // namespace moerun