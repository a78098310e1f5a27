// Serial, one-tensor-at-a-time checkpoint reader and writer (see checkpoint_stream.h).
#include "io/checkpoint_stream.h"

#include <hdf5.h>

#include <bit>
#include <filesystem>
#include <set>

#include "io/h5_util.h"
#include "runtime/durable_file.h"

namespace moerun::io {

namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little,
              "checkpoint CRCs are computed over little-endian bytes in memory");

namespace {

hid_t file_type(DType d) {
  return d == DType::kF32 ? H5T_IEEE_F32LE : d == DType::kI32 ? H5T_STD_I32LE : H5T_STD_I64LE;
}
hid_t mem_type(DType d) {
  return d == DType::kF32   ? H5T_NATIVE_FLOAT
         : d == DType::kI32 ? H5T_NATIVE_INT32
                            : H5T_NATIVE_INT64;
}

// Serial access, without file locks (as save_checkpoint: they fail on many shared filesystems).
H5Id serial_access() {
  H5Id fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
#if H5_VERSION_GE(1, 10, 7)
  H5_CHECK(H5Pset_file_locking(fapl, false, true));
#endif
  return fapl;
}

const void* bytes_of(const Tensor& t) {
  if (t.nbytes() == 0) return nullptr;
  switch (t.dtype()) {
    case DType::kF32:
      return t.data<float>();
    case DType::kI32:
      return t.data<int32_t>();
    default:
      return t.data<int64_t>();
  }
}
void* bytes_of(Tensor& t) {
  return const_cast<void*>(bytes_of(static_cast<const Tensor&>(t)));
}

std::string shape_text(const std::vector<int64_t>& s) {
  return fmt::format("({})", fmt::join(s, ", "));
}

}  // namespace

// ---- reader ----------------------------------------------------------------------------------

struct CheckpointReader::Files {
  std::map<std::string, H5Id> by_name;  // manifest file name -> open file
};

CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;
CheckpointReader& CheckpointReader::operator=(CheckpointReader&&) noexcept = default;
CheckpointReader::~CheckpointReader() = default;

CheckpointReader CheckpointReader::open(const std::string& ckpt_dir, int64_t step) {
  h5_silence_auto_print();
  CheckpointReader r;
  r.dir_ = step_dir(ckpt_dir, step);
  r.manifest_ = read_manifest(ckpt_dir, step);
  for (size_t i = 0; i < r.manifest_.tensors.size(); ++i) r.index_[r.manifest_.tensors[i].name] = i;
  r.files_ = std::make_unique<Files>();
  for (const ManifestFile& f : r.manifest_.files) {
    const std::string path = (fs::path(r.dir_) / f.path).string();
    std::error_code ec;
    const auto st = fs::symlink_status(path, ec);
    MOERUN_CONFIG_REQUIRE(!ec && fs::is_regular_file(st), "checkpoint file {} is missing", path);
    const auto size = static_cast<int64_t>(fs::file_size(path, ec));
    MOERUN_CONFIG_REQUIRE(!ec && size == f.bytes,
                          "checkpoint file {} is {} bytes, the manifest says {} (truncated or "
                          "replaced)",
                          path, size, f.bytes);
    H5Id fapl = serial_access();
    const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl);
    if (id < 0)
      throw CheckpointError(
          fmt::format("checkpoint file {} cannot be opened as HDF5: {}", path, h5_error_stack()));
    r.files_->by_name.emplace(f.path, H5Id(id));
  }
  return r;
}

const ManifestTensor* CheckpointReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &manifest_.tensors[it->second];
}

Tensor CheckpointReader::read(const std::string& name) const {
  const ManifestTensor* e = find(name);
  MOERUN_CONFIG_REQUIRE(e != nullptr, "checkpoint {} has no tensor \"{}\"", dir_, name);
  const std::string path = (fs::path(dir_) / e->file).string();
  const std::string where = fmt::format("dataset \"/{}\" in {}", name, path);
  const hid_t file = files_->by_name.at(e->file);
  MOERUN_CONFIG_REQUIRE(h5_path_exists(file, "/" + name), "{} is missing", where);
  H5Id dset(H5_CHECK(H5Dopen2(file, ("/" + name).c_str(), H5P_DEFAULT)));
  H5Id space(H5_CHECK(H5Dget_space(dset)));
  const int nd = H5_CHECK(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(nd, 0)));
  H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  const std::vector<int64_t> shape(dims.begin(), dims.end());
  MOERUN_CONFIG_REQUIRE(shape == e->shape, "{} has shape {}, the manifest says {}", where,
                        shape_text(shape), shape_text(e->shape));
  H5Id type(H5_CHECK(H5Dget_type(dset)));
  MOERUN_CONFIG_REQUIRE(H5_CHECK(H5Tequal(type, file_type(e->dtype))) > 0,
                        "{} does not hold {} values", where, checkpoint_dtype_name(e->dtype));
  Tensor t = Tensor::empty(e->shape, e->dtype);
  if (t.nbytes() > 0)
    H5_CHECK(H5Dread(dset, mem_type(e->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes_of(t)));
  const uint32_t crc = t.nbytes() ? crc32_bytes(bytes_of(t), t.nbytes()) : 0u;
  MOERUN_CONFIG_REQUIRE(crc == e->crc32,
                        "checksum mismatch in {} (crc32 {:08x}, manifest {:08x}): the checkpoint "
                        "is corrupt",
                        where, crc, e->crc32);
  return t;
}

// ---- writer ----------------------------------------------------------------------------------

struct CheckpointWriter::File {
  H5Id id;
};

CheckpointWriter::CheckpointWriter(std::string ckpt_dir, int64_t step,
                                   std::vector<CheckpointTensorSpec> specs)
    : ckpt_dir_(std::move(ckpt_dir)), step_(step), specs_(std::move(specs)) {
  h5_silence_auto_print();
  MOERUN_CONFIG_REQUIRE(step_ >= 0, "checkpoint step {} is negative", step_);
  for (size_t i = 0; i < specs_.size(); ++i) {
    const CheckpointTensorSpec& s = specs_[i];
    MOERUN_CONFIG_REQUIRE(is_valid_tensor_name(s.name),
                          "checkpoint tensor name \"{}\" is not valid (printable, no '/')", s.name);
    MOERUN_CONFIG_REQUIRE(index_.emplace(s.name, i).second,
                          "checkpoint tensor \"{}\" is listed twice", s.name);
    MOERUN_CONFIG_REQUIRE(!s.shape.empty(), "checkpoint tensor \"{}\" needs a 1-D or larger shape",
                          s.name);
    for (int64_t d : s.shape)
      MOERUN_CONFIG_REQUIRE(d >= 0, "checkpoint tensor \"{}\" has a negative dim", s.name);
    checkpoint_dtype_name(s.dtype);  // throws on an unsupported dtype
  }
  written_.assign(specs_.size(), false);
  crc_.assign(specs_.size(), 0);
  dir_ = step_dir(ckpt_dir_, step_);
  MOERUN_CONFIG_REQUIRE(!fs::exists(fs::path(dir_) / kManifestName),
                        "checkpoint step {} is already committed in {}; refusing to overwrite it",
                        step_, dir_);
  std::error_code ec;
  fs::remove_all(dir_, ec);  // a partial step from a crashed run
  if (!ec) fs::create_directories(dir_, ec);
  MOERUN_REQUIRE(!ec, "cannot prepare checkpoint directory {}: {}", dir_, ec.message());
  writing([&] {
    H5Id fapl = serial_access();
    file_ = std::make_unique<File>();
    file_->id = H5Id(H5_CHECK(H5Fcreate(path().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl)));
    h5_write_attr(file_->id, "format", std::string(kCheckpointFormat));
    h5_write_attr(file_->id, "version", int64_t{kCheckpointVersion});
    h5_write_attr(file_->id, "step", step_);
    h5_write_attr(file_->id, "world_size", int64_t{1});
  });
}

std::string CheckpointWriter::path() const {
  return (fs::path(dir_) / kTensorFileName).string();
}

template <class F>
void CheckpointWriter::writing(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    throw Error(fmt::format("checkpoint step {}: writing {} failed: {}", step_, path(),
                            write_failure_cause(e, path())));
  }
}

CheckpointWriter::~CheckpointWriter() = default;

void CheckpointWriter::write(const std::string& name, const Tensor& t) {
  MOERUN_REQUIRE(!committed_ && file_, "checkpoint writer for {} is already committed", dir_);
  auto it = index_.find(name);
  MOERUN_REQUIRE(it != index_.end(), "checkpoint tensor \"{}\" was not declared for {}", name,
                 dir_);
  const size_t i = it->second;
  const CheckpointTensorSpec& s = specs_[i];
  MOERUN_REQUIRE(!written_[i], "checkpoint tensor \"{}\" is written twice", name);
  MOERUN_REQUIRE(t.device() == Device::kCpu && t.dtype() == s.dtype && t.shape() == s.shape,
                 "checkpoint tensor \"{}\" is {} {}, declared {} {}", name, to_string(t.dtype()),
                 t.shape_str(), checkpoint_dtype_name(s.dtype), shape_text(s.shape));
  writing([&] {
    std::vector<hsize_t> dims(s.shape.begin(), s.shape.end());
    H5Id space(H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)));
    H5Id dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
    H5_CHECK(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));  // the whole tensor is written
    H5Id dset(H5_CHECK(H5Dcreate2(file_->id, ("/" + name).c_str(), file_type(s.dtype), space,
                                  H5P_DEFAULT, dcpl, H5P_DEFAULT)));
    h5_write_attr(dset, "name", name);
    h5_write_attr(dset, "dtype", std::string(checkpoint_dtype_name(s.dtype)));
    h5_write_attr(dset, "kind", std::string(to_string(s.kind)));
    if (t.nbytes() > 0) {
      H5_CHECK(H5Dwrite(dset, mem_type(s.dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes_of(t)));
      crc_[i] = crc32_bytes(bytes_of(t), t.nbytes());
    }
  });
  written_[i] = true;
  bytes_ += static_cast<int64_t>(t.nbytes());
}

void CheckpointWriter::commit(const nlohmann::json& meta) {
  MOERUN_REQUIRE(!committed_ && file_, "checkpoint writer for {} is already committed", dir_);
  MOERUN_CONFIG_REQUIRE(meta.is_object(), "checkpoint meta must be a JSON object");
  std::vector<std::string> missing;
  for (size_t i = 0; i < specs_.size(); ++i)
    if (!written_[i]) missing.push_back(specs_[i].name);
  MOERUN_REQUIRE(missing.empty(), "cannot commit checkpoint {}: never written: {}", dir_,
                 fmt::join(missing, ", "));
  writing([&] {
    H5_CHECK(H5Fflush(file_->id, H5F_SCOPE_GLOBAL));
    H5_CHECK(H5Fclose(file_->id.release()));
  });
  file_.reset();

  Manifest m;
  m.step = step_;
  m.world_size = 1;
  m.meta = meta;
  for (size_t i = 0; i < specs_.size(); ++i) {
    const CheckpointTensorSpec& s = specs_[i];
    m.tensors.push_back({s.name, s.dtype, s.shape, s.kind, kTensorFileName, crc_[i]});
  }
  const std::string path = (fs::path(dir_) / kTensorFileName).string();
  m.files.push_back({kTensorFileName, static_cast<int64_t>(fs::file_size(path))});
  // The commit protocol of save_checkpoint: data durable, manifest (the commit point), latest.
  try {
    fsync_path(path);
    fsync_path(dir_);
    const std::string manifest = (fs::path(dir_) / kManifestName).string();
    write_file_synced(manifest + ".tmp", manifest_to_json(m));
    rename_durably(manifest + ".tmp", manifest);
    write_file_atomic((fs::path(ckpt_dir_) / kLatestName).string(), fmt::format("{}\n", step_));
  } catch (const std::exception& e) {
    throw Error(fmt::format("checkpoint step {}: committing failed: {}", step_, e.what()));
  }
  committed_ = true;
}

}  // namespace moerun::io
