// Reader for golden files written by tests/golden/*.py (PyTorch references).
// Format (little-endian): "MOERUNGD" | u32 version (=1) | u32 n_entries | entries, each:
//   u32 name_len | name | u32 dtype (0 f32, 1 f64, 2 i32, 3 i64) | u32 ndim | i64 dims[ndim] | data
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace moerun::testing {

struct GoldenEntry {
  uint32_t dtype = 0;
  std::vector<int64_t> shape;
  std::vector<double> values;  // every dtype widened to double
};

class GoldenFile {
 public:
  explicit GoldenFile(const std::string& path);  // throws moerun::Error naming the file
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const GoldenEntry& entry(const std::string& name) const;
  Tensor f32(const std::string& name) const;  // shape as stored
  Tensor i32(const std::string& name) const;
  int64_t i64(const std::string& name) const;  // a scalar
  double f64(const std::string& name) const;   // a scalar
  uint32_t version() const { return version_; }

 private:
  std::string path_;
  uint32_t version_ = 0;
  std::map<std::string, GoldenEntry> entries_;
};

std::string golden_path(const std::string& file);  // MOERUN_SOURCE_DIR/tests/golden/<file>

}  // namespace moerun::testing
