// safetensors reader, writer, index and shard planner (format and guarantees in safetensors.h).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

#include <fmt/ranges.h>

#include "runtime/check.h"
#include "runtime/durable_file.h"
#include "runtime/half.h"
#include "runtime/printable.h"

namespace moerun::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

namespace {

constexpr size_t kConvertChunk = 1 << 16;  // elements per conversion chunk
constexpr int kMaxJsonDepth = 16;          // the header needs 3 ({ {name: { shape: [ )

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  throw Error(fmt::format("safetensors file '{}': {}", path, msg));
}

std::string errno_text() {
  return std::strerror(errno);
}

// Rejects deeply nested JSON before the recursive DOM ever sees it.
int json_depth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
      if (max_depth > kMaxJsonDepth) return max_depth;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

void write_all_fd(int fd, uint64_t offset, std::span<const std::byte> data, const std::string& path,
                  const std::string& what) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n =
        ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail(path, fmt::format("writing {}: {}", what, n < 0 ? errno_text() : "no progress"));
    done += static_cast<size_t>(n);
  }
}

std::string shape_text(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

size_t safetensors_dtype_size(std::string_view dtype) {
  static const std::pair<std::string_view, size_t> kSizes[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2},  {"BF16", 2},    {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
      {"U16", 2}, {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
  };
  for (const auto& [name, size] : kSizes)
    if (name == dtype) return size;
  return 0;
}

uint64_t safetensors_numel(std::span<const int64_t> shape, const std::string& what) {
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] < 0)
      throw Error(fmt::format("{}: shape dim {} is negative ({})", what, i, shape[i]));
  // A zero dim makes the tensor empty whatever the other dims are (no spurious overflow).
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  uint64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n))
      throw Error(fmt::format("{}: element count of shape {} overflows", what, shape_text(shape)));
  return n;
}

uint64_t safetensors_nbytes(const SafetensorsSpec& spec, const std::string& what) {
  const size_t size = safetensors_dtype_size(spec.dtype);
  if (size == 0) throw Error(fmt::format("{}: unknown dtype '{}'", what, spec.dtype));
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(safetensors_numel(spec.shape, what), size, &bytes))
    throw Error(fmt::format("{}: byte size of shape {} x {} overflows", what,
                            shape_text(spec.shape), spec.dtype));
  return bytes;
}

// ---- reader ----------------------------------------------------------------------------------

struct SafetensorsFile::Source {
  int fd = -1;
  std::vector<std::byte> mem;  // used when fd < 0
  ~Source() {
    if (fd >= 0) ::close(fd);
  }
};

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  auto src = std::make_shared<Source>();
  src->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (src->fd < 0) fail(path, "cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(src->fd, &st) != 0) fail(path, "fstat: " + errno_text());
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  f.src_ = std::move(src);
  f.parse(static_cast<uint64_t>(st.st_size));
  return f;
}

SafetensorsFile SafetensorsFile::from_memory(std::vector<std::byte> bytes,
                                             const std::string& label) {
  SafetensorsFile f;
  f.path_ = label;
  auto src = std::make_shared<Source>();
  src->mem = std::move(bytes);
  const uint64_t size = src->mem.size();
  f.src_ = std::move(src);
  f.parse(size);
  return f;
}

void SafetensorsFile::read_at(uint64_t offset, std::span<std::byte> out,
                              const std::string& what) const {
  if (src_->fd < 0) {
    const auto& mem = src_->mem;
    if (offset > mem.size() || out.size() > mem.size() - offset)
      fail(path_, fmt::format("{} is truncated (needs bytes [{}, {}), file has {})", what, offset,
                              offset + out.size(), mem.size()));
    if (!out.empty()) std::memcpy(out.data(), mem.data() + offset, out.size());
    return;
  }
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n =
        ::pread(src_->fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path_, fmt::format("reading {}: {}", what, errno_text()));
    if (n == 0)
      fail(path_, fmt::format("{} is truncated (needs bytes [{}, {}), read stopped at {})", what,
                              offset, offset + out.size(), offset + done));
    done += static_cast<size_t>(n);
  }
}

void SafetensorsFile::parse(uint64_t total_size) {
  if (total_size < 8)
    fail(path_, fmt::format("{} bytes, shorter than the 8-byte header length", total_size));
  std::byte len_bytes[8];
  read_at(0, len_bytes, "the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint64_t>(len_bytes[i]);
  if (n > kSafetensorsMaxHeader)
    fail(path_,
         fmt::format("header length {} exceeds the {}-byte limit", n, kSafetensorsMaxHeader));
  if (n > total_size - 8)
    fail(path_, fmt::format("header length {} exceeds the file ({} bytes after the length field)",
                            n, total_size - 8));
  if (n < 2) fail(path_, fmt::format("header length {} is too short for a JSON object", n));
  header_len_ = n;
  const uint64_t data_size = total_size - 8 - n;

  std::string text(n, '\0');
  read_at(8, std::as_writable_bytes(std::span(text.data(), text.size())), "the header");
  if (text[0] != '{')
    fail(path_, fmt::format("header does not start with '{{' (it starts with \"{}\"; is the "
                            "header length {} right?)",
                            printable(text, 16), n));
  if (json_depth(text) > kMaxJsonDepth)
    fail(path_, fmt::format("header JSON nests deeper than {} levels", kMaxJsonDepth));

  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(
        text, [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
          if (depth == 1 && ev == nlohmann::json::parse_event_t::key && duplicate.empty()) {
            const auto& key = parsed.get_ref<const std::string&>();
            if (!seen.insert(key).second) duplicate = key;
          }
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    // The parser quotes what it last read, which may be binary when the length is wrong.
    fail(path_, fmt::format("header ({} bytes, as the length field says) is not valid JSON: {}", n,
                            printable(e.what(), 400)));
  }
  if (!duplicate.empty())
    fail(path_, fmt::format("tensor '{}' appears twice in the header", duplicate));
  if (!header.is_object()) fail(path_, "header is not a JSON object");

  for (const auto& [key, val] : header.items()) {
    if (key == "__metadata__") {
      if (!val.is_object()) fail(path_, "'__metadata__' is not an object");
      for (const auto& [mk, mv] : val.items())
        if (!mv.is_string())
          fail(path_, fmt::format("'__metadata__' value '{}' is not a string", mk));
      metadata_ = val;
      continue;
    }
    const std::string what = fmt::format("tensor '{}'", key);
    if (key.empty()) fail(path_, "a tensor has an empty name");
    if (!val.is_object()) fail(path_, what + ": entry is not an object");
    SafetensorsEntry e;
    e.name = key;
    auto dt = val.find("dtype");
    if (dt == val.end() || !dt->is_string())
      fail(path_, what + ": 'dtype' missing or not a string");
    e.dtype = dt->get<std::string>();
    const size_t esize = safetensors_dtype_size(e.dtype);
    if (esize == 0) fail(path_, fmt::format("{}: unknown dtype '{}'", what, e.dtype));

    auto sh = val.find("shape");
    if (sh == val.end() || !sh->is_array()) fail(path_, what + ": 'shape' missing or not an array");
    for (size_t i = 0; i < sh->size(); ++i) {
      const auto& d = (*sh)[i];
      if (d.is_number_unsigned()) {
        const uint64_t u = d.get<uint64_t>();
        if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          fail(path_, fmt::format("{}: shape dim {} is too large ({})", what, i, u));
        e.shape.push_back(static_cast<int64_t>(u));
      } else if (d.is_number_integer()) {
        fail(path_, fmt::format("{}: shape dim {} is negative ({})", what, i, d.get<int64_t>()));
      } else {
        fail(path_, fmt::format("{}: shape dim {} is not an integer", what, i));
      }
    }
    try {
      e.numel = safetensors_numel(e.shape, what);
    } catch (const Error& err) {
      fail(path_, err.what());
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(e.numel, static_cast<uint64_t>(esize), &nbytes))
      fail(path_, fmt::format("{}: byte size of shape {} x {} overflows", what, shape_text(e.shape),
                              e.dtype));

    auto off = val.find("data_offsets");
    if (off == val.end() || !off->is_array() || off->size() != 2 ||
        !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
      fail(path_, what + ": 'data_offsets' must be two non-negative integers");
    e.begin = (*off)[0].get<uint64_t>();
    e.end = (*off)[1].get<uint64_t>();
    if (e.end < e.begin)
      fail(path_,
           fmt::format("{}: data_offsets [{}, {}] end before they begin", what, e.begin, e.end));
    if (e.end > data_size)
      fail(path_, fmt::format("{}: data_offsets [{}, {}] run past the data section ({} bytes)",
                              what, e.begin, e.end, data_size));
    if (e.end - e.begin != nbytes)
      fail(path_,
           fmt::format("{}: data_offsets [{}, {}] hold {} bytes, but shape {} x {} needs {}", what,
                       e.begin, e.end, e.end - e.begin, shape_text(e.shape), e.dtype, nbytes));
    entries_.push_back(std::move(e));
  }

  std::sort(entries_.begin(), entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  // Empty tensors occupy no bytes and cannot overlap anything.
  const SafetensorsEntry* last = nullptr;
  for (const SafetensorsEntry& e : entries_) {
    if (e.nbytes() == 0) continue;
    if (last && e.begin < last->end)
      fail(path_, fmt::format("tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", last->name,
                              last->begin, last->end, e.name, e.begin, e.end));
    last = &e;
  }
  for (size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path_, fmt::format("no tensor '{}'", name));
  return entries_[it->second];
}

void SafetensorsFile::read(const std::string& name, std::span<std::byte> out) const {
  const SafetensorsEntry& e = entry(name);
  if (out.size() != e.nbytes())
    fail(path_, fmt::format("tensor '{}': buffer of {} bytes, the tensor has {}", name, out.size(),
                            e.nbytes()));
  read_at(data_offset() + e.begin, out, fmt::format("tensor '{}'", name));
}

void SafetensorsFile::read_f32(const std::string& name, std::span<float> out) const {
  const SafetensorsEntry& e = entry(name);
  const std::string what = fmt::format("tensor '{}'", name);
  if (out.size() != e.numel)
    fail(path_, fmt::format("{}: buffer of {} floats, the tensor has {} elements", what, out.size(),
                            e.numel));
  if (e.dtype == "F32") {
    read_at(data_offset() + e.begin, std::as_writable_bytes(out), what);
    return;
  }
  const bool bf16 = e.dtype == "BF16";
  if (!bf16 && e.dtype != "F16")
    fail(path_, fmt::format("{}: dtype {} cannot be read as f32", what, e.dtype));
  std::vector<uint16_t> buf(std::min<uint64_t>(e.numel, kConvertChunk));
  for (uint64_t i = 0; i < e.numel; i += buf.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), e.numel - i));
    std::span<uint16_t> chunk(buf.data(), n);
    read_at(data_offset() + e.begin + 2 * i, std::as_writable_bytes(chunk), what);
    if (bf16) {
      bf16_to_f32(chunk, out.subspan(i, n));
    } else {
      f16_to_f32(chunk, out.subspan(i, n));
    }
  }
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  std::vector<float> out(entry(name).numel);
  read_f32(name, out);
  return out;
}

// ---- writer ----------------------------------------------------------------------------------

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<SafetensorsSpec> specs,
                                     const nlohmann::json& metadata)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp"), specs_(std::move(specs)) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.is_object()) fail(path_, "metadata is not a JSON object");
  if (!metadata.empty()) {
    for (const auto& [k, v] : metadata.items())
      if (!v.is_string()) fail(path_, fmt::format("metadata value '{}' is not a string", k));
    header["__metadata__"] = nlohmann::ordered_json::parse(metadata.dump());
  }
  for (size_t i = 0; i < specs_.size(); ++i) {
    const SafetensorsSpec& s = specs_[i];
    const std::string what = fmt::format("tensor '{}'", s.name);
    if (s.name.empty() || s.name == "__metadata__")
      fail(path_, fmt::format("invalid tensor name '{}'", s.name));
    if (!index_.emplace(s.name, i).second) fail(path_, what + " is listed twice");
    uint64_t bytes = 0;
    try {
      bytes = safetensors_nbytes(s, what);
    } catch (const Error& e) {
      fail(path_, e.what());
    }
    begin_.push_back(data_size_);
    size_.push_back(bytes);
    if (__builtin_add_overflow(data_size_, bytes, &data_size_))
      fail(path_, "total data size overflows");
    header[s.name] = {{"dtype", s.dtype},
                      {"shape", s.shape},
                      {"data_offsets", {begin_.back(), begin_.back() + bytes}}};
  }
  written_.assign(specs_.size(), false);
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(path_, fmt::format("cannot encode the header (tensor names must be UTF-8): {}", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  data_offset_ = 8 + text.size();

  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(tmp_path_, "cannot create: " + errno_text());
  std::byte len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xff);
  pwrite_all(0, len, "the header length");
  pwrite_all(8, std::as_bytes(std::span(text.data(), text.size())), "the header");
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_path_.c_str());
}

size_t SafetensorsWriter::find(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path_, fmt::format("tensor '{}' is not in the writer's list", name));
  if (finished_) fail(path_, fmt::format("tensor '{}' written after finish()", name));
  if (written_[it->second]) fail(path_, fmt::format("tensor '{}' is written twice", name));
  return it->second;
}

void SafetensorsWriter::pwrite_all(uint64_t offset, std::span<const std::byte> data,
                                   const std::string& what) {
  write_all_fd(fd_, offset, data, tmp_path_, what);
}

void SafetensorsWriter::write(const std::string& name, std::span<const std::byte> data) {
  const size_t i = find(name);
  if (data.size() != size_[i])
    fail(path_, fmt::format("tensor '{}': {} bytes given, shape {} x {} needs {}", name,
                            data.size(), shape_text(specs_[i].shape), specs_[i].dtype, size_[i]));
  pwrite_all(data_offset_ + begin_[i], data, fmt::format("tensor '{}'", name));
  written_[i] = true;
}

void SafetensorsWriter::write_f32(const std::string& name, std::span<const float> values) {
  const size_t i = find(name);
  const SafetensorsSpec& s = specs_[i];
  const uint64_t numel = safetensors_numel(s.shape, name);
  if (values.size() != numel)
    fail(path_, fmt::format("tensor '{}': {} values given, shape {} has {}", name, values.size(),
                            shape_text(s.shape), numel));
  if (s.dtype == "F32") {
    write(name, std::as_bytes(values));
    return;
  }
  const bool bf16 = s.dtype == "BF16";
  if (!bf16 && s.dtype != "F16")
    fail(path_, fmt::format("tensor '{}': cannot write f32 values as {}", name, s.dtype));
  std::vector<uint16_t> buf(std::min<uint64_t>(numel, kConvertChunk));
  for (size_t k = 0; k < values.size(); k += buf.size()) {
    const size_t n = std::min(buf.size(), values.size() - k);
    std::span<uint16_t> chunk(buf.data(), n);
    if (bf16) {
      f32_to_bf16(values.subspan(k, n), chunk);
    } else {
      f32_to_f16(values.subspan(k, n), chunk);
    }
    pwrite_all(data_offset_ + begin_[i] + 2 * k, std::as_bytes(chunk),
               fmt::format("tensor '{}'", name));
  }
  written_[i] = true;
}

void SafetensorsWriter::finish() {
  if (finished_) fail(path_, "finish() called twice");
  for (size_t i = 0; i < specs_.size(); ++i)
    if (!written_[i]) fail(path_, fmt::format("tensor '{}' was never written", specs_[i].name));
  if (::ftruncate(fd_, static_cast<off_t>(file_size())) != 0)
    fail(tmp_path_, "ftruncate: " + errno_text());
  if (::fsync(fd_) != 0) fail(tmp_path_, "fsync: " + errno_text());
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(tmp_path_, "close: " + errno_text());
  try {
    rename_durably(tmp_path_, path_);
  } catch (const Error& e) {
    fail(path_, e.what());
  }
  finished_ = true;
}

// ---- index -----------------------------------------------------------------------------------

void write_safetensors_index(const std::string& path, const SafetensorsIndex& index) {
  if (!index.metadata.is_object()) fail(path, "index metadata is not a JSON object");
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  meta["total_size"] = index.total_size;
  for (const auto& [k, v] : index.metadata.items())
    if (k != "total_size") meta[k] = nlohmann::ordered_json::parse(v.dump());
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  j["metadata"] = std::move(meta);
  j["weight_map"] = nlohmann::ordered_json::object();
  for (const auto& [name, file] : index.weight_map) j["weight_map"][name] = file;
  std::string text;
  try {
    text = j.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    fail(path, fmt::format("cannot encode the index (names must be UTF-8): {}", e.what()));
  }
  try {
    write_file_atomic(path, text);
  } catch (const Error& e) {
    fail(path, e.what());
  }
}

SafetensorsIndex read_safetensors_index(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) fail(path, "cannot stat the index: " + ec.message());
  if (size > kSafetensorsMaxHeader)
    fail(path,
         fmt::format("index is {} bytes, over the {}-byte limit", size, kSafetensorsMaxHeader));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "cannot open the index: " + errno_text());
  std::string text(size, '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::read(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  text.resize(done);
  if (json_depth(text) > kMaxJsonDepth)
    fail(path, fmt::format("index JSON nests deeper than {} levels", kMaxJsonDepth));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, fmt::format("index is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) fail(path, "index is not a JSON object");
  SafetensorsIndex out;
  if (auto m = j.find("metadata"); m != j.end() && !m->is_null()) {
    if (!m->is_object()) fail(path, "index 'metadata' is not an object");
    for (const auto& [k, v] : m->items()) {
      if (k != "total_size") {
        out.metadata[k] = v;
        continue;
      }
      if (v.is_number_unsigned()) {
        out.total_size = v.get<uint64_t>();
      } else if (v.is_number_float() && v.get<double>() >= 0 && v.get<double>() < 1.8e19 &&
                 v.get<double>() == static_cast<double>(static_cast<uint64_t>(v.get<double>()))) {
        out.total_size = static_cast<uint64_t>(v.get<double>());  // some writers emit 1.5e10
      } else {
        fail(path, "index 'metadata.total_size' is not a non-negative integer");
      }
    }
  }
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) fail(path, "index has no 'weight_map' object");
  for (const auto& [name, file] : wm->items()) {
    if (!file.is_string())
      fail(path, fmt::format("index weight_map entry '{}' is not a string", name));
    const std::string& f = file.get_ref<const std::string&>();
    if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos ||
        f.find('\\') != std::string::npos || f.find('\0') != std::string::npos)
      fail(path,
           fmt::format("index weight_map entry '{}': '{}' is not a plain file name", name, f));
    out.weight_map.emplace(name, f);
  }
  return out;
}

SafetensorsShardPlan plan_safetensors_shards(std::span<const SafetensorsSpec> tensors,
                                             uint64_t max_shard_bytes) {
  MOERUN_REQUIRE(max_shard_bytes > 0, "max shard size must be positive");
  SafetensorsShardPlan plan;
  std::set<std::string> names;
  uint64_t in_shard = 0;
  plan.shards.emplace_back();
  for (const SafetensorsSpec& s : tensors) {
    const std::string what = fmt::format("tensor '{}'", s.name);
    if (!names.insert(s.name).second) throw Error(what + " is listed twice");
    const uint64_t bytes = safetensors_nbytes(s, what);
    if (!plan.shards.back().empty() &&
        (bytes > max_shard_bytes - std::min(in_shard, max_shard_bytes))) {
      plan.shards.emplace_back();
      in_shard = 0;
    }
    plan.shards.back().push_back(s);
    in_shard += bytes;
    plan.index.total_size += bytes;
  }
  const size_t n = plan.shards.size();
  for (size_t i = 0; i < n; ++i) {
    plan.files.push_back(n == 1 ? std::string(kSafetensorsSingleName)
                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n));
    for (const SafetensorsSpec& s : plan.shards[i]) plan.index.weight_map[s.name] = plan.files[i];
  }
  return plan;
}

// ---- a model directory -----------------------------------------------------------------------

SafetensorsDir SafetensorsDir::open(const std::string& dir) {
  namespace fs = std::filesystem;
  SafetensorsDir d;
  d.dir_ = dir;
  const fs::path index_path = fs::path(dir) / kSafetensorsIndexName;
  const fs::path single_path = fs::path(dir) / kSafetensorsSingleName;
  if (fs::exists(index_path)) {
    const SafetensorsIndex index = read_safetensors_index(index_path.string());
    std::map<std::string, size_t> file_slot;
    for (const auto& [name, file] : index.weight_map) {
      auto [it, fresh] = file_slot.emplace(file, d.files_.size());
      if (fresh) d.files_.push_back(SafetensorsFile::open((fs::path(dir) / file).string()));
      if (!d.files_[it->second].contains(name))
        fail(d.files_[it->second].path(),
             fmt::format("no tensor '{}' though '{}' maps it here", name, index_path.string()));
      d.where_.emplace(name, it->second);
    }
  } else if (fs::exists(single_path)) {
    d.files_.push_back(SafetensorsFile::open(single_path.string()));
    for (const SafetensorsEntry& e : d.files_[0].entries()) d.where_.emplace(e.name, 0);
  } else {
    throw Error(fmt::format("'{}' has neither {} nor {}", dir, kSafetensorsIndexName,
                            kSafetensorsSingleName));
  }
  return d;
}

std::vector<std::string> SafetensorsDir::names() const {
  std::vector<std::string> out;
  for (const auto& [name, slot] : where_) out.push_back(name);
  return out;
}

const SafetensorsFile& SafetensorsDir::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(fmt::format("'{}': no tensor '{}'", dir_, name));
  return files_[it->second];
}

}  // namespace moerun::io
