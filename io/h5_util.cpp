// HDF5 error reporting and the small attribute/dataset helpers of io/h5_util.h.
#include "io/h5_util.h"

#include <sys/resource.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <vector>

#include <fmt/ranges.h>

namespace moerun {

namespace {

herr_t collect_entry(unsigned, const H5E_error2_t* err, void* data) {
  std::string entry =
      fmt::format("{}{}", err->desc ? err->desc : "?",
                  err->func_name ? fmt::format(" ({})", err->func_name) : std::string());
  std::replace(entry.begin(), entry.end(), '\n', ' ');  // the POSIX driver quotes ctime()
  static_cast<std::vector<std::string>*>(data)->push_back(std::move(entry));
  return 0;
}

// The current stack's entries, outermost first (the innermost, the most specific, last); clears it.
std::vector<std::string> take_error_stack() {
  std::vector<std::string> entries;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_entry, &entries);
  H5Eclear2(H5E_DEFAULT);
  return entries;
}

std::string join_stack(const std::vector<std::string>& entries) {
  return entries.empty() ? std::string("no HDF5 error message")
                         : fmt::format("{}", fmt::join(entries, "; "));
}

// The system error a failed read or write left in the stack: the POSIX drivers write
// "errno = 28, error message = 'No space left on device'"; MPI-IO reports its own error text.
int stack_errno(const std::vector<std::string>& entries) {
  for (const std::string& e : entries) {
    const size_t at = e.find("errno = ");
    if (at != std::string::npos) {
      const int v = std::atoi(e.c_str() + at + 8);
      if (v > 0) return v;
    }
  }
  for (int code : {ENOSPC, EDQUOT, EFBIG, EIO, EROFS, EACCES, ENOENT}) {
    const std::string text = std::strerror(code);
    for (const std::string& e : entries)
      if (e.find(text) != std::string::npos) return code;
  }
  return 0;
}

}  // namespace

std::string h5_error_stack() {
  return join_stack(take_error_stack());
}

void throw_h5_error(const char* call, const char* file, int line) {
  // Under MPI-IO the stack carries no errno; the rank whose write failed still has it in errno.
  const int last_errno = errno;
  const std::vector<std::string> entries = take_error_stack();
  int err = stack_errno(entries);
  if (err == 0 && (last_errno == ENOSPC || last_errno == EDQUOT || last_errno == EFBIG ||
                   last_errno == EIO || last_errno == EROFS))
    err = last_errno;
  std::string cause = err               ? std::string(std::strerror(err))
                      : entries.empty() ? std::string("no HDF5 error message")
                                        : entries.back();
  throw H5Error(
      fmt::format("HDF5 call failed: {} at {}:{}: {}", call, file, line, join_stack(entries)),
      std::move(cause), err);
}

std::string write_failure_cause(const std::exception& e, const std::string& path) {
  const auto* h5 = dynamic_cast<const H5Error*>(&e);
  if (h5 && h5->sys_errno() != 0) return h5->cause();
  // Only the ranks that wrote see the system error; the others (and a driver that keeps errno to
  // itself) can still tell a full file system.
  struct statvfs st {};
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (::statvfs(dir.empty() ? "." : dir.c_str(), &st) == 0 && st.f_blocks > 0) {
    const auto free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
    if (free_bytes < (uint64_t{1} << 20))
      return fmt::format("{} ({} bytes free on the file system of {})", std::strerror(ENOSPC),
                         free_bytes, dir.string());
  }
  // A file size limit (ulimit -f) the file has reached.
  rlimit lim{};
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (::getrlimit(RLIMIT_FSIZE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY && !ec &&
      size + (uint64_t{1} << 20) >= static_cast<uint64_t>(lim.rlim_cur))
    return fmt::format("{} (files may not exceed {} bytes here: ulimit -f)", std::strerror(EFBIG),
                       static_cast<uint64_t>(lim.rlim_cur));
  return h5 ? h5->cause() : std::string(e.what());
}

void h5_silence_auto_print() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

}  // namespace moerun

namespace moerun::io {

bool h5_path_exists(hid_t loc, const std::string& path) {
  // H5Lexists fails (rather than returning false) when an intermediate group is missing, so
  // each prefix is checked in turn.
  size_t pos = path.front() == '/' ? 1 : 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    std::string prefix = path.substr(0, next);
    if (H5_CHECK(H5Lexists(loc, prefix.c_str(), H5P_DEFAULT)) <= 0) return false;
    pos = next + 1;
  }
  return true;
}

namespace {

H5Id create_attr(hid_t obj, const char* name, hid_t type, hid_t space) {
  if (H5_CHECK(H5Aexists(obj, name)) > 0) H5_CHECK(H5Adelete(obj, name));
  return H5Id(H5_CHECK(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT)));
}

// A fixed-length, NUL-padded string type: readable by h5dump and by every HDF5 version without
// the variable-length memory reclaim calls, whose names changed between 1.10 and 1.12.
H5Id string_type(size_t size) {
  H5Id type(H5_CHECK(H5Tcopy(H5T_C_S1)));
  H5_CHECK(H5Tset_size(type, std::max<size_t>(size, 1)));
  H5_CHECK(H5Tset_strpad(type, H5T_STR_NULLPAD));
  return type;
}

// Opens an attribute if present; std::nullopt when absent.
std::optional<H5Id> open_attr(hid_t obj, const char* name) {
  if (H5_CHECK(H5Aexists(obj, name)) <= 0) return std::nullopt;
  return H5Id(H5_CHECK(H5Aopen(obj, name, H5P_DEFAULT)));
}

std::vector<std::string> read_fixed_strings(hid_t attr, const char* name) {
  H5Id file_type(H5_CHECK(H5Aget_type(attr)));
  MOERUN_REQUIRE(H5Tget_class(file_type) == H5T_STRING, "attribute '{}' is not a string", name);
  MOERUN_REQUIRE(H5_CHECK(H5Tis_variable_str(file_type)) == 0,
                 "attribute '{}' is a variable-length string; expected fixed-length", name);
  size_t size = H5Tget_size(file_type);
  H5Id space(H5_CHECK(H5Aget_space(attr)));
  int64_t n = H5_CHECK(H5Sget_simple_extent_npoints(space));
  std::vector<char> buffer(static_cast<size_t>(n) * size);
  H5Id mem_type = string_type(size);
  if (n > 0) H5_CHECK(H5Aread(attr, mem_type, buffer.data()));
  std::vector<std::string> out;
  for (int64_t i = 0; i < n; ++i) {
    const char* s = buffer.data() + i * size;
    out.emplace_back(s, strnlen(s, size));
  }
  return out;
}

}  // namespace

void h5_write_attr(hid_t obj, const char* name, const std::string& value) {
  H5Id type = string_type(value.size());
  H5Id space(H5_CHECK(H5Screate(H5S_SCALAR)));
  H5Id attr = create_attr(obj, name, type, space);
  std::vector<char> buffer(std::max<size_t>(value.size(), 1), '\0');
  std::memcpy(buffer.data(), value.data(), value.size());
  H5_CHECK(H5Awrite(attr, type, buffer.data()));
}

void h5_write_attr(hid_t obj, const char* name, int64_t value) {
  H5Id space(H5_CHECK(H5Screate(H5S_SCALAR)));
  H5Id attr = create_attr(obj, name, H5T_STD_I64LE, space);
  H5_CHECK(H5Awrite(attr, H5T_NATIVE_INT64, &value));
}

void h5_write_attr(hid_t obj, const char* name, const std::vector<std::string>& values) {
  size_t size = 1;
  for (const auto& v : values) size = std::max(size, v.size());
  H5Id type = string_type(size);
  hsize_t dims[1] = {values.size()};
  H5Id space(H5_CHECK(H5Screate_simple(1, dims, nullptr)));
  H5Id attr = create_attr(obj, name, type, space);
  std::vector<char> buffer(values.size() * size, '\0');
  for (size_t i = 0; i < values.size(); ++i)
    std::memcpy(buffer.data() + i * size, values[i].data(), values[i].size());
  if (!values.empty()) H5_CHECK(H5Awrite(attr, type, buffer.data()));
}

std::optional<std::string> h5_read_attr_string(hid_t obj, const char* name) {
  auto attr = open_attr(obj, name);
  if (!attr) return std::nullopt;
  auto values = read_fixed_strings(*attr, name);
  MOERUN_REQUIRE(values.size() == 1, "attribute '{}' holds {} strings, expected 1", name,
                 values.size());
  return values[0];
}

std::optional<int64_t> h5_read_attr_int(hid_t obj, const char* name) {
  auto attr = open_attr(obj, name);
  if (!attr) return std::nullopt;
  H5Id type(H5_CHECK(H5Aget_type(*attr)));
  MOERUN_REQUIRE(H5Tget_class(type) == H5T_INTEGER, "attribute '{}' is not an integer", name);
  H5Id space(H5_CHECK(H5Aget_space(*attr)));
  MOERUN_REQUIRE(H5_CHECK(H5Sget_simple_extent_npoints(space)) == 1,
                 "attribute '{}' is not a single integer", name);
  int64_t value = 0;
  H5_CHECK(H5Aread(*attr, H5T_NATIVE_INT64, &value));
  return value;
}

std::optional<std::vector<std::string>> h5_read_attr_strings(hid_t obj, const char* name) {
  auto attr = open_attr(obj, name);
  if (!attr) return std::nullopt;
  return read_fixed_strings(*attr, name);
}

int64_t h5_length_1d(hid_t dset) {
  H5Id space(H5_CHECK(H5Dget_space(dset)));
  int rank = H5_CHECK(H5Sget_simple_extent_ndims(space));
  MOERUN_REQUIRE(rank == 1, "dataset has {} dimensions, expected 1", rank);
  hsize_t dims[1] = {0};
  H5_CHECK(H5Sget_simple_extent_dims(space, dims, nullptr));
  return static_cast<int64_t>(dims[0]);
}

template <class T>
void h5_read_slice_1d(hid_t dset, int64_t begin, int64_t count, T* out) {
  if (count == 0) return;
  H5Id file_space(H5_CHECK(H5Dget_space(dset)));
  hsize_t start[1] = {static_cast<hsize_t>(begin)};
  hsize_t n[1] = {static_cast<hsize_t>(count)};
  H5_CHECK(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, nullptr, n, nullptr));
  H5Id mem_space(H5_CHECK(H5Screate_simple(1, n, nullptr)));
  H5_CHECK(H5Dread(dset, h5_native_type<T>(), mem_space, file_space, H5P_DEFAULT, out));
}

template <class T>
void h5_write_dataset_1d(hid_t loc, const char* name, const std::vector<T>& values) {
  hsize_t dims[1] = {values.size()};
  H5Id space(H5_CHECK(H5Screate_simple(1, dims, nullptr)));
  hid_t file_type = sizeof(T) == 8 ? H5T_STD_I64LE : H5T_STD_I32LE;
  H5Id dset(
      H5_CHECK(H5Dcreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)));
  if (!values.empty())
    H5_CHECK(H5Dwrite(dset, h5_native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
}

template void h5_read_slice_1d<int32_t>(hid_t, int64_t, int64_t, int32_t*);
template void h5_read_slice_1d<int64_t>(hid_t, int64_t, int64_t, int64_t*);
template void h5_write_dataset_1d<int32_t>(hid_t, const char*, const std::vector<int32_t>&);
template void h5_write_dataset_1d<int64_t>(hid_t, const char*, const std::vector<int64_t>&);

}  // namespace moerun::io
