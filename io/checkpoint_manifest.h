// The checkpoint manifest (the commit record of one step), the checkpoint directory layout, safe
// names and CRC32 slices (files are replaced with runtime/durable_file.h). No MPI here: every
// function is local.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/check.h"
#include "runtime/tensor.h"

namespace moerun::io {

// A checkpoint that cannot be written, found or trusted: a bad request, a damaged file, an edited
// manifest. It is a ConfigError (bad input, the same on every rank) so a job exits cleanly.
class CheckpointError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

inline constexpr const char* kCheckpointFormat = "moerun-checkpoint";
inline constexpr int kCheckpointVersion = 1;
inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kTensorFileName = "tensors.h5";
inline constexpr const char* kLatestName = "latest";

enum class TensorKind { kReplicated, kSharded };
const char* to_string(TensorKind kind);
// "f32", "i32", "i64" (the only dtypes a checkpoint stores); throws CheckpointError otherwise.
const char* checkpoint_dtype_name(DType dtype);
std::optional<DType> parse_checkpoint_dtype(std::string_view name);

struct ManifestFile {
  std::string path;  // relative to the step directory, one safe component
  int64_t bytes = 0;
};

struct ManifestTensor {
  std::string name;  // logical name; also the HDF5 dataset "/<name>" in `file`
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // global shape
  TensorKind kind = TensorKind::kReplicated;
  std::string file;    // one of Manifest::files
  uint32_t crc32 = 0;  // zlib CRC32 of the row-major little-endian bytes of the whole tensor
};

struct Manifest {
  int version = kCheckpointVersion;
  int64_t step = 0;
  int world_size = 0;  // of the job that wrote it (informational: loading works at any size)
  std::vector<ManifestFile> files;
  std::vector<ManifestTensor> tensors;
  nlohmann::json meta = nlohmann::json::object();
};

std::string manifest_to_json(const Manifest& m);
// Parses and validates everything a loader relies on: format, version, step, unique safe names,
// known dtypes, non-negative shapes, files listed and safe. `where` names the manifest in errors.
Manifest parse_manifest(std::string_view text, const std::string& where);

// A tensor name is stored as one HDF5 link name: non-empty, printable ASCII, no '/', not "." or
// "..". Dots are kept ("layers.0.moe.w1" is the dataset "/layers.0.moe.w1").
bool is_valid_tensor_name(std::string_view name);
// A file named by a manifest: one path component of [A-Za-z0-9._-], not "." or "..", so it
// cannot leave the step directory.
bool is_safe_file_name(std::string_view name);

// "step_<N>" (decimal, no sign) -> N.
std::string step_dir_name(int64_t step);
std::optional<int64_t> parse_step_dir_name(std::string_view name);
std::string step_dir(const std::string& ckpt_dir, int64_t step);

// What a checkpoint directory holds: committed steps (a parseable manifest for that step) in
// increasing order, and step directories without one (with the reason).
struct PartialStep {
  int64_t step = 0;
  std::string reason;
};
struct CheckpointScan {
  std::vector<int64_t> committed;
  std::vector<PartialStep> partial;
  std::optional<int64_t> latest_file;  // what CKPT_DIR/latest says, if it names a step
  // Why CKPT_DIR/latest names no step although it exists, e.g. "unreadable: it holds \"x7\"";
  // empty when it is absent or names a step.
  std::string latest_problem;
};
CheckpointScan scan_checkpoints(const std::string& ckpt_dir);
// What CKPT_DIR/latest says, for a report: "40", "absent" or the problem.
std::string describe_latest(const CheckpointScan& scan);

// Why `dir` cannot be resumed from, for a message after the option's name ("--resume DIR: ..."):
// "DIR does not exist", "DIR is not a directory", or "DIR holds no committed checkpoint" (with
// the uncommitted step directories and their reasons); std::nullopt when it holds a committed
// step. Local (no MPI): call it on one rank.
std::optional<std::string> checkpoint_dir_problem(const std::string& dir);
// Reads and parses step_<N>/manifest.json; CheckpointError naming the file otherwise.
Manifest read_manifest(const std::string& ckpt_dir, int64_t step);

// CRC32 of rows [begin, begin + count) of one tensor, as computed by the rank that wrote or read
// them. combine_crc_slices joins slices that tile [0, rows) exactly (in row order, with
// crc32_combine); it returns an error text on a gap or an overlap.
struct CrcSlice {
  int64_t begin = 0;
  int64_t count = 0;
  uint32_t crc = 0;
};
uint32_t crc32_bytes(const void* data, size_t bytes, uint32_t crc = 0);
struct CombinedCrc {
  uint32_t crc = 0;
  std::string error;  // empty when the slices tile the rows
};
CombinedCrc combine_crc_slices(std::vector<CrcSlice> slices, int64_t rows, int64_t row_bytes);

}  // namespace moerun::io
