// Tensor: a shaped, row-major, 64-byte-aligned buffer with a dtype and a device.
// Copies share storage (like a handle); clone() copies the data.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/check.h"

namespace moerun {

enum class DType { kF32, kBF16, kI32, kI64 };
enum class Device { kCpu, kCuda };

size_t dtype_size(DType dtype);
std::string to_string(DType dtype);
std::string to_string(Device device);

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kF32;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kI32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::kI64;
}

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised storage: callers fill every element (tests poison with fill(NaN)).
  static Tensor empty(std::vector<int64_t> shape, DType dtype = DType::kF32,
                      Device device = Device::kCpu);
  static Tensor zeros(std::vector<int64_t> shape, DType dtype = DType::kF32,
                      Device device = Device::kCpu);
  // A CPU copy of host values, e.g. token ids held in a std::vector.
  template <class T>
  static Tensor from_host(std::span<const T> values, std::vector<int64_t> shape);
  // Storage someone else allocated (a device allocator, a test's buffer labelled as a device):
  // the tensor keeps `storage` alive; nothing is copied.
  static Tensor wrap(std::shared_ptr<std::byte[]> storage, std::vector<int64_t> shape, DType dtype,
                     Device device);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const;
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool defined() const { return storage_ != nullptr; }
  std::string shape_str() const;

  // Host access: refuses device memory (a CUDA pointer dereferenced on the host is a crash at
  // best), so CPU code can never read a tensor that lives elsewhere.
  template <class T>
  T* data() {
    require_host();
    return device_data<T>();
  }
  template <class T>
  const T* data() const {
    require_host();
    return device_data<T>();
  }
  // The pointer on whatever device holds the storage: for backends and exchanges, never for
  // host loops.
  template <class T>
  T* device_data() {
    MOERUN_REQUIRE(dtype_ == dtype_of<T>(), "tensor holds {}, not the requested type",
                   to_string(dtype_));
    return reinterpret_cast<T*>(storage_.get());
  }
  template <class T>
  const T* device_data() const {
    MOERUN_REQUIRE(dtype_ == dtype_of<T>(), "tensor holds {}, not the requested type",
                   to_string(dtype_));
    return reinterpret_cast<const T*>(storage_.get());
  }
  // Untyped, on whatever device: for byte movers (exchanges, copies).
  void* raw_data() { return storage_.get(); }
  const void* raw_data() const { return storage_.get(); }
  float* f32() { return data<float>(); }
  const float* f32() const { return data<float>(); }
  template <class T>
  std::span<T> span() {
    return {data<T>(), static_cast<size_t>(numel_)};
  }
  template <class T>
  std::span<const T> span() const {
    return {data<T>(), static_cast<size_t>(numel_)};
  }
  // Pointer to row i of the outermost dimension (f32).
  float* row(int64_t i) { return f32() + i * row_stride(); }
  const float* row(int64_t i) const { return f32() + i * row_stride(); }
  int64_t row_stride() const { return shape_.empty() || shape_[0] == 0 ? 0 : numel_ / shape_[0]; }

  Tensor clone() const;
  void fill(float value);
  void zero();
  // Same storage, new shape with the same element count.
  Tensor reshape(std::vector<int64_t> shape) const;
  // Same storage: elements [offset, offset + numel(shape)) as a tensor of that shape (a row
  // range, or a parameter inside a flat buffer). Writes through the view reach this tensor.
  Tensor view(int64_t offset, std::vector<int64_t> shape) const;

 private:
  void require_host() const {
    MOERUN_REQUIRE(device_ == Device::kCpu, "host access to a {} tensor {}", to_string(device_),
                   shape_str());
  }

  std::shared_ptr<std::byte[]> storage_;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCpu;
};

template <class T>
Tensor Tensor::from_host(std::span<const T> values, std::vector<int64_t> shape) {
  Tensor t = empty(std::move(shape), dtype_of<T>());
  MOERUN_REQUIRE(static_cast<size_t>(t.numel()) == values.size(),
                 "{} values do not fill a tensor of shape {}", values.size(), t.shape_str());
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

// The one device all the defined tensors live on (an op's backend); throws when they disagree.
Device device_of(std::initializer_list<const Tensor*> tensors);

}  // namespace moerun
