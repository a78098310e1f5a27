// `moerun convert` in pieces: convert_job.cpp (options, --reshard, --check-loss and what the
// modes share), convert_export.cpp (--to hf), convert_import.cpp (--from hf).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace moerun::convert {

void say(const std::string& text);
std::string mb(double bytes);
// The newest committed step, or --step when given (it must be committed).
int64_t pick_step(const std::string& ckpt_dir, int64_t step);

struct ToHfOptions {
  std::string ckpt_dir, out_dir;
  int64_t step = -1;
  std::string dtype = "bf16";
  double max_shard_gb = 5;
  bool force = false;
  std::string hf_model_type;  // --hf-model-type; MLA: "" (= deepseek_v3) | deepseek_v2
};

int convert_to_hf(const ToHfOptions& o);

struct FromHfOptions {
  std::string hf_dir, ckpt_dir;
  int64_t step = 0;
  bool force = false;
};

int convert_from_hf(const FromHfOptions& o);

// A new checkpoint written into a directory that holds another would sit beside its steps, and
// `moerun train --resume` resumes from the newest committed step, which may be an old one. So the
// target must be empty (or new), or --force replaces the checkpoint there: its step directories,
// `latest` and model.ini are removed before the new step is written (other files are kept).
struct CheckpointTarget {
  std::string dir, name;  // name: how the usage line calls it (CKPT_DIR, OUT_DIR)
  std::vector<std::filesystem::path> checkpoint_entries, other_entries;
  std::string holds;  // what it holds, in words ("" when empty or new)
};

CheckpointTarget inspect_target(const std::string& dir, const char* name);
// Before reading the input: refuses a non-empty target without --force.
void check_target(const CheckpointTarget& t, bool force);
// After the input was read and checked (so a failed conversion never deletes anything): with
// --force, removes the old checkpoint and says what it replaced.
void clear_target(const CheckpointTarget& t);

}  // namespace moerun::convert
