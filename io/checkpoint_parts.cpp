// The pieces shared by the checkpoint save, load and verify paths; see checkpoint_parts.h.
#include "io/checkpoint_parts.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "runtime/durable_file.h"
#include "runtime/timer.h"

namespace moerun::io {

namespace fs = std::filesystem;

namespace ckpt {

namespace {
detail::CheckpointTestHook g_hook = nullptr;  // tests: called at each save phase
int64_t g_piece_bytes = int64_t{256} << 20;   // bytes per read/CRC piece
}  // namespace

void hook(const char* phase) {
  if (g_hook) g_hook(phase);
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

uint64_t describe(std::span<const CkptTensor> tensors) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& t : tensors) {
    h = fnv1a(h, t.name.data(), t.name.size() + 1);
    h = fnv1a(h, t.global_shape.data(), t.global_shape.size() * sizeof(int64_t));
    int tags[2] = {t.local ? static_cast<int>(t.local->dtype()) : -1, static_cast<int>(t.kind)};
    h = fnv1a(h, tags, sizeof(tags));
  }
  return h;
}

int64_t product(std::span<const int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

int64_t row_bytes(const std::vector<int64_t>& shape, DType dtype) {
  return product(std::span(shape).subspan(1)) * static_cast<int64_t>(dtype_size(dtype));
}

bool is_flat(const CkptTensor& t) {
  return t.flat_begin >= 0;
}
int64_t units(const CkptTensor& t) {
  return is_flat(t) ? product(t.global_shape) : t.global_shape[0];
}
int64_t unit_bytes(const CkptTensor& t) {
  return is_flat(t) ? static_cast<int64_t>(dtype_size(t.local->dtype()))
                    : row_bytes(t.global_shape, t.local->dtype());
}

Rows local_rows(const CkptTensor& t) {
  if (is_flat(t)) return Rows{t.flat_begin, t.local->numel()};
  return t.kind == TensorKind::kReplicated ? Rows{0, t.global_shape[0]}
                                           : Rows{t.row_begin, t.local->dim(0)};
}
Rows share(int64_t rows, int r, int W) {
  int64_t b = rows * r / W, e = rows * (r + 1) / W;
  return {b, e - b};
}

void validate_request(std::span<const CkptTensor> tensors) {
  std::set<std::string> names;
  for (const auto& t : tensors) {
    MOERUN_CONFIG_REQUIRE(is_valid_tensor_name(t.name),
                          "checkpoint tensor name \"{}\" is not valid (printable, no '/')", t.name);
    MOERUN_CONFIG_REQUIRE(names.insert(t.name).second, "checkpoint tensor \"{}\" is listed twice",
                          t.name);
    MOERUN_CONFIG_REQUIRE(!t.global_shape.empty(),
                          "checkpoint tensor \"{}\" needs a 1-D or "
                          "larger global shape",
                          t.name);
    for (int64_t d : t.global_shape)
      MOERUN_CONFIG_REQUIRE(d >= 0, "checkpoint tensor \"{}\" has a negative global dim", t.name);
    MOERUN_CONFIG_REQUIRE(t.local != nullptr, "checkpoint tensor \"{}\" has no local tensor",
                          t.name);
    const Tensor& x = *t.local;
    MOERUN_CONFIG_REQUIRE(x.device() == Device::kCpu, "checkpoint tensor \"{}\" is not on the CPU",
                          t.name);
    checkpoint_dtype_name(x.dtype());  // throws on an unsupported dtype
    MOERUN_CONFIG_REQUIRE(x.nbytes() == 0 || x.defined(), "checkpoint tensor \"{}\" has no storage",
                          t.name);
    const std::string global = fmt::format("({})", fmt::join(t.global_shape, ", "));
    if (is_flat(t)) {
      MOERUN_CONFIG_REQUIRE(x.numel() <= product(t.global_shape) - t.flat_begin,
                            "flat checkpoint slice \"{}\": {} elements at {} do not fit the "
                            "global shape {}",
                            t.name, x.numel(), t.flat_begin, global);
    } else if (t.kind == TensorKind::kReplicated) {
      MOERUN_CONFIG_REQUIRE(x.shape() == t.global_shape,
                            "replicated checkpoint tensor \"{}\" is {} locally, global {}", t.name,
                            x.shape_str(), global);
    } else {
      bool ok = x.ndim() == static_cast<int>(t.global_shape.size()) &&
                std::equal(x.shape().begin() + 1, x.shape().end(), t.global_shape.begin() + 1) &&
                t.row_begin >= 0 && t.row_begin + x.dim(0) <= t.global_shape[0];
      MOERUN_CONFIG_REQUIRE(ok,
                            "sharded checkpoint tensor \"{}\": local {} at row {} does not fit "
                            "the global shape {}",
                            t.name, x.shape_str(), t.row_begin, global);
    }
  }
}

hid_t file_type(DType d) {
  return d == DType::kF32 ? H5T_IEEE_F32LE : d == DType::kI32 ? H5T_STD_I32LE : H5T_STD_I64LE;
}
hid_t mem_type(DType d) {
  return d == DType::kF32   ? H5T_NATIVE_FLOAT
         : d == DType::kI32 ? H5T_NATIVE_INT32
                            : H5T_NATIVE_INT64;
}

H5Id file_access(const Comm* world) {
  H5Id fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
#if H5_VERSION_GE(1, 10, 7)
  // File locks fail on many shared filesystems; the commit protocol does the coordination.
  H5_CHECK(H5Pset_file_locking(fapl, false, true));
#endif
  if (world) H5_CHECK(H5Pset_fapl_mpio(fapl, world->raw(), MPI_INFO_NULL));
  return fapl;
}

H5Id row_selection(hid_t dset, int64_t begin, int64_t count) {
  H5Id space(H5_CHECK(H5Dget_space(dset)));
  int nd = H5_CHECK(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(static_cast<size_t>(nd)), start(dims.size(), 0);
  H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  if (count == 0 || std::find(dims.begin() + 1, dims.end(), hsize_t{0}) != dims.end()) {
    H5_CHECK(H5Sselect_none(space));  // no elements (HDF5 rejects a zero count in a hyperslab)
    return space;
  }
  start[0] = static_cast<hsize_t>(begin);
  dims[0] = static_cast<hsize_t>(count);
  H5_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, dims.data(), nullptr));
  return space;
}

void flat_boxes(const std::vector<hsize_t>& dims, size_t k, std::vector<hsize_t>& at, int64_t a,
                int64_t b,
                std::vector<std::pair<std::vector<hsize_t>, std::vector<hsize_t>>>& out) {
  if (a >= b) return;
  auto box = [&](int64_t start, int64_t count) {
    std::vector<hsize_t> st(at), n(at.size(), 1);
    st.push_back(static_cast<hsize_t>(start));
    n.push_back(static_cast<hsize_t>(count));
    for (size_t j = k + 1; j < dims.size(); ++j) {
      st.push_back(0);
      n.push_back(dims[j]);
    }
    out.emplace_back(std::move(st), std::move(n));
  };
  int64_t stride = 1;  // elements per index of dim k
  for (size_t j = k + 1; j < dims.size(); ++j) stride *= static_cast<int64_t>(dims[j]);
  const int64_t i0 = a / stride, i1 = b / stride;
  auto below = [&](int64_t i, int64_t lo, int64_t hi) {
    at.push_back(static_cast<hsize_t>(i));
    flat_boxes(dims, k + 1, at, lo, hi, out);
    at.pop_back();
  };
  if (stride == 1) {
    box(a, b - a);
    return;
  }
  if (i0 == i1) {
    below(i0, a - i0 * stride, b - i0 * stride);
    return;
  }
  int64_t full = i0;
  if (a % stride != 0) {
    below(i0, a % stride, stride);
    full = i0 + 1;
  }
  if (i1 > full) box(full, i1 - full);
  if (b % stride != 0) below(i1, 0, b % stride);
}

H5Id flat_selection(hid_t dset, int64_t begin, int64_t count) {
  H5Id space(H5_CHECK(H5Dget_space(dset)));
  int nd = H5_CHECK(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  std::vector<std::pair<std::vector<hsize_t>, std::vector<hsize_t>>> boxes;
  std::vector<hsize_t> at;
  flat_boxes(dims, 0, at, begin, begin + count, boxes);
  if (boxes.empty()) {
    H5_CHECK(H5Sselect_none(space));
    return space;
  }
  for (size_t i = 0; i < boxes.size(); ++i)
    H5_CHECK(H5Sselect_hyperslab(space, i == 0 ? H5S_SELECT_SET : H5S_SELECT_OR,
                                 boxes[i].first.data(), nullptr, boxes[i].second.data(), nullptr));
  return space;
}

H5Id unit_selection(hid_t dset, bool flat, int64_t begin, int64_t count) {
  return flat ? flat_selection(dset, begin, count) : row_selection(dset, begin, count);
}

H5Id mem_space(int64_t elements) {
  hsize_t n[1] = {static_cast<hsize_t>(std::max<int64_t>(elements, 1))};
  H5Id space(H5_CHECK(H5Screate_simple(1, n, nullptr)));
  if (elements == 0) H5_CHECK(H5Sselect_none(space));
  return space;
}

std::byte* raw_bytes(Tensor& x) {
  if (x.nbytes() == 0) return nullptr;
  switch (x.dtype()) {
    case DType::kF32:
      return reinterpret_cast<std::byte*>(x.data<float>());
    case DType::kI32:
      return reinterpret_cast<std::byte*>(x.data<int32_t>());
    default:
      return reinterpret_cast<std::byte*>(x.data<int64_t>());
  }
}

int64_t piece_rows(int64_t rb) {
  return rb == 0 ? INT64_MAX : std::max<int64_t>(1, g_piece_bytes / rb);
}

void read_rows(hid_t dset, DType d, int64_t rb, int64_t begin, int64_t count, std::byte* out,
               bool flat) {
  if (rb == 0) return;  // no elements, no storage
  for (int64_t done = 0; done < count;) {
    int64_t n = std::min(count - done, piece_rows(rb));
    H5Id fs_ = unit_selection(dset, flat, begin + done, n);
    H5Id ms = mem_space(n * rb / static_cast<int64_t>(dtype_size(d)));
    H5_CHECK(H5Dread(dset, mem_type(d), ms, fs_, H5P_DEFAULT, out + done * rb));
    done += n;
  }
}

uint32_t crc_rows_from_file(hid_t dset, DType d, int64_t rb, int64_t begin, int64_t count) {
  if (rb == 0) return 0;
  std::vector<std::byte> buf;
  uint32_t crc = 0;
  for (int64_t done = 0; done < count;) {
    int64_t n = std::min(count - done, piece_rows(rb));
    buf.resize(static_cast<size_t>(n * rb));
    read_rows(dset, d, rb, begin + done, n, buf.data());
    crc = crc32_bytes(buf.data(), buf.size(), crc);
    done += n;
  }
  return crc;
}

H5Id open_checked(hid_t file, const ManifestTensor& t, const std::string& path) {
  const std::string where = fmt::format("dataset \"/{}\" in {}", t.name, path);
  MOERUN_CONFIG_REQUIRE(h5_path_exists(file, "/" + t.name), "{} is missing", where);
  H5Id dset(H5_CHECK(H5Dopen2(file, ("/" + t.name).c_str(), H5P_DEFAULT)));
  H5Id space(H5_CHECK(H5Dget_space(dset)));
  int nd = H5_CHECK(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(nd, 0)));
  H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  std::vector<int64_t> shape(dims.begin(), dims.end());
  MOERUN_CONFIG_REQUIRE(shape == t.shape, "{} has shape ({}), the manifest says ({})", where,
                        fmt::join(shape, ", "), fmt::join(t.shape, ", "));
  H5Id type(H5_CHECK(H5Dget_type(dset)));
  MOERUN_CONFIG_REQUIRE(H5_CHECK(H5Tequal(type, file_type(t.dtype))) > 0,
                        "{} does not hold {} values", where, checkpoint_dtype_name(t.dtype));
  return dset;
}

H5Id open_read_only(const std::string& path) {
  MOERUN_CONFIG_REQUIRE(fs::is_regular_file(fs::symlink_status(path)),
                        "checkpoint file {} is missing", path);
  H5Id fapl = file_access(nullptr);
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl);
  if (f < 0)
    throw CheckpointError(
        fmt::format("checkpoint file {} cannot be opened as HDF5: {}", path, h5_error_stack()));
  return H5Id(f);
}

void check_file_sizes(const Manifest& m, const std::string& dir) {
  for (const auto& f : m.files) {
    const std::string path = (fs::path(dir) / f.path).string();
    std::error_code ec;
    auto st = fs::symlink_status(path, ec);
    MOERUN_CONFIG_REQUIRE(!ec && fs::is_regular_file(st), "checkpoint file {} is missing", path);
    auto size = static_cast<int64_t>(fs::file_size(path, ec));
    MOERUN_CONFIG_REQUIRE(!ec && size == f.bytes,
                          "checkpoint file {} is {} bytes, the manifest says {} (truncated or "
                          "replaced)",
                          path, size, f.bytes);
  }
}

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* out) {
  static_cast<std::vector<std::string>*>(out)->push_back(name);
  return 0;
}

// Gathers this rank's CRC slices (begin, count, crc per tensor) to rank 0.
std::vector<int64_t> gather_slices(const Comm& world, const std::vector<CrcSlice>& mine) {
  std::vector<int64_t> send;
  for (const auto& s : mine) send.insert(send.end(), {s.begin, s.count, int64_t{s.crc}});
  return world.gather(send, 0);
}

std::vector<CrcSlice> slices_of(const std::vector<int64_t>& all, size_t tensor, size_t n, int W) {
  std::vector<CrcSlice> out;
  for (int r = 0; r < W; ++r) {
    const int64_t* p = all.data() + (static_cast<size_t>(r) * n + tensor) * 3;
    out.push_back({p[0], p[1], static_cast<uint32_t>(p[2])});
  }
  return out;
}

}  // namespace ckpt

namespace detail {
void set_checkpoint_test_hook(CheckpointTestHook h) {
  ckpt::g_hook = h;
}
void set_checkpoint_io_piece_bytes(int64_t bytes) {
  MOERUN_REQUIRE(bytes > 0, "piece size must be positive");
  ckpt::g_piece_bytes = bytes;
}
}  // namespace detail

}  // namespace moerun::io
