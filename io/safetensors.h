// safetensors: a bounds-checked streaming reader, a streaming writer, the sharded-model index
// (model.safetensors.index.json) with a shard planner (the bf16/f16 <-> f32 conversions
// it uses live in runtime/half.h).
//
// Format (notes/algorithms.md section 9): 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}
// (offsets relative to the data section that follows the header), then raw little-endian
// row-major data. The reader never trusts the file: the header size is capped, every field is
// type-checked, every tensor's byte range must lie in the data section, must not overlap another
// and must equal numel * dtype size (overflow-checked); names must be unique (a JSON object with
// a duplicate key is refused, not silently collapsed). Gaps between tensors are allowed. Every
// error is a moerun::Error naming the file and the tensor or field.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moerun::io {

inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;  // bytes, as the reference reader

// Bytes per element of a safetensors dtype ("F32", "BF16", "F16", "F64", "I64", "I32", "I16",
// "I8", "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3", "F8_E5M2"); 0 when the dtype is unknown.
size_t safetensors_dtype_size(std::string_view dtype);

// A tensor as the writer is told about it (and as the shard planner sees it).
struct SafetensorsSpec {
  std::string name;
  std::string dtype;           // a known safetensors dtype
  std::vector<int64_t> shape;  // dims >= 0; {} is a scalar (one element)
};

// A tensor as the reader found it.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte range [begin, end) relative to the data section
  uint64_t end = 0;
  uint64_t numel = 0;
  uint64_t nbytes() const { return end - begin; }
};

// Element count and byte size of a spec; Error (naming `what`) on a negative dim, an unknown dtype
// or a product that overflows uint64.
uint64_t safetensors_numel(std::span<const int64_t> shape, const std::string& what);
uint64_t safetensors_nbytes(const SafetensorsSpec& spec, const std::string& what);

class SafetensorsFile {
 public:
  // Opens and validates the header; tensor data is read on demand with pread.
  static SafetensorsFile open(const std::string& path);
  // The same validation on bytes in memory (tests, fuzzing); `label` names it in errors.
  static SafetensorsFile from_memory(std::vector<std::byte> bytes,
                                     const std::string& label = "<memory>");

  const std::string& path() const { return path_; }
  // In data order (ascending begin).
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // Error naming the file when absent.
  const SafetensorsEntry& entry(const std::string& name) const;
  // "__metadata__" (an object of string values), or an empty object.
  const nlohmann::json& metadata() const { return metadata_; }
  uint64_t data_offset() const { return 8 + header_len_; }  // file offset of the data section

  // Raw bytes; out.size() must equal the tensor's nbytes.
  void read(const std::string& name, std::span<std::byte> out) const;
  // F32, BF16 or F16 converted to f32 (in chunks: no second full-size buffer).
  std::vector<float> read_f32(const std::string& name) const;
  void read_f32(const std::string& name, std::span<float> out) const;

 private:
  struct Source;
  SafetensorsFile() = default;
  void parse(uint64_t total_size);
  void read_at(uint64_t offset, std::span<std::byte> out, const std::string& what) const;

  std::string path_;
  std::shared_ptr<const Source> src_;
  uint64_t header_len_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

// Streaming writer: the header is computed up front from the specs (data in spec order, the JSON
// header padded with spaces to a multiple of 8 bytes), each tensor is written once, in any order,
// at its place (peak memory = one tensor). Writes PATH.tmp; finish() checks every tensor was
// written, fsyncs, renames to PATH and fsyncs the directory. Destroying an unfinished writer
// removes PATH.tmp. Errors (unknown or repeated name, wrong size, missing tensor, I/O) name the
// file and the tensor.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string path, std::vector<SafetensorsSpec> specs,
                    const nlohmann::json& metadata = nlohmann::json::object());
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  void write(const std::string& name, std::span<const std::byte> data);
  // f32 values converted to the spec's dtype (F32, BF16 round-to-nearest-even, F16) in chunks.
  void write_f32(const std::string& name, std::span<const float> values);
  void finish();

  uint64_t file_size() const { return data_offset_ + data_size_; }

 private:
  size_t find(const std::string& name) const;
  void pwrite_all(uint64_t offset, std::span<const std::byte> data, const std::string& what);

  std::string path_, tmp_path_;
  std::vector<SafetensorsSpec> specs_;
  std::vector<uint64_t> begin_, size_;
  std::vector<bool> written_;
  std::unordered_map<std::string, size_t> index_;
  uint64_t data_offset_ = 0, data_size_ = 0;
  int fd_ = -1;
  bool finished_ = false;
};

// model.safetensors.index.json: {"metadata": {"total_size": N, ...}, "weight_map": {tensor: file}}.
struct SafetensorsIndex {
  uint64_t total_size = 0;                             // sum of tensor bytes over all shards
  std::map<std::string, std::string> weight_map;       // tensor -> shard file name (no directory)
  nlohmann::json metadata = nlohmann::json::object();  // extra metadata keys, kept on a round trip
};
inline constexpr const char* kSafetensorsIndexName = "model.safetensors.index.json";
inline constexpr const char* kSafetensorsSingleName = "model.safetensors";

// Atomic (PATH.tmp, fsync, rename).
void write_safetensors_index(const std::string& path, const SafetensorsIndex& index);
// Validates types, that file names are plain names (no '/', not "." or ".."), total_size integral.
SafetensorsIndex read_safetensors_index(const std::string& path);

// Tensors in order, greedily packed into shards of at most max_shard_bytes of tensor data (a
// tensor larger than that gets a shard of its own). Files are "model-00001-of-0000N.safetensors";
// a single shard is named "model.safetensors" (as HF does; then no index file is needed).
struct SafetensorsShardPlan {
  std::vector<std::string> files;
  std::vector<std::vector<SafetensorsSpec>> shards;  // shards[i] goes to files[i]
  SafetensorsIndex index;
};
SafetensorsShardPlan plan_safetensors_shards(std::span<const SafetensorsSpec> tensors,
                                             uint64_t max_shard_bytes);

// A model directory: model.safetensors.index.json and its shards, or a lone model.safetensors.
// Opens every shard; checks that each tensor in the weight_map is in its shard file and that no
// tensor appears in two shards.
class SafetensorsDir {
 public:
  static SafetensorsDir open(const std::string& dir);
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const { return file_of(name).entry(name); }

 private:
  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;
};

}  // namespace moerun::io
