// One-process, one-tensor-at-a-time access to checkpoints, for tools (moerun convert) that must
// not hold a whole model in memory. Serial HDF5 (the default file driver), no MPI.
//
// CheckpointWriter produces exactly the layout and commit protocol of save_checkpoint
// (checkpoint.h): step_<N>/tensors.h5 with one dataset per tensor at "/<name>" at its global
// shape (attributes name, dtype, kind; file attributes format, version, step, world_size = 1),
// then manifest.json (CRC32 of each whole tensor) written and renamed durably, then `latest`.
// So load_checkpoint (parallel, any layout), latest_step and verify_checkpoint accept it.
// CheckpointReader reads one whole tensor at a time and verifies its CRC32 against the manifest.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/checkpoint_manifest.h"
#include "runtime/tensor.h"

namespace moerun::io {

class CheckpointReader {
 public:
  // Reads and validates step_<N>/manifest.json and checks the file sizes it lists; opens the
  // tensor files read-only. CheckpointError naming the file otherwise.
  static CheckpointReader open(const std::string& ckpt_dir, int64_t step);
  CheckpointReader(CheckpointReader&&) noexcept;
  CheckpointReader& operator=(CheckpointReader&&) noexcept;
  ~CheckpointReader();

  const Manifest& manifest() const { return manifest_; }
  // The manifest entry, or nullptr when the checkpoint has no such tensor.
  const ManifestTensor* find(const std::string& name) const;
  // The whole tensor (CPU, its checkpoint dtype), CRC32-verified against the manifest. A
  // CheckpointError names the dataset and the file on a missing name, a shape or type that
  // disagrees with the manifest, or a checksum mismatch.
  Tensor read(const std::string& name) const;

 private:
  struct Files;
  CheckpointReader() = default;
  std::string dir_;  // the step directory
  Manifest manifest_;
  std::map<std::string, size_t> index_;  // tensor name -> manifest_.tensors index
  std::unique_ptr<Files> files_;
};

// What CheckpointWriter is told about a tensor up front.
struct CheckpointTensorSpec {
  std::string name;  // valid per is_valid_tensor_name, unique
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // global shape, at least 1-D
  TensorKind kind = TensorKind::kReplicated;
};

class CheckpointWriter {
 public:
  // Refuses (CheckpointError) a committed step_<N> and invalid or repeated specs; a partial
  // step_<N> (no manifest) is replaced. Creates step_<N>/tensors.h5.
  CheckpointWriter(std::string ckpt_dir, int64_t step, std::vector<CheckpointTensorSpec> specs);
  ~CheckpointWriter();  // an uncommitted writer closes its file and leaves a partial step
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // The whole tensor, once, in any order; its shape and dtype must match the spec.
  void write(const std::string& name, const Tensor& t);
  // Every tensor must have been written. Closes the file, fsyncs it, writes manifest.json (the
  // commit point) and `latest` durably, as save_checkpoint does (no retention).
  void commit(const nlohmann::json& meta);

  int64_t bytes_written() const { return bytes_; }

 private:
  struct File;
  std::string path() const;  // step_<N>/tensors.h5
  // Runs f; a failure becomes "checkpoint step N: writing PATH failed: CAUSE".
  template <class F>
  void writing(F&& f);
  std::string ckpt_dir_, dir_;
  int64_t step_ = 0;
  std::vector<CheckpointTensorSpec> specs_;
  std::map<std::string, size_t> index_;
  std::vector<bool> written_;
  std::vector<uint32_t> crc_;
  std::unique_ptr<File> file_;
  int64_t bytes_ = 0;
  bool committed_ = false;
};

}  // namespace moerun::io
