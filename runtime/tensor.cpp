// Tensor storage and shape bookkeeping (CPU; the CUDA backend adds device allocation).
#include "runtime/tensor.h"

#include "runtime/host_allocator.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace moerun {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

std::string to_string(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
  }
  return "?";
}

std::string to_string(Device device) {
  switch (device) {
    case Device::kCpu:
      return "cpu";
    case Device::kCuda:
      return "cuda";
  }
  return "?";
}

namespace {
int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    MOERUN_REQUIRE(d >= 0, "negative tensor dimension {}", d);
    MOERUN_REQUIRE(d == 0 || n <= std::numeric_limits<int64_t>::max() / d,
                   "tensor size overflows int64");
    n *= d;
  }
  return n;
}
}  // namespace

Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype, Device device) {
  MOERUN_REQUIRE(device == Device::kCpu, "this build allocates CPU tensors only");
  Tensor t;
  t.numel_ = checked_numel(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  const size_t bytes = t.nbytes();
  void* p = HostAllocator::allocate(bytes);
  t.storage_ = std::shared_ptr<std::byte[]>(
      static_cast<std::byte*>(p), [bytes](std::byte* q) { HostAllocator::deallocate(q, bytes); });
  return t;
}

Tensor Tensor::zeros(std::vector<int64_t> shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero();
  return t;
}

Tensor Tensor::wrap(std::shared_ptr<std::byte[]> storage, std::vector<int64_t> shape, DType dtype,
                    Device device) {
  Tensor t;
  t.numel_ = checked_numel(shape);
  MOERUN_REQUIRE(storage != nullptr || t.numel_ == 0, "wrap needs storage for {} elements",
                 t.numel_);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::move(storage);
  return t;
}

Device device_of(std::initializer_list<const Tensor*> tensors) {
  bool any = false;
  Device d = Device::kCpu;
  for (const Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) continue;
    MOERUN_REQUIRE(!any || t->device() == d, "tensors on {} and {} in one op", to_string(d),
                   to_string(t->device()));
    d = t->device();
    any = true;
  }
  return d;
}

int64_t Tensor::dim(int i) const {
  MOERUN_REQUIRE(i >= 0 && i < ndim(), "dimension {} out of range for shape {}", i, shape_str());
  return shape_[static_cast<size_t>(i)];
}

std::string Tensor::shape_str() const {
  std::string s = "(";
  for (size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
  return s + ")";
}

Tensor Tensor::clone() const {
  require_host();
  Tensor t = empty(shape_, dtype_, device_);
  if (nbytes() > 0) std::memcpy(t.storage_.get(), storage_.get(), nbytes());
  return t;
}

void Tensor::fill(float value) {
  float* p = f32();
  for (int64_t i = 0; i < numel_; ++i) p[i] = value;
}

void Tensor::zero() {
  require_host();
  if (nbytes() > 0) std::memset(storage_.get(), 0, nbytes());
}

Tensor Tensor::reshape(std::vector<int64_t> shape) const {
  MOERUN_REQUIRE(checked_numel(shape) == numel_, "cannot reshape {} elements", numel_);
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::view(int64_t offset, std::vector<int64_t> shape) const {
  const int64_t n = checked_numel(shape);
  MOERUN_REQUIRE(offset >= 0 && offset <= numel_ && n <= numel_ - offset,
                 "view of {} elements at {} is outside a tensor of {}", n, offset, numel_);
  Tensor t = *this;
  // Aliasing constructor: shares ownership of the whole buffer, points at the slice.
  t.storage_ = std::shared_ptr<std::byte[]>(
      storage_, storage_.get() + static_cast<size_t>(offset) * dtype_size(dtype_));
  t.shape_ = std::move(shape);
  t.numel_ = n;
  return t;
}

}  // namespace moerun
