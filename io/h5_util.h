// Small HDF5 helpers shared by io/: an owning id, attributes (strings, string lists, integers)
// and 1-D dataset slices. Every failure throws through H5_CHECK.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/h5_check.h"

namespace moerun::io {

// Owns one HDF5 id of any kind (file, group, dataset, space, type, attribute, plist). Closing by
// reference count works for every kind, so one class covers them all.
class H5Id {
 public:
  H5Id() = default;
  explicit H5Id(hid_t id) : id_(id) {}
  ~H5Id() { reset(); }
  H5Id(H5Id&& other) noexcept : id_(other.release()) {}
  H5Id& operator=(H5Id&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = other.release();
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;

  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }  // NOLINT: passes straight into the C API
  bool valid() const { return id_ >= 0; }
  hid_t release() {
    hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }
  // Errors on close are ignored here (destructors must not throw); a writer that must know its
  // data reached the disk closes the file explicitly with H5_CHECK(H5Fclose(...)).
  void reset() {
    if (id_ >= 0) H5Idec_ref(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

template <class T>
hid_t h5_native_type();
template <>
inline hid_t h5_native_type<int32_t>() {
  return H5T_NATIVE_INT32;
}
template <>
inline hid_t h5_native_type<int64_t>() {
  return H5T_NATIVE_INT64;
}

// True if every component of an absolute path like "/train/tokens" exists under loc.
bool h5_path_exists(hid_t loc, const std::string& path);

void h5_write_attr(hid_t obj, const char* name, const std::string& value);
void h5_write_attr(hid_t obj, const char* name, int64_t value);
void h5_write_attr(hid_t obj, const char* name, const std::vector<std::string>& values);
// std::nullopt when the attribute is absent; throws when it has another type or shape.
std::optional<std::string> h5_read_attr_string(hid_t obj, const char* name);
std::optional<int64_t> h5_read_attr_int(hid_t obj, const char* name);
std::optional<std::vector<std::string>> h5_read_attr_strings(hid_t obj, const char* name);

// Length of a 1-D dataset (throws if it is not 1-D).
int64_t h5_length_1d(hid_t dset);
// Reads elements [begin, begin + count) of a 1-D dataset, converted to T by HDF5.
template <class T>
void h5_read_slice_1d(hid_t dset, int64_t begin, int64_t count, T* out);
template <class T>
std::vector<T> h5_read_all_1d(hid_t dset) {
  std::vector<T> out(static_cast<size_t>(h5_length_1d(dset)));
  h5_read_slice_1d(dset, 0, static_cast<int64_t>(out.size()), out.data());
  return out;
}
// Writes a whole contiguous 1-D dataset (for small index arrays).
template <class T>
void h5_write_dataset_1d(hid_t loc, const char* name, const std::vector<T>& values);

}  // namespace moerun::io
