// HDF5 writer and reader of the moerun token dataset (layout in token_dataset.h).
#include "io/token_dataset.h"

#include <algorithm>
#include <array>
#include <filesystem>

#include "io/h5_util.h"

namespace moerun::io {

namespace {

constexpr std::array<Split, 2> kSplits = {Split::kTrain, Split::kValidation};
// 64 Ki tokens (256 KiB) a chunk: a shuffled loader reads one window of a few thousand tokens
// at a time, and with deflate every read decompresses whole chunks, so chunks stay small.
constexpr hsize_t kTokenChunk = 64 * 1024;
// Tokens buffered by the writer before an append to the file.
constexpr size_t kFlushTokens = 4 * 1024 * 1024;

int split_index(Split split) {
  return split == Split::kTrain ? 0 : 1;
}

// File access without HDF5's file locks: they fail on many shared filesystems (Lustre, NFS) and
// the dataset is written once then only read. Before 1.10.7 the call does not exist and the
// environment variable HDF5_USE_FILE_LOCKING=FALSE does the same job.
H5Id file_access_plist() {
  H5Id fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
#if H5_VERSION_GE(1, 10, 7)
  H5_CHECK(H5Pset_file_locking(fapl, false, true));
#endif
  return fapl;
}

}  // namespace

const char* to_string(Split split) {
  return split == Split::kTrain ? "train" : "validation";
}

Split parse_split(std::string_view name) {
  if (name == "train") return Split::kTrain;
  if (name == "validation") return Split::kValidation;
  throw Error(fmt::format("unknown split '{}' (expected train or validation)", name));
}

void TokenDatasetMeta::validate() const {
  MOERUN_CONFIG_REQUIRE(vocab_size > 0, "vocab_size ({}) must be positive", vocab_size);
  MOERUN_CONFIG_REQUIRE(eod_id >= 0 && eod_id < vocab_size,
                        "eod_id ({}) must lie in [0, vocab_size {})", eod_id, vocab_size);
  MOERUN_CONFIG_REQUIRE(!domains.empty(), "a token dataset needs at least one domain");
  for (const auto& d : domains) MOERUN_CONFIG_REQUIRE(!d.empty(), "domain names must not be empty");
}

// ---- writer --------------------------------------------------------------------------------

struct TokenDatasetWriter::Impl {
  std::string path;
  std::string tmp_path;
  TokenDatasetMeta meta;
  H5Id file;
  struct SplitData {
    H5Id group, tokens;
    std::vector<int32_t> buffer;          // not yet appended to `tokens`
    int64_t written = 0;                  // tokens already in the file
    std::vector<int64_t> doc_offsets{0};  // (D+1)
    std::vector<int32_t> doc_domain;      // (D)
  };
  std::array<SplitData, 2> splits;
  bool closed = false;

  void flush(SplitData& s) {
    if (s.buffer.empty()) return;
    hsize_t new_size[1] = {static_cast<hsize_t>(s.written) + s.buffer.size()};
    H5_CHECK(H5Dset_extent(s.tokens, new_size));
    H5Id file_space(H5_CHECK(H5Dget_space(s.tokens)));
    hsize_t start[1] = {static_cast<hsize_t>(s.written)};
    hsize_t count[1] = {s.buffer.size()};
    H5_CHECK(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, nullptr, count, nullptr));
    H5Id mem_space(H5_CHECK(H5Screate_simple(1, count, nullptr)));
    H5_CHECK(
        H5Dwrite(s.tokens, H5T_NATIVE_INT32, mem_space, file_space, H5P_DEFAULT, s.buffer.data()));
    s.written += static_cast<int64_t>(s.buffer.size());
    s.buffer.clear();
  }
};

TokenDatasetWriter::TokenDatasetWriter(std::string path, TokenDatasetMeta meta,
                                       Compression compression)
    : impl_(std::make_unique<Impl>()) {
  h5_silence_auto_print();
  meta.validate();
  impl_->path = std::move(path);
  impl_->tmp_path = impl_->path + ".tmp";
  impl_->meta = std::move(meta);
  try {
    H5Id fapl = file_access_plist();
    impl_->file =
        H5Id(H5_CHECK(H5Fcreate(impl_->tmp_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl)));
    H5Id dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
    hsize_t chunk[1] = {kTokenChunk};
    H5_CHECK(H5Pset_chunk(dcpl, 1, chunk));
    if (compression == Compression::kDeflate) {
      MOERUN_REQUIRE(H5_CHECK(H5Zfilter_avail(H5Z_FILTER_DEFLATE)) > 0,
                     "this HDF5 library has no deflate filter; write with Compression::kNone");
      // Byte shuffle first: ids < 2^16 leave two of four bytes zero, which deflate then squeezes.
      H5_CHECK(H5Pset_shuffle(dcpl));
      H5_CHECK(H5Pset_deflate(dcpl, 1));
    }
    for (Split split : kSplits) {
      auto& s = impl_->splits[split_index(split)];
      s.group = H5Id(H5_CHECK(
          H5Gcreate2(impl_->file, to_string(split), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)));
      hsize_t dims[1] = {0}, max_dims[1] = {H5S_UNLIMITED};
      H5Id space(H5_CHECK(H5Screate_simple(1, dims, max_dims)));
      s.tokens = H5Id(H5_CHECK(
          H5Dcreate2(s.group, "tokens", H5T_STD_I32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)));
    }
  } catch (const Error& e) {  // the cause in a few words, not HDF5's call chain
    throw Error(fmt::format("cannot create token dataset '{}': {}", impl_->tmp_path,
                            write_failure_cause(e, impl_->tmp_path)));
  }
}

TokenDatasetWriter::~TokenDatasetWriter() {
  if (!impl_->closed) {
    for (auto& s : impl_->splits) {
      s.tokens.reset();
      s.group.reset();
    }
    impl_->file.reset();
    std::error_code ec;
    std::filesystem::remove(impl_->tmp_path, ec);
  }
}

void TokenDatasetWriter::add_document(Split split, int32_t domain,
                                      std::span<const int32_t> tokens) {
  MOERUN_REQUIRE(!impl_->closed, "token dataset '{}' is already closed", impl_->path);
  const auto& meta = impl_->meta;
  MOERUN_REQUIRE(domain >= 0 && domain < static_cast<int32_t>(meta.domains.size()),
                 "domain {} is not one of the {} domains of '{}'", domain, meta.domains.size(),
                 impl_->path);
  MOERUN_REQUIRE(!tokens.empty() && tokens.back() == meta.eod_id,
                 "documents of '{}' must end with eod_id {}", impl_->path, meta.eod_id);
  for (int32_t id : tokens)
    MOERUN_REQUIRE(id >= 0 && id < meta.vocab_size, "token id {} is outside vocab_size {} ('{}')",
                   id, meta.vocab_size, impl_->path);
  auto& s = impl_->splits[split_index(split)];
  s.buffer.insert(s.buffer.end(), tokens.begin(), tokens.end());
  s.doc_offsets.push_back(s.doc_offsets.back() + static_cast<int64_t>(tokens.size()));
  s.doc_domain.push_back(domain);
  if (s.buffer.size() >= kFlushTokens) {
    try {
      impl_->flush(s);
    } catch (const Error& e) {
      throw Error(fmt::format("writing token dataset '{}': {}", impl_->tmp_path, e.what()));
    }
  }
}

void TokenDatasetWriter::close() {
  if (impl_->closed) return;
  try {
    for (auto& s : impl_->splits) {
      impl_->flush(s);
      h5_write_dataset_1d(s.group, "doc_offsets", s.doc_offsets);
      h5_write_dataset_1d(s.group, "doc_domain", s.doc_domain);
      s.tokens.reset();
      s.group.reset();
    }
    const auto& meta = impl_->meta;
    h5_write_attr(impl_->file, "format", std::string(kTokenFormat));
    h5_write_attr(impl_->file, "version", kTokenFormatVersion);
    h5_write_attr(impl_->file, "vocab_size", int64_t{meta.vocab_size});
    h5_write_attr(impl_->file, "eod_id", int64_t{meta.eod_id});
    h5_write_attr(impl_->file, "tokenizer", meta.tokenizer);
    h5_write_attr(impl_->file, "domains", meta.domains);
    H5_CHECK(H5Fclose(impl_->file.release()));
  } catch (const Error& e) {
    throw Error(fmt::format("writing token dataset '{}': {}", impl_->tmp_path, e.what()));
  }
  std::error_code ec;
  std::filesystem::rename(impl_->tmp_path, impl_->path, ec);
  MOERUN_CONFIG_REQUIRE(!ec, "cannot rename '{}' to '{}': {}", impl_->tmp_path, impl_->path,
                        ec.message());
  impl_->closed = true;
}

int64_t TokenDatasetWriter::num_docs(Split split) const {
  return static_cast<int64_t>(impl_->splits[split_index(split)].doc_domain.size());
}

int64_t TokenDatasetWriter::num_tokens(Split split) const {
  return impl_->splits[split_index(split)].doc_offsets.back();
}

// ---- reader --------------------------------------------------------------------------------

struct TokenDatasetReader::Impl {
  std::string path;
  TokenDatasetMeta meta;
  H5Id file;
  struct SplitData {
    H5Id tokens;
    int64_t num_tokens = 0;
    std::vector<int64_t> doc_offsets;
    std::vector<int32_t> doc_domain;
  };
  std::array<SplitData, 2> splits;

  void open();
  void open_split(Split split);
};

void TokenDatasetReader::Impl::open() {
  namespace fs = std::filesystem;
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (!fs::exists(status)) throw Error("does not exist (create it with `moerun prepare`)");
  if (fs::is_directory(status)) throw Error("is a directory, not a token dataset file");

  H5Id fapl = file_access_plist();
#if H5_VERSION_GE(1, 12, 0)
  htri_t is_hdf5 = H5Fis_accessible(path.c_str(), fapl);
#else
  htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
#endif
  if (is_hdf5 <= 0) {
    h5_error_stack();  // clear
    throw Error("is not an HDF5 file (or cannot be read)");
  }
  file = H5Id(H5_CHECK(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl)));

  auto format = h5_read_attr_string(file, "format");
  if (!format || *format != kTokenFormat)
    throw Error(
        fmt::format("is not a moerun token dataset (root attribute format is {}, "
                    "expected '{}')",
                    format ? "'" + *format + "'" : std::string("missing"), kTokenFormat));
  auto version = h5_read_attr_int(file, "version");
  if (!version || *version != kTokenFormatVersion)
    throw Error(fmt::format("has token format version {}, this build reads version {}",
                            version ? std::to_string(*version) : std::string("(missing)"),
                            kTokenFormatVersion));
  auto vocab = h5_read_attr_int(file, "vocab_size");
  auto eod = h5_read_attr_int(file, "eod_id");
  auto domains = h5_read_attr_strings(file, "domains");
  if (!vocab || !eod || !domains)
    throw Error("lacks one of the root attributes vocab_size, eod_id, domains");
  meta.vocab_size = static_cast<int32_t>(*vocab);
  meta.eod_id = static_cast<int32_t>(*eod);
  meta.domains = std::move(*domains);
  meta.tokenizer = h5_read_attr_string(file, "tokenizer").value_or("");
  meta.validate();
  for (Split split : kSplits) open_split(split);
}

void TokenDatasetReader::Impl::open_split(Split split) {
  auto& s = splits[split_index(split)];
  std::string group = std::string("/") + to_string(split);
  for (const char* name : {"tokens", "doc_offsets", "doc_domain"}) {
    std::string p = group + "/" + name;
    if (!h5_path_exists(file, p)) throw Error(fmt::format("has no dataset {}", p));
  }
  // A larger chunk cache than HDF5's 1 MiB default keeps a few decompressed chunks around for
  // neighbouring windows.
  H5Id dapl(H5_CHECK(H5Pcreate(H5P_DATASET_ACCESS)));
  H5_CHECK(H5Pset_chunk_cache(dapl, 1009, 16u << 20, 0.75));
  s.tokens = H5Id(H5_CHECK(H5Dopen2(file, (group + "/tokens").c_str(), dapl)));
  {
    H5Id type(H5_CHECK(H5Dget_type(s.tokens)));
    if (H5Tget_class(type) != H5T_INTEGER)
      throw Error(fmt::format("{}/tokens is not an integer dataset", group));
  }
  s.num_tokens = h5_length_1d(s.tokens);
  H5Id offsets(H5_CHECK(H5Dopen2(file, (group + "/doc_offsets").c_str(), H5P_DEFAULT)));
  H5Id domain(H5_CHECK(H5Dopen2(file, (group + "/doc_domain").c_str(), H5P_DEFAULT)));
  s.doc_offsets = h5_read_all_1d<int64_t>(offsets);
  s.doc_domain = h5_read_all_1d<int32_t>(domain);

  // The loader trusts these arrays (binary search, slice bounds), so they are checked once here.
  const auto& off = s.doc_offsets;
  if (off.empty() || off.front() != 0 || off.back() != s.num_tokens)
    throw Error(
        fmt::format("{}/doc_offsets must run from 0 to the token count {} (has {} "
                    "entries, last {})",
                    group, s.num_tokens, off.size(), off.empty() ? -1 : off.back()));
  for (size_t i = 1; i < off.size(); ++i)
    if (off[i] < off[i - 1])
      throw Error(fmt::format("{}/doc_offsets decreases at document {}", group, i - 1));
  if (s.doc_domain.size() + 1 != off.size())
    throw Error(fmt::format("{}/doc_domain has {} entries for {} documents", group,
                            s.doc_domain.size(), off.size() - 1));
  const auto n_domains = static_cast<int32_t>(meta.domains.size());
  for (size_t d = 0; d < s.doc_domain.size(); ++d)
    if (s.doc_domain[d] < 0 || s.doc_domain[d] >= n_domains)
      throw Error(fmt::format("{}/doc_domain[{}] = {} is not one of the {} domains", group, d,
                              s.doc_domain[d], n_domains));
}

TokenDatasetReader::TokenDatasetReader(std::string path) : impl_(std::make_unique<Impl>()) {
  h5_silence_auto_print();
  impl_->path = std::move(path);
  try {
    impl_->open();
  } catch (const Error& e) {
    throw Error(fmt::format("token dataset '{}' {}", impl_->path, e.what()));
  }
}

TokenDatasetReader::~TokenDatasetReader() = default;

const std::string& TokenDatasetReader::path() const {
  return impl_->path;
}
const TokenDatasetMeta& TokenDatasetReader::meta() const {
  return impl_->meta;
}
int64_t TokenDatasetReader::num_tokens(Split split) const {
  return impl_->splits[split_index(split)].num_tokens;
}
int64_t TokenDatasetReader::num_docs(Split split) const {
  return static_cast<int64_t>(impl_->splits[split_index(split)].doc_domain.size());
}
const std::vector<int64_t>& TokenDatasetReader::doc_offsets(Split split) const {
  return impl_->splits[split_index(split)].doc_offsets;
}
const std::vector<int32_t>& TokenDatasetReader::doc_domain(Split split) const {
  return impl_->splits[split_index(split)].doc_domain;
}

void TokenDatasetReader::read_tokens(Split split, int64_t begin, std::span<int32_t> out) const {
  const auto& s = impl_->splits[split_index(split)];
  const auto count = static_cast<int64_t>(out.size());
  MOERUN_REQUIRE(begin >= 0 && begin + count <= s.num_tokens,
                 "token dataset '{}': range [{}, {}) is outside /{}/tokens ({} tokens)",
                 impl_->path, begin, begin + count, to_string(split), s.num_tokens);
  try {
    h5_read_slice_1d(s.tokens, begin, count, out.data());
  } catch (const Error& e) {
    throw Error(fmt::format("token dataset '{}': reading /{}/tokens[{}:{}]: {}", impl_->path,
                            to_string(split), begin, begin + count, e.what()));
  }
  const int32_t vocab = impl_->meta.vocab_size;
  for (int64_t i = 0; i < count; ++i)
    if (out[i] < 0 || out[i] >= vocab)
      throw Error(
          fmt::format("token dataset '{}': /{}/tokens[{}] = {} is outside the vocabulary "
                      "(vocab_size {})",
                      impl_->path, to_string(split), begin + i, out[i], vocab));
}

std::vector<int32_t> TokenDatasetReader::read_document(Split split, int64_t doc) const {
  const auto& off = doc_offsets(split);
  MOERUN_REQUIRE(doc >= 0 && doc + 1 < static_cast<int64_t>(off.size()),
                 "document {} is outside /{} of '{}' ({} documents)", doc, to_string(split),
                 impl_->path, off.size() - 1);
  std::vector<int32_t> out(static_cast<size_t>(off[doc + 1] - off[doc]));
  read_tokens(split, off[doc], out);
  return out;
}

}  // namespace moerun::io
