// Checkpoint manifest (JSON), directory scan, safe names and CRC32 slices.
#include "io/checkpoint_manifest.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "runtime/printable.h"

namespace moerun::io {

namespace fs = std::filesystem;
using nlohmann::json;

const char* to_string(TensorKind kind) {
  return kind == TensorKind::kReplicated ? "replicated" : "sharded";
}

const char* checkpoint_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
    default:
      throw CheckpointError(
          fmt::format("checkpoints store f32, i32 and i64 tensors, not {}", to_string(dtype)));
  }
}

std::optional<DType> parse_checkpoint_dtype(std::string_view name) {
  if (name == "f32") return DType::kF32;
  if (name == "i32") return DType::kI32;
  if (name == "i64") return DType::kI64;
  return std::nullopt;
}

// ---- names -----------------------------------------------------------------------------------

bool is_valid_tensor_name(std::string_view name) {
  if (name.empty() || name.size() > 1024 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return c > ' ' && c < 127 && c != '/' && c != '\\'; });
}

bool is_safe_file_name(std::string_view name) {
  if (name.empty() || name.size() > 255 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

std::string step_dir_name(int64_t step) {
  return fmt::format("step_{}", step);
}

std::optional<int64_t> parse_step_dir_name(std::string_view name) {
  constexpr std::string_view prefix = "step_";
  if (name.size() <= prefix.size() || name.substr(0, prefix.size()) != prefix) return std::nullopt;
  std::string_view digits = name.substr(prefix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  int64_t step = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return step;
}

std::string step_dir(const std::string& ckpt_dir, int64_t step) {
  return (fs::path(ckpt_dir) / step_dir_name(step)).string();
}

// ---- manifest --------------------------------------------------------------------------------

std::string manifest_to_json(const Manifest& m) {
  // Ordered keys: the header reads first (format, version, step), the tensors after it.
  using ojson = nlohmann::ordered_json;
  ojson j;
  j["format"] = kCheckpointFormat;
  j["version"] = m.version;
  j["step"] = m.step;
  j["world_size"] = m.world_size;
  j["files"] = ojson::array();
  for (const auto& f : m.files) j["files"].push_back({{"path", f.path}, {"bytes", f.bytes}});
  j["tensors"] = ojson::array();
  for (const auto& t : m.tensors) {
    ojson e;
    e["name"] = t.name;
    e["dtype"] = checkpoint_dtype_name(t.dtype);
    e["shape"] = t.shape;
    e["kind"] = to_string(t.kind);
    e["file"] = t.file;
    e["crc32"] = t.crc32;
    j["tensors"].push_back(std::move(e));
  }
  j["meta"] = ojson::parse(m.meta.dump());
  return j.dump(1) + "\n";
}

namespace {

[[noreturn]] void bad_manifest(const std::string& where, const std::string& what) {
  throw CheckpointError(fmt::format("checkpoint manifest {}: {}", where, what));
}

const json& field(const json& obj, const char* key, const std::string& where,
                  const std::string& context) {
  auto it = obj.find(key);
  if (it == obj.end()) bad_manifest(where, fmt::format("{} has no \"{}\"", context, key));
  return *it;
}

int64_t int_field(const json& obj, const char* key, const std::string& where,
                  const std::string& context, int64_t min_value) {
  const json& v = field(obj, key, where, context);
  if (!v.is_number_integer())
    bad_manifest(where, fmt::format("{}: \"{}\" must be an integer", context, key));
  int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                  ? -1
                  : v.get<int64_t>();
  if (x < min_value)
    bad_manifest(where,
                 fmt::format("{}: \"{}\" is {}, must be >= {}", context, key, v.dump(), min_value));
  return x;
}

std::string string_field(const json& obj, const char* key, const std::string& where,
                         const std::string& context) {
  const json& v = field(obj, key, where, context);
  if (!v.is_string()) bad_manifest(where, fmt::format("{}: \"{}\" must be a string", context, key));
  return v.get<std::string>();
}

}  // namespace

Manifest parse_manifest(std::string_view text, const std::string& where) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) bad_manifest(where, "is not valid JSON (edited or torn?)");
  if (!j.is_object()) bad_manifest(where, "is not a JSON object");
  const std::string top = "the manifest";
  std::string format = string_field(j, "format", where, top);
  if (format != kCheckpointFormat)
    bad_manifest(where,
                 fmt::format("format is \"{}\", expected \"{}\"", format, kCheckpointFormat));
  Manifest m;
  m.version = static_cast<int>(int_field(j, "version", where, top, 1));
  if (m.version != kCheckpointVersion)
    bad_manifest(where, fmt::format("version {} is not supported (this build reads version {})",
                                    m.version, kCheckpointVersion));
  m.step = int_field(j, "step", where, top, 0);
  m.world_size = static_cast<int>(int_field(j, "world_size", where, top, 1));

  const json& files = field(j, "files", where, top);
  if (!files.is_array()) bad_manifest(where, "\"files\" must be an array");
  std::set<std::string> file_names;
  for (const json& f : files) {
    if (!f.is_object()) bad_manifest(where, "an entry of \"files\" is not an object");
    ManifestFile mf;
    mf.path = string_field(f, "path", where, "a file entry");
    if (!is_safe_file_name(mf.path))
      bad_manifest(where, fmt::format("file name \"{}\" is not a plain name inside the step "
                                      "directory (no '/', '..' or special characters)",
                                      mf.path));
    mf.bytes = int_field(f, "bytes", where, fmt::format("file \"{}\"", mf.path), 0);
    if (!file_names.insert(mf.path).second)
      bad_manifest(where, fmt::format("file \"{}\" is listed twice", mf.path));
    m.files.push_back(std::move(mf));
  }

  const json& tensors = field(j, "tensors", where, top);
  if (!tensors.is_array()) bad_manifest(where, "\"tensors\" must be an array");
  std::set<std::string> names;
  for (const json& t : tensors) {
    if (!t.is_object()) bad_manifest(where, "an entry of \"tensors\" is not an object");
    ManifestTensor mt;
    mt.name = string_field(t, "name", where, "a tensor entry");
    if (!is_valid_tensor_name(mt.name))
      bad_manifest(where, fmt::format("tensor name \"{}\" is not valid", mt.name));
    if (!names.insert(mt.name).second)
      bad_manifest(where, fmt::format("tensor \"{}\" is listed twice", mt.name));
    const std::string ctx = fmt::format("tensor \"{}\"", mt.name);
    std::string dtype = string_field(t, "dtype", where, ctx);
    auto d = parse_checkpoint_dtype(dtype);
    if (!d) bad_manifest(where, fmt::format("{}: unknown dtype \"{}\"", ctx, dtype));
    mt.dtype = *d;
    const json& shape = field(t, "shape", where, ctx);
    if (!shape.is_array() || shape.empty())
      bad_manifest(where, fmt::format("{}: \"shape\" must be a non-empty array", ctx));
    for (const json& s : shape) {
      if (!s.is_number_integer() || s.get<int64_t>() < 0)
        bad_manifest(
            where, fmt::format("{}: shape {} has an entry that is not a size", ctx, shape.dump()));
      mt.shape.push_back(s.get<int64_t>());
    }
    std::string kind = string_field(t, "kind", where, ctx);
    if (kind == "replicated") {
      mt.kind = TensorKind::kReplicated;
    } else if (kind == "sharded") {
      mt.kind = TensorKind::kSharded;
    } else {
      bad_manifest(where, fmt::format("{}: unknown kind \"{}\"", ctx, kind));
    }
    mt.file = string_field(t, "file", where, ctx);
    if (!file_names.count(mt.file))
      bad_manifest(where,
                   fmt::format("{}: file \"{}\" is not one of the manifest's files", ctx, mt.file));
    int64_t crc = int_field(t, "crc32", where, ctx, 0);
    if (crc > static_cast<int64_t>(UINT32_MAX))
      bad_manifest(where, fmt::format("{}: crc32 {} is out of range", ctx, crc));
    mt.crc32 = static_cast<uint32_t>(crc);
    m.tensors.push_back(std::move(mt));
  }
  auto meta = j.find("meta");
  if (meta != j.end()) {
    if (!meta->is_object()) bad_manifest(where, "\"meta\" must be a JSON object");
    m.meta = *meta;
  }
  return m;
}

namespace {

// Reads a small regular file; std::nullopt with a reason when it is missing or not a file.
std::optional<std::string> read_small_file(const fs::path& path, std::string* why) {
  std::error_code ec;
  auto st = fs::symlink_status(path, ec);
  if (ec || !fs::exists(st)) {
    *why = "missing";
    return std::nullopt;
  }
  if (!fs::is_regular_file(st)) {
    *why = "not a regular file";
    return std::nullopt;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *why = fmt::format("cannot be opened: {}", std::strerror(errno));
    return std::nullopt;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

Manifest read_manifest(const std::string& ckpt_dir, int64_t step) {
  const fs::path path = fs::path(step_dir(ckpt_dir, step)) / kManifestName;
  std::string why;
  auto text = read_small_file(path, &why);
  if (!text)
    throw CheckpointError(fmt::format("checkpoint step {} in {} is not committed: {} is {}", step,
                                      ckpt_dir, path.string(), why));
  Manifest m = parse_manifest(*text, path.string());
  if (m.step != step)
    bad_manifest(path.string(),
                 fmt::format("says step {}, but sits in {}", m.step, step_dir_name(step)));
  return m;
}

CheckpointScan scan_checkpoints(const std::string& ckpt_dir) {
  CheckpointScan scan;
  std::error_code ec;
  if (!fs::is_directory(ckpt_dir, ec)) return scan;
  for (const auto& entry : fs::directory_iterator(ckpt_dir, ec)) {
    const std::string name = entry.path().filename().string();
    auto step = parse_step_dir_name(name);
    if (!step || !entry.is_directory(ec)) continue;
    try {
      read_manifest(ckpt_dir, *step);
      scan.committed.push_back(*step);
    } catch (const CheckpointError& e) {
      scan.partial.push_back({*step, e.what()});
    }
  }
  if (ec) throw CheckpointError(fmt::format("cannot list {}: {}", ckpt_dir, ec.message()));
  std::sort(scan.committed.begin(), scan.committed.end());
  std::sort(scan.partial.begin(), scan.partial.end(),
            [](const PartialStep& a, const PartialStep& b) { return a.step < b.step; });
  std::string why;
  if (auto text = read_small_file(fs::path(ckpt_dir) / kLatestName, &why)) {
    std::string_view s = *text;
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
    int64_t v = -1;
    auto [end, errc] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (!s.empty() && errc == std::errc() && end == s.data() + s.size() && v >= 0) {
      scan.latest_file = v;
    } else {
      scan.latest_problem = text->empty()
                                ? std::string("unreadable: it is empty")
                                : fmt::format("unreadable: it holds \"{}\"", printable(*text, 40));
    }
  } else if (why != "missing") {
    scan.latest_problem = "unreadable: it is " + why;
  }
  return scan;
}

std::string describe_latest(const CheckpointScan& scan) {
  if (scan.latest_file) return std::to_string(*scan.latest_file);
  return scan.latest_problem.empty() ? std::string("absent") : scan.latest_problem;
}

std::optional<std::string> checkpoint_dir_problem(const std::string& dir) {
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  if (!fs::exists(st)) return fmt::format("{} does not exist", dir);
  if (!fs::is_directory(st)) return fmt::format("{} is not a directory", dir);
  CheckpointScan scan;
  try {
    scan = scan_checkpoints(dir);
  } catch (const Error& e) {
    return e.what();
  }
  if (!scan.committed.empty()) return std::nullopt;
  std::string detail;
  for (const PartialStep& p : scan.partial)
    detail += fmt::format("{}{}: {}", detail.empty() ? "" : "; ", step_dir_name(p.step), p.reason);
  if (detail.empty()) {
    const bool empty = fs::directory_iterator(dir, ec) == fs::directory_iterator();
    detail = empty ? "it is empty" : "no step_<N> directory";
  } else {
    detail = fmt::format("{} uncommitted step director{}: {}", scan.partial.size(),
                         scan.partial.size() == 1 ? "y" : "ies", detail);
  }
  return fmt::format("{} holds no committed checkpoint ({})", dir, detail);
}

// ---- CRC32 -----------------------------------------------------------------------------------

uint32_t crc32_bytes(const void* data, size_t bytes, uint32_t crc) {
  return static_cast<uint32_t>(
      ::crc32_z(crc, static_cast<const Bytef*>(data), static_cast<z_size_t>(bytes)));
}

CombinedCrc combine_crc_slices(std::vector<CrcSlice> slices, int64_t rows, int64_t row_bytes) {
  std::erase_if(slices, [](const CrcSlice& s) { return s.count == 0; });
  std::sort(slices.begin(), slices.end(),
            [](const CrcSlice& a, const CrcSlice& b) { return a.begin < b.begin; });
  CombinedCrc out;
  int64_t next = 0;
  for (const CrcSlice& s : slices) {
    if (s.begin > next) {
      out.error = fmt::format("rows [{}, {}) are held by no rank", next, s.begin);
      return out;
    }
    if (s.begin < next) {
      out.error = fmt::format("rows [{}, {}) are claimed by more than one rank", s.begin,
                              std::min(next, s.begin + s.count));
      return out;
    }
    out.crc = static_cast<uint32_t>(
        ::crc32_combine(out.crc, s.crc, static_cast<z_off_t>(s.count * row_bytes)));
    next = s.begin + s.count;
  }
  if (next != rows) {
    out.error = next < rows ? fmt::format("rows [{}, {}) are held by no rank", next, rows)
                            : fmt::format("rows up to {} exceed the {} rows", next, rows);
  }
  return out;
}

}  // namespace moerun::io
