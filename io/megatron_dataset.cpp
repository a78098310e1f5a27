// Megatron-LM indexed dataset reader: .idx read and checked once, .bin memory-mapped.
#include "io/megatron_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <utility>

#include "runtime/check.h"

namespace moerun::io {

static_assert(std::endian::native == std::endian::little,
              "Megatron files are little-endian and are read in place");

int64_t megatron_dtype_size(uint8_t code) {
  switch (code) {
    case 1:
    case 2:
      return 1;
    case 3:
    case 8:
      return 2;
    case 4:
    case 7:
      return 4;
    case 5:
    case 6:
      return 8;
    default:
      return 0;
  }
}

const char* megatron_dtype_name(uint8_t code) {
  static constexpr const char* kNames[] = {"?",   "u8",  "i8",  "i16", "i32",
                                           "i64", "f64", "f32", "u16"};
  return code >= 1 && code <= 8 ? kNames[code] : "unknown";
}

namespace {

// Closes a file descriptor on every path out of the constructor.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

int open_read_only(const std::string& path, Fd& fd, int64_t& bytes) {
  fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd.fd < 0) return errno;
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) return errno;
  if (S_ISDIR(st.st_mode)) return EISDIR;
  bytes = static_cast<int64_t>(st.st_size);
  return 0;
}

// pread until done: a single call may return fewer bytes than asked.
void read_exact(int fd, const std::string& path, int64_t offset, void* out, int64_t bytes) {
  auto* p = static_cast<char*>(out);
  while (bytes > 0) {
    ssize_t n = ::pread(fd, p, static_cast<size_t>(bytes), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw Error(fmt::format("megatron index '{}': read failed at byte {}: {}", path, offset,
                              n == 0 ? "unexpected end of file" : std::strerror(errno)));
    p += n;
    offset += n;
    bytes -= n;
  }
}

std::vector<int64_t> doc_token_offsets_of(const std::vector<int64_t>& doc_idx,
                                          const std::vector<int64_t>& seq_offsets) {
  const int64_t num_tokens = seq_offsets.back();
  // A stored doc_idx normally ends at S; sequences after its last entry (a builder that never
  // closed its final document) count as one more document, so every token has a document.
  std::vector<int64_t> out;
  out.reserve(doc_idx.size() + 2);
  for (int64_t s : doc_idx) out.push_back(seq_offsets[static_cast<size_t>(s)]);
  if (out.empty() || out.front() != 0) out.insert(out.begin(), 0);
  if (out.back() != num_tokens || out.size() == 1) out.push_back(num_tokens);
  return out;
}

template <class T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

MegatronDataset::MegatronDataset(std::string prefix, int64_t vocab_size)
    : prefix_(std::move(prefix)), vocab_size_(vocab_size) {
  const std::string idx = idx_path(), bin = bin_path();
  MOERUN_CONFIG_REQUIRE(vocab_size > 0 && vocab_size <= std::numeric_limits<int32_t>::max(),
                        "megatron dataset '{}': vocab size {} must lie in [1, 2^31)", prefix_,
                        vocab_size);

  // ---- .idx: header, then the three arrays, whose total size must match the file exactly.
  Fd idx_fd;
  int64_t idx_bytes = 0;
  if (int err = open_read_only(idx, idx_fd, idx_bytes))
    throw Error(fmt::format("megatron index '{}' cannot be opened: {}", idx, std::strerror(err)));
  if (idx_bytes < kMegatronHeaderBytes)
    throw Error(fmt::format("megatron index '{}' is truncated: {} bytes, the header alone is {}",
                            idx, idx_bytes, kMegatronHeaderBytes));
  char header[kMegatronHeaderBytes];
  read_exact(idx_fd.fd, idx, 0, header, kMegatronHeaderBytes);
  if (std::memcmp(header, kMegatronMagic, sizeof(kMegatronMagic)) != 0)
    throw Error(fmt::format("'{}' is not a Megatron index (magic is not MMIDIDX)", idx));
  const auto version = load<uint64_t>(header + 9);
  if (version != 1)
    throw Error(fmt::format("megatron index '{}' has version {}, this reader knows version 1", idx,
                            version));
  dtype_ = load<uint8_t>(header + 17);
  item_bytes_ = megatron_dtype_size(dtype_);
  if (item_bytes_ == 0)
    throw Error(fmt::format("megatron index '{}' has unknown dtype code {}", idx, int{dtype_}));
  if (dtype_ == 6 || dtype_ == 7)
    throw Error(fmt::format("megatron index '{}' has dtype {}, which holds no token ids", idx,
                            megatron_dtype_name(dtype_)));
  const auto n_seq = load<uint64_t>(header + 18);
  const auto n_doc = load<uint64_t>(header + 26);
  // Counts beyond the file's size are rejected before they are multiplied, so no overflow.
  const auto max_count = static_cast<uint64_t>(idx_bytes);
  if (n_seq > max_count || n_doc > max_count)
    throw Error(
        fmt::format("megatron index '{}' is truncated or corrupt: {} sequences and {} "
                    "documents cannot fit in {} bytes",
                    idx, n_seq, n_doc, idx_bytes));
  const int64_t expected = kMegatronHeaderBytes + static_cast<int64_t>(n_seq) * (4 + 8) +
                           static_cast<int64_t>(n_doc) * 8;
  if (idx_bytes != expected)
    throw Error(
        fmt::format("megatron index '{}' is {}: {} sequences and {} documents need {} "
                    "bytes, the file has {}",
                    idx, idx_bytes < expected ? "truncated" : "corrupt (too long)", n_seq, n_doc,
                    expected, idx_bytes));
  sizes_.resize(n_seq);
  pointers_.resize(n_seq);
  doc_idx_.resize(n_doc);
  int64_t at = kMegatronHeaderBytes;
  read_exact(idx_fd.fd, idx, at, sizes_.data(), static_cast<int64_t>(n_seq) * 4);
  at += static_cast<int64_t>(n_seq) * 4;
  read_exact(idx_fd.fd, idx, at, pointers_.data(), static_cast<int64_t>(n_seq) * 8);
  at += static_cast<int64_t>(n_seq) * 8;
  read_exact(idx_fd.fd, idx, at, doc_idx_.data(), static_cast<int64_t>(n_doc) * 8);

  // ---- .bin: every sequence must lie inside it.
  Fd bin_fd;
  if (int err = open_read_only(bin, bin_fd, bin_bytes_))
    throw Error(fmt::format("megatron data '{}' cannot be opened: {}", bin, std::strerror(err)));
  seq_offsets_.assign(n_seq + 1, 0);
  for (size_t i = 0; i < n_seq; ++i) {
    const int64_t size = sizes_[i], ptr = pointers_[i];
    if (size < 0 || ptr < 0 || ptr > bin_bytes_ || size * item_bytes_ > bin_bytes_ - ptr)
      throw Error(
          fmt::format("megatron data '{}': sequence {} (byte offset {}, {} tokens of {}) "
                      "lies outside the file ({} bytes); .idx and .bin do not match",
                      bin, i, ptr, size, megatron_dtype_name(dtype_), bin_bytes_));
    seq_offsets_[i + 1] = seq_offsets_[i] + size;
  }
  // doc_idx: sequence indices where documents start, from 0, non-decreasing, up to S.
  for (size_t d = 0; d < doc_idx_.size(); ++d) {
    const int64_t prev = d == 0 ? 0 : doc_idx_[d - 1];
    if (doc_idx_[d] < prev || doc_idx_[d] > static_cast<int64_t>(n_seq) ||
        (d == 0 && doc_idx_[0] != 0))
      throw Error(
          fmt::format("megatron index '{}': doc_idx[{}] = {} is malformed (must start at "
                      "0, not decrease, and stay <= {} sequences)",
                      idx, d, doc_idx_[d], n_seq));
  }
  doc_offsets_ = doc_token_offsets_of(doc_idx_, seq_offsets_);
  if (bin_bytes_ > 0) {
    void* p = ::mmap(nullptr, static_cast<size_t>(bin_bytes_), PROT_READ, MAP_SHARED, bin_fd.fd, 0);
    if (p == MAP_FAILED)
      throw Error(
          fmt::format("megatron data '{}' cannot be mapped: {}", bin, std::strerror(errno)));
    bin_ = static_cast<const std::byte*>(p);
  }
}

MegatronDataset::~MegatronDataset() {
  unmap();
}

void MegatronDataset::unmap() {
  if (bin_) ::munmap(const_cast<std::byte*>(bin_), static_cast<size_t>(bin_bytes_));
  bin_ = nullptr;
}

MegatronDataset::MegatronDataset(MegatronDataset&& other) noexcept
    : prefix_(std::move(other.prefix_)),
      vocab_size_(other.vocab_size_),
      dtype_(other.dtype_),
      item_bytes_(other.item_bytes_),
      bin_(std::exchange(other.bin_, nullptr)),
      bin_bytes_(other.bin_bytes_),
      sizes_(std::move(other.sizes_)),
      pointers_(std::move(other.pointers_)),
      doc_idx_(std::move(other.doc_idx_)),
      seq_offsets_(std::move(other.seq_offsets_)),
      doc_offsets_(std::move(other.doc_offsets_)) {}

MegatronDataset& MegatronDataset::operator=(MegatronDataset&& other) noexcept {
  if (this != &other) {
    unmap();
    prefix_ = std::move(other.prefix_);
    vocab_size_ = other.vocab_size_;
    dtype_ = other.dtype_;
    item_bytes_ = other.item_bytes_;
    bin_ = std::exchange(other.bin_, nullptr);
    bin_bytes_ = other.bin_bytes_;
    sizes_ = std::move(other.sizes_);
    pointers_ = std::move(other.pointers_);
    doc_idx_ = std::move(other.doc_idx_);
    seq_offsets_ = std::move(other.seq_offsets_);
    doc_offsets_ = std::move(other.doc_offsets_);
  }
  return *this;
}

namespace {
template <class T>
void convert_ids(const std::byte* src, int64_t count, int64_t vocab, int32_t* out, int64_t& bad_pos,
                 int64_t& bad_id) {
  for (int64_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, src + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
    const auto id = static_cast<int64_t>(v);
    if (id < 0 || id >= vocab) {
      bad_pos = i;
      bad_id = id;
      return;
    }
    out[i] = static_cast<int32_t>(id);
  }
}
}  // namespace

void MegatronDataset::convert(int64_t seq, int64_t first, int64_t count, int32_t* out) const {
  const std::byte* src = bin_ + pointers_[static_cast<size_t>(seq)] + first * item_bytes_;
  int64_t bad_pos = -1, bad_id = 0;
  switch (dtype_) {
    case 1:
      convert_ids<uint8_t>(src, count, vocab_size_, out, bad_pos, bad_id);
      break;
    case 2:
      convert_ids<int8_t>(src, count, vocab_size_, out, bad_pos, bad_id);
      break;
    case 3:
      convert_ids<int16_t>(src, count, vocab_size_, out, bad_pos, bad_id);
      break;
    case 4:
      convert_ids<int32_t>(src, count, vocab_size_, out, bad_pos, bad_id);
      break;
    case 5:
      convert_ids<int64_t>(src, count, vocab_size_, out, bad_pos, bad_id);
      break;
    case 8:
      convert_ids<uint16_t>(src, count, vocab_size_, out, bad_pos, bad_id);
      break;
    default:
      throw Error(fmt::format("megatron data '{}': dtype code {}", bin_path(), int{dtype_}));
  }
  if (bad_pos >= 0)
    throw Error(
        fmt::format("megatron data '{}': sequence {} holds token id {} at position {}, "
                    "outside the vocabulary (vocab size {}); is the vocab size right?",
                    bin_path(), seq, bad_id, first + bad_pos, vocab_size_));
}

std::vector<int32_t> MegatronDataset::read_sequence(int64_t seq) const {
  MOERUN_REQUIRE(seq >= 0 && seq < num_sequences(), "sequence {} is outside '{}' ({} sequences)",
                 seq, bin_path(), num_sequences());
  std::vector<int32_t> out(static_cast<size_t>(sizes_[static_cast<size_t>(seq)]));
  convert(seq, 0, static_cast<int64_t>(out.size()), out.data());
  return out;
}

void MegatronDataset::read_tokens(int64_t begin, std::span<int32_t> out) const {
  const auto count = static_cast<int64_t>(out.size());
  MOERUN_REQUIRE(begin >= 0 && begin + count <= num_tokens(),
                 "token range [{}, {}) is outside '{}' ({} tokens)", begin, begin + count,
                 bin_path(), num_tokens());
  if (count == 0) return;
  // The sequence holding `begin`: the last offset <= begin (empty sequences are skipped over).
  auto it = std::upper_bound(seq_offsets_.begin(), seq_offsets_.end(), begin);
  auto seq = static_cast<int64_t>(it - seq_offsets_.begin()) - 1;
  int64_t done = 0;
  while (done < count) {
    const int64_t seq_begin = seq_offsets_[static_cast<size_t>(seq)];
    const int64_t first = begin + done - seq_begin;
    const int64_t n = std::min<int64_t>(count - done, sizes_[static_cast<size_t>(seq)] - first);
    if (n > 0) convert(seq, first, n, out.data() + done);
    done += std::max<int64_t>(n, 0);
    ++seq;
  }
}

void MegatronDataset::validate_all() const {
  std::vector<int32_t> buffer;
  for (int64_t s = 0; s < num_sequences(); ++s) {
    buffer.resize(static_cast<size_t>(sizes_[static_cast<size_t>(s)]));
    convert(s, 0, static_cast<int64_t>(buffer.size()), buffer.data());
  }
}

namespace {
template <class T>
void append_value(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <class T>
void append_id(std::string& out, int64_t v, const std::string& prefix) {
  MOERUN_REQUIRE(v >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
                     v <= static_cast<int64_t>(std::numeric_limits<T>::max()),
                 "megatron dataset '{}': id {} does not fit its dtype", prefix, v);
  append_value(out, static_cast<T>(v));
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  MOERUN_CONFIG_REQUIRE(out.good(), "cannot write '{}'", path);
}
}  // namespace

void write_megatron_dataset(const std::string& prefix, uint8_t dtype_code,
                            const std::vector<std::vector<int64_t>>& sequences,
                            const std::vector<int64_t>& doc_idx) {
  MOERUN_REQUIRE(megatron_dtype_size(dtype_code) > 0 && dtype_code != 6 && dtype_code != 7,
                 "megatron dataset '{}': dtype code {} is not an integer dtype", prefix,
                 int{dtype_code});
  std::string bin, sizes, pointers;
  for (const auto& seq : sequences) {
    append_value(pointers, static_cast<int64_t>(bin.size()));
    append_value(sizes, static_cast<int32_t>(seq.size()));
    for (int64_t v : seq) {
      switch (dtype_code) {
        case 1:
          append_id<uint8_t>(bin, v, prefix);
          break;
        case 2:
          append_id<int8_t>(bin, v, prefix);
          break;
        case 3:
          append_id<int16_t>(bin, v, prefix);
          break;
        case 4:
          append_id<int32_t>(bin, v, prefix);
          break;
        case 5:
          append_id<int64_t>(bin, v, prefix);
          break;
        default:
          append_id<uint16_t>(bin, v, prefix);
          break;
      }
    }
  }
  std::string idx(kMegatronMagic, sizeof(kMegatronMagic));
  append_value<uint64_t>(idx, 1);
  append_value<uint8_t>(idx, dtype_code);
  append_value<uint64_t>(idx, sequences.size());
  append_value<uint64_t>(idx, doc_idx.size());
  idx += sizes;
  idx += pointers;
  for (int64_t d : doc_idx) append_value(idx, d);
  write_file(prefix + ".bin", bin);
  write_file(prefix + ".idx", idx);
}

}  // namespace moerun::io
