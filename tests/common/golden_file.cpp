// Golden-file parsing with bounds checks; a short or foreign file is an error, never a crash.
#include "tests/common/golden_file.h"

#include <cstring>
#include <fstream>
#include <iterator>

namespace moerun::testing {

namespace {
class Cursor {
 public:
  Cursor(const std::vector<char>& b, const std::string& path) : b_(b), path_(path) {}
  template <class T>
  T get() {
    T v;
    MOERUN_REQUIRE(pos_ + sizeof(T) <= b_.size(), "golden file {} is truncated", path_);
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(size_t n) {
    MOERUN_REQUIRE(n <= b_.size() - pos_, "golden file {} is truncated", path_);
    std::string s(b_.data() + pos_, n);
    pos_ += n;
    return s;
  }

 private:
  const std::vector<char>& b_;
  const std::string& path_;
  size_t pos_ = 0;
};
}  // namespace

GoldenFile::GoldenFile(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  MOERUN_REQUIRE(in.good(), "cannot open golden file {}", path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Cursor c(bytes, path_);
  MOERUN_REQUIRE(c.str(8) == "MOERUNGD", "{} is not a moerun golden file (bad magic)", path);
  version_ = c.get<uint32_t>();
  MOERUN_REQUIRE(version_ == 1, "golden file {} has version {}, this reader knows 1", path,
                 version_);
  const uint32_t n = c.get<uint32_t>();
  for (uint32_t i = 0; i < n; ++i) {
    std::string name = c.str(c.get<uint32_t>());
    GoldenEntry e;
    e.dtype = c.get<uint32_t>();
    MOERUN_REQUIRE(e.dtype <= 3, "golden entry {} has unknown dtype {}", name, e.dtype);
    const uint32_t ndim = c.get<uint32_t>();
    MOERUN_REQUIRE(ndim <= 8, "golden entry {} has {} dims", name, ndim);
    int64_t numel = 1;
    for (uint32_t d = 0; d < ndim; ++d) {
      e.shape.push_back(c.get<int64_t>());
      MOERUN_REQUIRE(e.shape.back() >= 0 && e.shape.back() < (int64_t{1} << 32), "bad dim in {}",
                     name);
      numel *= e.shape.back();
    }
    MOERUN_REQUIRE(numel <= (int64_t{1} << 30), "golden entry {} too large", name);
    e.values.resize(static_cast<size_t>(numel));
    for (auto& v : e.values) {
      switch (e.dtype) {
        case 0:
          v = c.get<float>();
          break;
        case 1:
          v = c.get<double>();
          break;
        case 2:
          v = c.get<int32_t>();
          break;
        default:
          v = static_cast<double>(c.get<int64_t>());
          break;
      }
    }
    entries_[name] = std::move(e);
  }
}

const GoldenEntry& GoldenFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  MOERUN_REQUIRE(it != entries_.end(), "golden file {} has no entry '{}'", path_, name);
  return it->second;
}

Tensor GoldenFile::f32(const std::string& name) const {
  const GoldenEntry& e = entry(name);
  Tensor t = Tensor::empty(e.shape);
  for (size_t i = 0; i < e.values.size(); ++i) t.f32()[i] = static_cast<float>(e.values[i]);
  return t;
}

Tensor GoldenFile::i32(const std::string& name) const {
  const GoldenEntry& e = entry(name);
  Tensor t = Tensor::empty(e.shape, DType::kI32);
  for (size_t i = 0; i < e.values.size(); ++i)
    t.data<int32_t>()[i] = static_cast<int32_t>(e.values[i]);
  return t;
}

int64_t GoldenFile::i64(const std::string& name) const {
  const GoldenEntry& e = entry(name);
  MOERUN_REQUIRE(e.values.size() == 1, "golden entry {} is not a scalar", name);
  return static_cast<int64_t>(e.values[0]);
}

double GoldenFile::f64(const std::string& name) const {
  const GoldenEntry& e = entry(name);
  MOERUN_REQUIRE(e.values.size() == 1, "golden entry {} is not a scalar", name);
  return e.values[0];
}

std::string golden_path(const std::string& file) {
  return std::string(MOERUN_SOURCE_DIR) + "/tests/golden/" + file;
}

}  // namespace moerun::testing
