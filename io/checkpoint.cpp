// Sharded checkpoints: parallel-HDF5 save, the commit protocol, retention, latest_step, load at
// any layout with CRC verification, and verify_checkpoint (layout and protocol in checkpoint.h).
#include "io/checkpoint.h"

#include <hdf5.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "comm/agree.h"
#include "io/h5_util.h"
#include "runtime/durable_file.h"
#include "runtime/timer.h"

namespace moerun::io {

namespace fs = std::filesystem;
using nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "checkpoint CRCs are computed over little-endian bytes in memory");

namespace {

detail::CheckpointTestHook g_hook = nullptr;
int64_t g_piece_bytes = int64_t{256} << 20;

void hook(const char* phase) {
  if (g_hook) g_hook(phase);
}

// ---- errors that every rank agrees on --------------------------------------------------------

// Collective: runs f on every rank; if it threw anywhere, every rank throws the lowest failing
// rank's message, a CheckpointError for bad input and an Error otherwise.
template <class F>
void on_all(const Comm& world, F&& f) {
  on_every_rank<CheckpointError>(world, "checkpoint", std::forward<F>(f));
}
// Collective: the same, with f on rank 0 only.
template <class F>
void on_root(const Comm& world, F&& f) {
  on_rank0<CheckpointError>(world, "checkpoint", std::forward<F>(f));
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// What must agree on every rank: names, global shapes, dtypes and kinds, in order.
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

// ---- requests --------------------------------------------------------------------------------

int64_t product(std::span<const int64_t> dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

int64_t row_bytes(const std::vector<int64_t>& shape, DType dtype) {
  return product(std::span(shape).subspan(1)) * static_cast<int64_t>(dtype_size(dtype));
}

// A tensor is moved in units: rows of dim 0, or single elements for a flat slice (flat_begin).
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

// Units (rows, or elements of a flat slice) [begin, begin + count) held locally by this rank.
struct Rows {
  int64_t begin = 0, count = 0;
};
Rows local_rows(const CkptTensor& t) {
  if (is_flat(t)) return Rows{t.flat_begin, t.local->numel()};
  return t.kind == TensorKind::kReplicated ? Rows{0, t.global_shape[0]}
                                           : Rows{t.row_begin, t.local->dim(0)};
}
// An even share of `rows` for rank r of W: replicated rows on save, CRC verification on load.
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

// ---- HDF5 ------------------------------------------------------------------------------------

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

// File selection of rows [begin, begin + count) (none when count is 0).
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

// The boxes (start, count per dim) that cover the row-major elements [a, b) of the array of
// shape dims[k..] below the fixed coordinates `at` (at most 2 per dim).
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

// File selection of the row-major elements [begin, begin + count) (a flat slice).
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

// Reads rows (flat: elements) [begin, begin + count) of `dset` into out (independent, in
// pieces); rb is the bytes of one row (flat: of one element).
void read_rows(hid_t dset, DType d, int64_t rb, int64_t begin, int64_t count, std::byte* out,
               bool flat = false) {
  if (rb == 0) return;  // no elements, no storage
  for (int64_t done = 0; done < count;) {
    int64_t n = std::min(count - done, piece_rows(rb));
    H5Id fs_ = unit_selection(dset, flat, begin + done, n);
    H5Id ms = mem_space(n * rb / static_cast<int64_t>(dtype_size(d)));
    H5_CHECK(H5Dread(dset, mem_type(d), ms, fs_, H5P_DEFAULT, out + done * rb));
    done += n;
  }
}

// CRC of rows [begin, begin + count) read from the file in pieces.
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

// Opens "/<name>" and checks its shape and type against the manifest.
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

// File sizes must match the manifest: a truncated or replaced file is named before HDF5 sees it.
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

// ---- save ------------------------------------------------------------------------------------

H5Id create_dataset(hid_t file, const CkptTensor& t) {
  const DType d = t.local->dtype();
  std::vector<hsize_t> dims(t.global_shape.begin(), t.global_shape.end());
  H5Id space(H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)));
  H5Id dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  H5_CHECK(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));  // every row is written
  H5Id dset(H5_CHECK(H5Dcreate2(file, ("/" + t.name).c_str(), file_type(d), space, H5P_DEFAULT,
                                dcpl, H5P_DEFAULT)));
  h5_write_attr(dset, "name", t.name);
  h5_write_attr(dset, "dtype", std::string(checkpoint_dtype_name(d)));
  h5_write_attr(dset, "kind", std::string(to_string(t.kind)));
  return dset;
}

// Round r of the collective write of `rows` of t: every rank makes the same number of calls, an
// empty one when it has no rows left.
void write_round(hid_t dset, const CkptTensor& t, Rows rows, int64_t r, hid_t dxpl) {
  const DType d = t.local->dtype();
  const int64_t rb = unit_bytes(t);
  const int64_t step = piece_rows(rb);
  const Rows held = local_rows(t);
  const std::byte* data = raw_bytes(*t.local);
  static const std::byte dummy[8] = {};
  int64_t b = std::min(rows.count, r * step), n = std::min(rows.count - b, step);
  H5Id fs_ = unit_selection(dset, is_flat(t), rows.begin + b, n);
  H5Id ms = mem_space(n * rb / static_cast<int64_t>(dtype_size(d)));
  const std::byte* src = n ? data + (rows.begin - held.begin + b) * rb : dummy;
  H5_CHECK(H5Dwrite(dset, mem_type(d), ms, fs_, dxpl, src));
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

// Rank 0, after the data is durable: manifest, latest, retention (each step a hook point).
void commit(const std::string& ckpt_dir, const Manifest& m, int keep_last) {
  const std::string dir = step_dir(ckpt_dir, m.step);
  fsync_path((fs::path(dir) / kTensorFileName).string());
  fsync_path(dir);
  const std::string manifest = (fs::path(dir) / kManifestName).string();
  write_file_synced(manifest + ".tmp", manifest_to_json(m));
  hook("after_manifest_tmp");
  rename_durably(manifest + ".tmp", manifest);  // the commit point
  hook("after_manifest");
  const std::string latest = (fs::path(ckpt_dir) / kLatestName).string();
  write_file_synced(latest + ".tmp", fmt::format("{}\n", m.step));
  hook("after_latest_tmp");
  rename_durably(latest + ".tmp", latest);
  hook("after_latest");
  if (keep_last <= 0) return;
  std::vector<int64_t> older;
  for (int64_t s : scan_checkpoints(ckpt_dir).committed)
    if (s < m.step) older.push_back(s);
  const size_t keep_older = static_cast<size_t>(keep_last - 1);
  if (older.size() <= keep_older) return;
  older.resize(older.size() - keep_older);  // the oldest ones
  for (int64_t s : older) {
    // Uncommit first: a crash in the middle leaves a partial step, never a damaged committed one.
    const std::string sdir = step_dir(ckpt_dir, s);
    std::error_code ec;
    fs::remove(fs::path(sdir) / kManifestName, ec);
    if (!ec) fsync_path(sdir);
    hook("during_retention");
    if (!ec) fs::remove_all(sdir, ec);
    if (ec)
      std::fprintf(stderr, "moerun: checkpoint retention could not delete %s: %s\n", sdir.c_str(),
                   ec.message().c_str());
  }
}

}  // namespace

namespace detail {
void set_checkpoint_test_hook(CheckpointTestHook h) {
  g_hook = h;
}
void set_checkpoint_io_piece_bytes(int64_t bytes) {
  MOERUN_REQUIRE(bytes > 0, "piece size must be positive");
  g_piece_bytes = bytes;
}
}  // namespace detail

SaveStats save_checkpoint(const std::string& ckpt_dir, int64_t step,
                          std::span<const CkptTensor> tensors, const json& meta, const Comm& world,
                          int keep_last) {
  const double t0 = now_seconds();
  h5_silence_auto_print();
  const int W = world.size(), me = world.rank();
  const size_t N = tensors.size();
  on_all(world, [&] {
    MOERUN_CONFIG_REQUIRE(step >= 0, "checkpoint step {} is negative", step);
    MOERUN_CONFIG_REQUIRE(keep_last >= 0, "keep_last {} is negative", keep_last);
    MOERUN_CONFIG_REQUIRE(meta.is_object(), "checkpoint meta must be a JSON object");
    validate_request(tensors);
  });
  uint64_t h = fnv1a(describe(tensors), &step, sizeof(step));
  h = fnv1a(h, &keep_last, sizeof(keep_last));
  const std::string meta_text = meta.dump();
  h = fnv1a(h, meta_text.data(), meta_text.size());
  if (!world.same_everywhere(h))
    throw CheckpointError("ranks passed different checkpoint tensor lists, steps or meta");

  // What each rank writes, and its CRC (computed before the write, from memory).
  std::vector<Rows> writes(N);
  std::vector<CrcSlice> mine(N);
  SaveStats stats;
  for (size_t i = 0; i < N; ++i) {
    const CkptTensor& t = tensors[i];
    const int64_t rb = unit_bytes(t);
    stats.bytes += units(t) * rb;
    if (t.kind == TensorKind::kReplicated && !is_flat(t)) {
      writes[i] = share(t.global_shape[0], me, W);
    } else if (t.write) {
      writes[i] = local_rows(t);
    }
    const std::byte* src = raw_bytes(*t.local);
    const Rows held = local_rows(t);
    mine[i] = {writes[i].begin, writes[i].count,
               writes[i].count ? crc32_bytes(src + (writes[i].begin - held.begin) * rb,
                                             static_cast<size_t>(writes[i].count * rb))
                               : 0u};
  }
  const std::vector<int64_t> all = gather_slices(world, mine);

  // Rank 0: the writers must tile every tensor; the step directory is prepared.
  Manifest m;
  std::vector<int64_t> rounds(N, 0);
  on_root(world, [&] {
    m.step = step;
    m.world_size = W;
    m.meta = meta;
    std::vector<std::string> problems;
    for (size_t i = 0; i < N; ++i) {
      const CkptTensor& t = tensors[i];
      const int64_t rb = unit_bytes(t);
      auto slices = slices_of(all, i, N, W);
      // A dataset without elements has no storage: nobody writes to it (rounds stay 0).
      for (const auto& s : slices) {
        if (rb > 0 && s.count > 0)
          rounds[i] = std::max(rounds[i], (s.count - 1) / piece_rows(rb) + 1);
      }
      CombinedCrc c = combine_crc_slices(std::move(slices), units(t), rb);
      if (!c.error.empty())
        problems.push_back(fmt::format("\"{}\": {} (check {} and write)", t.name, c.error,
                                       is_flat(t) ? "flat_begin" : "row_begin"));
      m.tensors.push_back(
          {t.name, t.local->dtype(), t.global_shape, t.kind, kTensorFileName, c.crc});
    }
    MOERUN_CONFIG_REQUIRE(problems.empty(), "cannot save checkpoint step {}: {}", step,
                          fmt::join(problems, "; "));
    const std::string dir = step_dir(ckpt_dir, step);
    MOERUN_CONFIG_REQUIRE(!fs::exists(fs::path(dir) / kManifestName),
                          "checkpoint step {} is already committed in {}; refusing to "
                          "overwrite it",
                          step, dir);
    std::error_code ec;
    fs::remove_all(dir, ec);  // a partial step from a crashed run
    if (!ec) fs::create_directories(dir, ec);
    MOERUN_REQUIRE(!ec, "cannot prepare checkpoint directory {}: {}", dir, ec.message());
  });
  world.broadcast(std::as_writable_bytes(std::span(rounds)), 0);

  // Every rank: collective parallel-HDF5 write of its rows, flushed to disk, closed. MPI-IO reports
  // a failed write only on the ranks that wrote (the aggregators), and the others' next collective
  // HDF5 call would wait for them forever: so after each collective step every rank learns whether
  // any rank failed, and all stop at the same step (the handles then close on every rank). A
  // failure is reported by its cause (a full disk, a quota), the file and the step, not HDF5's
  // call chain; a rank that saw the system error speaks for all.
  const std::string path = (fs::path(step_dir(ckpt_dir, step)) / kTensorFileName).string();
  LocalFailure wrote;
  int sys_errno = 0;
  auto all_ok = [&](auto&& f) {
    if (!wrote.failed())
      wrote = capture_failure([&] {
        try {
          f();
        } catch (const std::exception& e) {
          if (const auto* h5 = dynamic_cast<const H5Error*>(&e)) sys_errno = h5->sys_errno();
          throw Error(fmt::format("checkpoint step {}: writing {} failed: {}", step, path,
                                  write_failure_cause(e, path)));
        }
      });
    return world.all_true(!wrote.failed());
  };
  {
    H5Id file, dxpl;
    bool ok = all_ok([&] {
      H5Id fapl = file_access(&world);
      file = H5Id(H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl)));
      h5_write_attr(file, "format", std::string(kCheckpointFormat));
      h5_write_attr(file, "version", int64_t{kCheckpointVersion});
      h5_write_attr(file, "step", step);
      h5_write_attr(file, "world_size", int64_t{W});
      dxpl = H5Id(H5_CHECK(H5Pcreate(H5P_DATASET_XFER)));
      H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    });
    H5Id dset;  // the previous one closes when the next is assigned
    for (size_t i = 0; ok && i < N; ++i) {
      ok = all_ok([&] { dset = create_dataset(file, tensors[i]); });
      for (int64_t r = 0; ok && r < rounds[i]; ++r)
        ok = all_ok([&] { write_round(dset, tensors[i], writes[i], r, dxpl); });
    }
    if (ok) {
      dset.reset();
      ok = all_ok([&] {
        H5_CHECK(H5Fflush(file, H5F_SCOPE_GLOBAL));  // MPI_File_sync on every rank
        H5_CHECK(H5Fclose(file.release()));
      });
    }
    if (!ok) hook("write_failed");
  }  // after a failure: the dataset and the file close here, on every rank
  LocalFailure failed = agree_on_failure(world, sys_errno != 0 ? wrote : LocalFailure{});
  if (!failed.failed()) failed = agree_on_failure(world, wrote);
  if (failed.failed()) throw Error(failed.message);
  hook("after_data");

  on_root(world, [&] {
    m.files.push_back({kTensorFileName, static_cast<int64_t>(fs::file_size(path))});
    try {
      commit(ckpt_dir, m, keep_last);
    } catch (const ConfigError&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(fmt::format("checkpoint step {}: committing failed: {}", step, e.what()));
    }
  });
  stats.seconds = now_seconds() - t0;
  return stats;
}

std::optional<int64_t> latest_step(const std::string& ckpt_dir, const Comm& world) {
  int64_t latest = -1;
  on_root(world, [&] {
    CheckpointScan scan = scan_checkpoints(ckpt_dir);
    if (!scan.committed.empty()) latest = scan.committed.back();
    for (const auto& p : scan.partial)
      std::fprintf(stderr, "moerun: ignoring uncommitted checkpoint %s: %s\n",
                   step_dir(ckpt_dir, p.step).c_str(), p.reason.c_str());
    if (latest >= 0 && scan.latest_file != latest)
      std::fprintf(stderr, "moerun: %s/latest %s; the newest committed step is %lld\n",
                   ckpt_dir.c_str(),
                   scan.latest_file              ? fmt::format("says {}", *scan.latest_file).c_str()
                   : scan.latest_problem.empty() ? "is absent"
                                                 : ("is " + scan.latest_problem).c_str(),
                   static_cast<long long>(latest));
  });
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(&latest, 1)), 0);
  if (latest < 0) return std::nullopt;
  return latest;
}

json load_checkpoint(const std::string& ckpt_dir, int64_t step, std::span<const CkptTensor> tensors,
                     const Comm& world) {
  h5_silence_auto_print();
  const int W = world.size(), me = world.rank();
  const size_t N = tensors.size();
  on_all(world, [&] { validate_request(tensors); });
  if (!world.same_everywhere(fnv1a(describe(tensors), &step, sizeof(step))))
    throw CheckpointError("ranks asked for different checkpoint tensor lists or steps");

  // Rank 0 reads and checks the manifest; every rank parses the same text.
  std::string text;
  on_root(world, [&] {
    Manifest m0 = read_manifest(ckpt_dir, step);
    check_file_sizes(m0, step_dir(ckpt_dir, step));
    text = manifest_to_json(m0);
  });
  world.broadcast(text, 0);
  const std::string where = (fs::path(step_dir(ckpt_dir, step)) / kManifestName).string();
  Manifest m;
  std::vector<const ManifestTensor*> entries(N, nullptr);
  on_all(world, [&] {
    m = parse_manifest(text, where);
    std::map<std::string, const ManifestTensor*> by_name;
    for (const auto& t : m.tensors) by_name[t.name] = &t;
    std::vector<std::string> missing, extra, mismatched;
    for (size_t i = 0; i < N; ++i) {
      const CkptTensor& t = tensors[i];
      auto it = by_name.find(t.name);
      if (it == by_name.end()) {
        missing.push_back(t.name);
        continue;
      }
      const ManifestTensor& e = *it->second;
      by_name.erase(it);
      entries[i] = &e;
      if (e.shape != t.global_shape || e.dtype != t.local->dtype())
        mismatched.push_back(
            fmt::format("\"{}\" is {} ({}) in the checkpoint, {} ({}) here", t.name,
                        checkpoint_dtype_name(e.dtype), fmt::join(e.shape, ", "),
                        checkpoint_dtype_name(t.local->dtype()), fmt::join(t.global_shape, ", ")));
    }
    for (const auto& [name, e] : by_name) extra.push_back(name);
    std::vector<std::string> problems;
    if (!missing.empty())
      problems.push_back(fmt::format("missing from the checkpoint: {}", fmt::join(missing, ", ")));
    if (!extra.empty())
      problems.push_back(
          fmt::format("in the checkpoint but not requested: {}", fmt::join(extra, ", ")));
    if (!mismatched.empty())
      problems.push_back(fmt::format("mis-shaped: {}", fmt::join(mismatched, "; ")));
    MOERUN_CONFIG_REQUIRE(problems.empty(),
                          "checkpoint step {} in {} does not match the "
                          "model: {}",
                          step, ckpt_dir, fmt::join(problems, "; "));
  });

  // Every rank reads its rows (independently) and CRCs an even share of each dataset.
  std::vector<CrcSlice> mine(N);
  on_all(world, [&] {
    std::map<std::string, H5Id> files;
    for (const auto& f : m.files)
      files[f.path] = open_read_only((fs::path(step_dir(ckpt_dir, step)) / f.path).string());
    for (size_t i = 0; i < N; ++i) {
      const CkptTensor& t = tensors[i];
      const ManifestTensor& e = *entries[i];
      const std::string fpath = (fs::path(step_dir(ckpt_dir, step)) / e.file).string();
      H5Id dset = open_checked(files.at(e.file), e, fpath);
      const DType d = e.dtype;
      const int64_t rb = row_bytes(e.shape, d);
      const int64_t ub = unit_bytes(t);  // rb, or one element's bytes for a flat slice
      const Rows held = local_rows(t);
      std::byte* dst = raw_bytes(*t.local);
      read_rows(dset, d, ub, held.begin, held.count, dst, is_flat(t));
      // This rank's verification share (rows), from memory when it holds those bytes.
      const Rows v = share(e.shape[0], me, W);
      const int64_t vb = v.begin * rb, ve = (v.begin + v.count) * rb;  // bytes of the tensor
      const int64_t hb = held.begin * ub, he = (held.begin + held.count) * ub;
      uint32_t crc = 0;
      if (vb >= hb && ve <= he) {
        if (v.count) crc = crc32_bytes(dst + (vb - hb), static_cast<size_t>(ve - vb));
      } else {
        crc = crc_rows_from_file(dset, d, rb, v.begin, v.count);
      }
      mine[i] = {v.begin, v.count, crc};
    }
  });
  const std::vector<int64_t> all = gather_slices(world, mine);
  on_root(world, [&] {
    std::vector<std::string> bad;
    for (size_t i = 0; i < N; ++i) {
      const ManifestTensor& e = *entries[i];
      CombinedCrc c =
          combine_crc_slices(slices_of(all, i, N, W), e.shape[0], row_bytes(e.shape, e.dtype));
      MOERUN_REQUIRE(c.error.empty(), "checkpoint verification slices: {}", c.error);
      if (c.crc != e.crc32)
        bad.push_back(fmt::format("dataset \"/{}\" in {} (crc32 {:08x}, manifest {:08x})", e.name,
                                  (fs::path(step_dir(ckpt_dir, step)) / e.file).string(), c.crc,
                                  e.crc32));
    }
    MOERUN_CONFIG_REQUIRE(bad.empty(), "checkpoint step {} is corrupt: checksum mismatch in {}",
                          step, fmt::join(bad, "; "));
  });
  return m.meta;
}

std::vector<int64_t> committed_steps(const std::string& ckpt_dir, const Comm& world) {
  std::vector<int64_t> steps;
  on_root(world, [&] {
    const CheckpointScan scan = scan_checkpoints(ckpt_dir);
    steps.assign(scan.committed.rbegin(), scan.committed.rend());
  });
  int64_t n = static_cast<int64_t>(steps.size());
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(&n, 1)), 0);
  steps.resize(static_cast<size_t>(n));
  world.broadcast(std::as_writable_bytes(std::span(steps)), 0);
  return steps;
}

CheckpointVerdict verify_checkpoint(const std::string& ckpt_dir, int64_t step, const Comm& world) {
  h5_silence_auto_print();
  const int W = world.size(), me = world.rank();
  const std::string dir = step_dir(ckpt_dir, step);

  // Rank 0 reads and checks the manifest and the file sizes; every rank parses the same text.
  std::string text;
  LocalFailure local;
  if (me == 0)
    local = capture_failure([&] {
      Manifest m0 = read_manifest(ckpt_dir, step);
      check_file_sizes(m0, dir);
      text = manifest_to_json(m0);
    });
  LocalFailure f = agree_on_failure(world, local);
  if (f.failed()) return {false, f.message};
  world.broadcast(text, 0);

  // Every rank CRCs an even share of each dataset's rows, read from the file.
  Manifest m;
  std::vector<CrcSlice> mine;
  f = agree_on_failure(
      world, capture_failure([&] {
        m = parse_manifest(text, (fs::path(dir) / kManifestName).string());
        mine.resize(m.tensors.size());
        for (const auto& mf : m.files) {
          const std::string path = (fs::path(dir) / mf.path).string();
          H5Id file = open_read_only(path);
          std::set<std::string> listed;
          for (size_t i = 0; i < m.tensors.size(); ++i) {
            const ManifestTensor& e = m.tensors[i];
            if (e.file != mf.path) continue;
            listed.insert(e.name);
            H5Id dset = open_checked(file, e, path);
            const Rows v = share(e.shape[0], me, W);
            mine[i] = {
                v.begin, v.count,
                crc_rows_from_file(dset, e.dtype, row_bytes(e.shape, e.dtype), v.begin, v.count)};
          }
          if (me != 0) continue;
          std::vector<std::string> names;
          H5_CHECK(H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names));
          for (const auto& name : names)
            MOERUN_CONFIG_REQUIRE(listed.count(name),
                                  "{} holds \"/{}\", which the manifest does "
                                  "not list",
                                  path, name);
        }
      }));
  if (f.failed()) return {false, f.message};
  const std::vector<int64_t> all = gather_slices(world, mine);
  std::string reason;
  if (me == 0) {
    std::vector<std::string> bad;
    const size_t N = m.tensors.size();
    for (size_t i = 0; i < N; ++i) {
      const ManifestTensor& e = m.tensors[i];
      CombinedCrc c =
          combine_crc_slices(slices_of(all, i, N, W), e.shape[0], row_bytes(e.shape, e.dtype));
      if (!c.error.empty()) {
        bad.push_back(fmt::format("dataset \"/{}\": {}", e.name, c.error));
      } else if (c.crc != e.crc32) {
        bad.push_back(fmt::format("dataset \"/{}\" in {} (crc32 {:08x}, manifest {:08x})", e.name,
                                  (fs::path(dir) / e.file).string(), c.crc, e.crc32));
      }
    }
    if (!bad.empty())
      reason = fmt::format("checkpoint step {} is corrupt: checksum mismatch in {}", step,
                           fmt::join(bad, "; "));
  }
  world.broadcast(reason, 0);
  return {reason.empty(), reason};
}

std::vector<std::string> verify_checkpoint(const std::string& ckpt_dir, int64_t step) {
  h5_silence_auto_print();
  std::vector<std::string> problems;
  Manifest m;
  try {
    m = read_manifest(ckpt_dir, step);
    check_file_sizes(m, step_dir(ckpt_dir, step));
  } catch (const std::exception& e) {
    problems.push_back(e.what());
    return problems;
  }
  for (const auto& f : m.files) {
    const std::string path = (fs::path(step_dir(ckpt_dir, step)) / f.path).string();
    LocalFailure err = capture_failure([&] {
      H5Id file = open_read_only(path);
      std::set<std::string> listed;
      for (const auto& t : m.tensors) {
        if (t.file != f.path) continue;
        listed.insert(t.name);
        LocalFailure e = capture_failure([&] {
          H5Id dset = open_checked(file, t, path);
          uint32_t crc =
              crc_rows_from_file(dset, t.dtype, row_bytes(t.shape, t.dtype), 0, t.shape[0]);
          MOERUN_CONFIG_REQUIRE(crc == t.crc32,
                                "checksum mismatch in dataset \"/{}\" in {} (crc32 {:08x}, "
                                "manifest {:08x})",
                                t.name, path, crc, t.crc32);
        });
        if (e.failed()) problems.push_back(e.message);
      }
      std::vector<std::string> names;
      H5_CHECK(H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names));
      for (const auto& name : names)
        if (!listed.count(name))
          problems.push_back(
              fmt::format("{} holds \"/{}\", which the manifest does not list", path, name));
    });
    if (err.failed()) problems.push_back(err.message);
  }
  return problems;
}

}  // namespace moerun::io
