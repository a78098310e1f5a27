// safetensors: writer + reader round trips (F32, BF16, F16, I64, scalar, empty), the byte layout
// checked against the format independently, sharded models with their index, every malformed
// header the reader must refuse with a clear moerun::Error, a randomized mutation loop (a cheap
// in-CI fuzz). The bf16/f16 conversions are tested in runtime_half_test.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/safetensors.h"
#include "runtime/check.h"
#include "runtime/half.h"
#include "tests/common/expect_error.h"
#include "tests/common/temp_dir.h"
#include "tests/common/test_seed.h"

namespace moerun::io {

using ::moerun::testing::TestSeed;
namespace {

namespace fs = std::filesystem;

using ::moerun::testing::TempDir;

std::vector<std::byte> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string s{std::istreambuf_iterator<char>(in), {}};
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}
void write_bytes(const std::string& path, const std::vector<std::byte>& b) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// A file by hand: 8-byte little-endian length, the header text as given, then `data_bytes` bytes.
std::vector<std::byte> raw_file(const std::string& header, size_t data_bytes,
                                uint64_t declared_len = UINT64_MAX) {
  const uint64_t len = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0x5a});
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((len >> (8 * i)) & 0xff);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

using ::moerun::testing::expect_error;

std::vector<std::byte> random_bytes(std::mt19937_64& gen, size_t n) {
  std::vector<std::byte> b(n);
  for (auto& x : b) x = static_cast<std::byte>(gen() & 0xff);
  return b;
}

TEST(IoSafetensors, RoundTripAndLayout) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  TempDir dir;
  const std::string path = dir.file("t.safetensors");
  const std::vector<SafetensorsSpec> specs = {
      {"a.f32", "F32", {3, 5}},   {"b.bf16", "BF16", {4, 7}}, {"c.i64", "I64", {6}},
      {"d.f16", "F16", {2, 3}},   {"e.scalar", "F32", {}},    {"f.empty", "F32", {0, 4}},
      {"g.bf16f", "BF16", {5, 3}}};
  std::map<std::string, std::vector<std::byte>> data;
  for (const auto& s : specs)
    if (s.name != "g.bf16f") data[s.name] = random_bytes(gen, safetensors_nbytes(s, s.name));
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> gvals(15);
  for (float& v : gvals) v = normal(gen);
  {
    SafetensorsWriter w(path, specs, {{"format", "pt"}});
    std::vector<std::string> order;
    for (const auto& [name, bytes] : data) order.push_back(name);
    std::shuffle(order.begin(), order.end(), gen);
    for (const auto& name : order) w.write(name, data[name]);
    w.write_f32("g.bf16f", gvals);
    EXPECT_FALSE(fs::exists(path)) << "PATH appears only on finish";
    w.finish();
    EXPECT_EQ(fs::file_size(path), w.file_size());
  }
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // The layout, read back with the format description alone.
  const std::vector<std::byte> bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint64_t>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
  const std::string header_text(reinterpret_cast<const char*>(bytes.data()) + 8, n);
  const auto header = nlohmann::json::parse(header_text);
  EXPECT_EQ(header["__metadata__"]["format"], "pt");
  uint64_t expect_begin = 0;
  for (const auto& s : specs) {  // data in spec order, contiguous
    const auto& h = header.at(s.name);
    EXPECT_EQ(h["dtype"], s.dtype);
    EXPECT_EQ(h["shape"].get<std::vector<int64_t>>(), s.shape);
    EXPECT_EQ(h["data_offsets"][0].get<uint64_t>(), expect_begin) << s.name;
    expect_begin += safetensors_nbytes(s, s.name);
    EXPECT_EQ(h["data_offsets"][1].get<uint64_t>(), expect_begin) << s.name;
  }
  EXPECT_EQ(bytes.size(), 8 + n + expect_begin);
  for (const auto& [name, want] : data) {
    const uint64_t b = header[name]["data_offsets"][0];
    if (want.empty()) continue;
    EXPECT_EQ(std::memcmp(bytes.data() + 8 + n + b, want.data(), want.size()), 0) << name;
  }

  // The reader, from the file and from memory.
  for (const SafetensorsFile& f :
       {SafetensorsFile::open(path), SafetensorsFile::from_memory(bytes, "mem")}) {
    ASSERT_EQ(f.entries().size(), specs.size());
    EXPECT_EQ(f.metadata(), nlohmann::json({{"format", "pt"}}));
    for (const auto& s : specs) {
      const SafetensorsEntry& e = f.entry(s.name);
      EXPECT_EQ(e.dtype, s.dtype);
      EXPECT_EQ(e.shape, s.shape);
      EXPECT_EQ(e.nbytes(), safetensors_nbytes(s, s.name));
    }
    for (const auto& [name, want] : data) {
      std::vector<std::byte> got(want.size(), std::byte{0xee});
      f.read(name, got);
      EXPECT_EQ(got, want) << name;
    }
    EXPECT_EQ(f.entry("e.scalar").numel, 1u);
    EXPECT_EQ(f.entry("f.empty").numel, 0u);
    EXPECT_TRUE(f.read_f32("f.empty").empty());
    // read_f32 of each float dtype against the raw bytes converted here.
    std::vector<float> a = f.read_f32("a.f32");
    EXPECT_EQ(std::memcmp(a.data(), data["a.f32"].data(), data["a.f32"].size()), 0);
    std::vector<float> bvals = f.read_f32("b.bf16");
    for (size_t i = 0; i < bvals.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, data["b.bf16"].data() + 2 * i, 2);
      const float want = std::bit_cast<float>(uint32_t{h} << 16);
      EXPECT_TRUE(std::bit_cast<uint32_t>(bvals[i]) == std::bit_cast<uint32_t>(want)) << i;
    }
    std::vector<float> dvals = f.read_f32("d.f16");
    for (size_t i = 0; i < dvals.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, data["d.f16"].data() + 2 * i, 2);
      const float want = f16_to_f32(h);
      EXPECT_TRUE(std::isnan(want) ? std::isnan(dvals[i]) : dvals[i] == want) << i;
    }
    std::vector<float> g = f.read_f32("g.bf16f");
    for (size_t i = 0; i < g.size(); ++i)
      EXPECT_LE(std::fabs(g[i] - gvals[i]), std::ldexp(std::fabs(gvals[i]), -8)) << i;
    expect_error([&] { f.read_f32("c.i64"); }, {"c.i64", "I64", "cannot be read as f32"});
    expect_error([&] { f.entry("nope"); }, {"no tensor 'nope'"});
    std::vector<std::byte> small(3);
    expect_error([&] { f.read("a.f32", small); }, {"a.f32", "3 bytes"});
  }
}

TEST(IoSafetensors, WriterRefusesMisuse) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  const std::vector<SafetensorsSpec> specs = {{"x", "F32", {2, 2}}, {"y", "I32", {3}}};
  std::vector<std::byte> x(16, std::byte{1}), y(12, std::byte{2});
  {
    SafetensorsWriter w(path, specs);
    expect_error([&] { w.write("z", x); }, {path, "'z'", "not in the writer's list"});
    expect_error([&] { w.write("x", y); }, {"'x'", "12 bytes given", "needs 16"});
    w.write("x", x);
    expect_error([&] { w.write("x", x); }, {"'x'", "written twice"});
    expect_error([&] { w.finish(); }, {"'y'", "never written"});
    expect_error([&] { w.write_f32("y", std::vector<float>(3)); }, {"'y'", "cannot write f32"});
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp")) << "an unfinished writer removes its temp file";
  expect_error(
      [&] {
        SafetensorsWriter(path, {{"a", "F32", {1}}, {"a", "F32", {2}}});
      },
      {"'a'", "listed twice"});
  expect_error([&] { SafetensorsWriter(path, {{"a", "Q4", {1}}}); }, {"'a'", "unknown dtype 'Q4'"});
  expect_error([&] { SafetensorsWriter(path, {{"a", "F32", {2, -1}}}); }, {"'a'", "negative"});
  expect_error(
      [&] {
        SafetensorsWriter(path, {{"__metadata__", "F32", {1}}});
      },
      {"invalid tensor name"});
  expect_error(
      [&] {
        SafetensorsWriter(path, {{"a", "F32", {1}}}, {{"k", 3}});
      },
      {"metadata value 'k'"});
  expect_error([&] { SafetensorsWriter(dir.file("no/such/dir/f"), {}); }, {"cannot create"});
}

TEST(IoSafetensors, ShardedIndexRoundTrip) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  TempDir dir;
  std::vector<SafetensorsSpec> specs;
  for (int i = 0; i < 13; ++i)
    specs.push_back({fmt::format("layers.{}.w", i),
                     i % 3 == 0 ? "BF16" : "F32",
                     {static_cast<int64_t>(1 + gen() % 9), static_cast<int64_t>(1 + gen() % 7)}});
  specs.push_back({"big", "F32", {40, 10}});  // 1600 bytes, over the shard limit alone
  const uint64_t max_bytes = 400;
  const SafetensorsShardPlan plan = plan_safetensors_shards(specs, max_bytes);
  ASSERT_GT(plan.files.size(), 2u);
  ASSERT_EQ(plan.files.size(), plan.shards.size());
  uint64_t total = 0;
  size_t k = 0;
  for (size_t i = 0; i < plan.shards.size(); ++i) {
    EXPECT_EQ(plan.files[i],
              fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, plan.files.size()));
    uint64_t bytes = 0;
    for (const auto& s : plan.shards[i]) {
      EXPECT_EQ(s.name, specs[k++].name) << "tensors keep their order";
      bytes += safetensors_nbytes(s, s.name);
    }
    ASSERT_FALSE(plan.shards[i].empty());
    if (plan.shards[i].size() > 1) {
      EXPECT_LE(bytes, max_bytes);
    }
    // Greedy: the next shard's first tensor did not fit in this one.
    if (i + 1 < plan.shards.size()) {
      EXPECT_GT(bytes + safetensors_nbytes(plan.shards[i + 1][0], ""), max_bytes);
    }
    total += bytes;
  }
  EXPECT_EQ(k, specs.size());
  EXPECT_EQ(plan.index.total_size, total);

  std::map<std::string, std::vector<std::byte>> data;
  for (size_t i = 0; i < plan.shards.size(); ++i) {
    SafetensorsWriter w(dir.file(plan.files[i]), plan.shards[i]);
    for (const auto& s : plan.shards[i]) {
      data[s.name] = random_bytes(gen, safetensors_nbytes(s, s.name));
      w.write(s.name, data[s.name]);
    }
    w.finish();
  }
  SafetensorsIndex index = plan.index;
  index.metadata["format"] = "moerun";
  write_safetensors_index(dir.file(kSafetensorsIndexName), index);

  const SafetensorsIndex back = read_safetensors_index(dir.file(kSafetensorsIndexName));
  EXPECT_EQ(back.total_size, total);
  EXPECT_EQ(back.weight_map, plan.index.weight_map);
  EXPECT_EQ(back.metadata, nlohmann::json({{"format", "moerun"}}));

  const SafetensorsDir model = SafetensorsDir::open(dir.path.string());
  EXPECT_EQ(model.names().size(), specs.size());
  for (const auto& s : specs) {
    std::vector<std::byte> got(data[s.name].size());
    model.file_of(s.name).read(s.name, got);
    EXPECT_EQ(got, data[s.name]) << s.name;
    EXPECT_EQ(model.entry(s.name).shape, s.shape);
  }

  // One shard: model.safetensors, which SafetensorsDir opens without an index.
  const SafetensorsShardPlan one = plan_safetensors_shards(specs, 1 << 20);
  ASSERT_EQ(one.files, std::vector<std::string>{"model.safetensors"});
  TempDir dir1;
  {
    SafetensorsWriter w(dir1.file(one.files[0]), one.shards[0]);
    for (const auto& s : specs) w.write(s.name, data[s.name]);
    w.finish();
  }
  EXPECT_EQ(SafetensorsDir::open(dir1.path.string()).names().size(), specs.size());

  // Index errors: a path in a file name, a tensor its shard does not hold, bad JSON.
  const std::string bad = dir.file("bad.json");
  std::ofstream(bad) << R"({"weight_map": {"x": "../evil.safetensors"}})";
  expect_error([&] { read_safetensors_index(bad); }, {bad, "'x'", "not a plain file name"});
  std::ofstream(bad) << R"({"metadata": {"total_size": -3}, "weight_map": {}})";
  expect_error([&] { read_safetensors_index(bad); }, {"total_size"});
  std::ofstream(bad) << R"({"weight_map": )";
  expect_error([&] { read_safetensors_index(bad); }, {"not valid JSON"});
  index.weight_map["ghost"] = plan.files[0];
  write_safetensors_index(dir.file(kSafetensorsIndexName), index);
  expect_error([&] { SafetensorsDir::open(dir.path.string()); }, {"'ghost'", plan.files[0]});
  TempDir empty;
  expect_error([&] { SafetensorsDir::open(empty.path.string()); }, {"model.safetensors"});
}

// Each malformed file fails with a message naming the file and the offending tensor or field,
// read from disk and from memory alike.
// A header length that runs into the tensor data (or a file that is no safetensors at all) makes
// the header text binary: the message shows those bytes escaped, never raw.
TEST(IoSafetensors, BadHeaderLengthPrintsBytesEscaped) {
  const std::string header = R"({"t": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})";
  auto with_data = [&](uint64_t declared) {
    std::vector<std::byte> b = raw_file(header, 4, declared);
    const unsigned char data[4] = {0x80, 0xff, 0x01, 0xfe};
    std::memcpy(b.data() + 8 + header.size(), data, 4);
    return b;
  };
  auto message = [](const std::vector<std::byte>& bytes) {
    try {
      SafetensorsFile::from_memory(bytes, "len");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  ASSERT_EQ(message(with_data(header.size())), "no error");  // the file itself is sound
  for (const std::vector<std::byte>& bytes :
       {with_data(header.size() + 4), with_data(header.size() + 2)}) {
    const std::string msg = message(bytes);
    SCOPED_TRACE(msg);
    EXPECT_NE(msg.find("not valid JSON"), std::string::npos);
    EXPECT_NE(msg.find("\\x80"), std::string::npos) << "the first data byte, escaped";
    for (char c : msg)
      ASSERT_TRUE(c >= 0x20 && c < 0x7f) << "raw byte " << int(static_cast<unsigned char>(c));
  }
  // Binary from the start (not a safetensors file): the first bytes, escaped.
  std::vector<std::byte> junk = raw_file(std::string("\x01\x02\xc3(abc", 7), 0);
  const std::string msg = message(junk);
  EXPECT_NE(msg.find("does not start with '{'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\\x01\\x02\\xc3(abc"), std::string::npos) << msg;
}

TEST(IoSafetensors, MalformedFilesGiveClearErrors) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  auto check = [&](const std::vector<std::byte>& bytes, std::initializer_list<std::string> pieces,
                   const std::string& trace) {
    SCOPED_TRACE(trace);
    write_bytes(path, bytes);
    expect_error([&] { SafetensorsFile::open(path); }, pieces);
    expect_error([&] { SafetensorsFile::open(path); }, {path});
    expect_error([&] { SafetensorsFile::from_memory(bytes, "memlabel"); }, pieces);
    expect_error([&] { SafetensorsFile::from_memory(bytes, "memlabel"); }, {"memlabel"});
  };
  auto one = [](const std::string& entry) { return "{\"t\": " + entry + "}"; };

  check(std::vector<std::byte>(5), {"shorter than the 8-byte"}, "tiny file");
  check(raw_file("{}", 10, 1000), {"header length 1000 exceeds the file"}, "len > file");
  check(raw_file("{}", 10, 200'000'000), {"exceeds the 100000000-byte limit"}, "len > cap");
  check(raw_file("{\"t\": {\"dtype\": ", 0), {"not valid JSON"}, "bad JSON");
  check(raw_file("[1, 2]", 0), {"does not start with '{'"}, "array header");
  check(raw_file("{\"t\": 3}", 0), {"'t'", "not an object"}, "entry not object");
  check(raw_file(std::string(1, '{') + std::string(100, '[') + std::string(100, ']') + "}", 0),
        {"nests deeper"}, "deep nesting");
  check(raw_file(one(R"({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]})"), 8),
        {"'t'", "run past the data section (8 bytes)"}, "offsets out of range");
  check(raw_file(one(R"({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]})"), 16),
        {"'t'", "end before they begin"}, "end < begin");
  check(raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                 16),
        {"'a'", "'b'", "overlap"}, "overlap");
  check(raw_file(one(R"({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]})"), 16),
        {"'t'", "hold 8 bytes", "needs 12"}, "length mismatch");
  check(raw_file(one(R"({"dtype": "F33", "shape": [2], "data_offsets": [0, 8]})"), 16),
        {"'t'", "unknown dtype 'F33'"}, "unknown dtype");
  check(raw_file(one(R"({"shape": [2], "data_offsets": [0, 8]})"), 16), {"'t'", "'dtype'"},
        "no dtype");
  check(raw_file(one(R"({"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]})"), 16),
        {"'t'", "dim 1 is negative"}, "negative dim");
  check(raw_file(one(R"({"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]})"), 16),
        {"'t'", "not an integer"}, "float dim");
  check(raw_file(one(R"({"dtype": "F32", "shape": 2, "data_offsets": [0, 8]})"), 16),
        {"'t'", "'shape'"}, "shape not array");
  check(
      raw_file(one(R"({"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 8]})"),
               16),
      {"'t'", "too large"}, "dim > int64");
  check(raw_file(one(R"({"dtype": "U8", "shape": [4294967296, 4294967296, 2],
                         "data_offsets": [0, 8]})"),
                 16),
        {"'t'", "overflows"}, "numel overflow");
  check(raw_file(one(R"({"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 8]})"),
                 16),
        {"'t'", "overflows"}, "bytes overflow");
  check(raw_file(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [-1, 8]})"), 16),
        {"'t'", "'data_offsets'"}, "negative offset");
  check(raw_file(one(R"({"dtype": "F32", "shape": [2], "data_offsets": [0]})"), 16),
        {"'t'", "'data_offsets'"}, "one offset");
  check(raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
                 16),
        {"'t'", "appears twice"}, "duplicate names");
  check(raw_file(R"({"__metadata__": {"k": 1}})", 0), {"__metadata__", "'k'"}, "metadata value");
  check(raw_file(R"({"__metadata__": [1]})", 0), {"__metadata__"}, "metadata array");
  check(raw_file(R"({"": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})", 0),
        {"empty name"}, "empty name");

  // Truncating a valid file's data section: the last tensor runs past the end.
  {
    const std::string good = dir.file("good.safetensors");
    SafetensorsWriter w(good, {{"a", "F32", {4}}, {"b", "BF16", {8}}});
    w.write_f32("a", std::vector<float>{1, 2, 3, 4});
    w.write_f32("b", std::vector<float>(8, 0.5f));
    w.finish();
    std::vector<std::byte> bytes = read_bytes(good);
    ASSERT_GT(bytes.size(), 3u);
    bytes.erase(bytes.end() - 3, bytes.end());
    check(bytes, {"'b'", "run past the data section"}, "truncated data");
    // A file that shrinks after it was opened: the read says so.
    const SafetensorsFile f = SafetensorsFile::open(good);
    fs::resize_file(good, fs::file_size(good) - 5);
    expect_error([&] { f.read_f32("b"); }, {good, "'b'", "truncated"});
  }

  // Not errors: a zero dim makes huge others harmless; empty tensors may share an offset; gaps
  // between tensors are allowed; trailing padding spaces after the JSON are fine.
  const SafetensorsFile ok = SafetensorsFile::from_memory(raw_file(
      R"({"z": {"dtype": "F32", "shape": [4294967296, 4294967296, 0], "data_offsets": [4, 4]},
                   "e": {"dtype": "I8", "shape": [0], "data_offsets": [4, 4]},
                   "g": {"dtype": "I8", "shape": [2], "data_offsets": [6, 8]}}      )",
      8));
  EXPECT_EQ(ok.entries().size(), 3u);
  EXPECT_EQ(ok.entry("z").numel, 0u);
}

// A cheap fuzz: random byte flips, overwrites, truncations and extensions of a valid file must
// either parse (and then every tensor reads) or throw moerun::Error, never anything else.
TEST(IoSafetensors, RandomMutationsOnlyThrowError) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 gen(seed);
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  {
    SafetensorsWriter w(good,
                        {{"a", "F32", {3, 2}},
                         {"b", "BF16", {5}},
                         {"c", "I64", {2}},
                         {"d", "F16", {2, 2}},
                         {"e", "F32", {0}}},
                        {{"format", "pt"}});
    w.write_f32("a", std::vector<float>{1, 2, 3, 4, 5, 6});
    w.write_f32("b", std::vector<float>{1, -2, 3, -4, 5});
    w.write("c", random_bytes(gen, 16));
    w.write_f32("d", std::vector<float>{0.25f, 8, -1, 3});
    w.write("e", {});
    w.finish();
  }
  const std::vector<std::byte> base = read_bytes(good);
  const char kJsonish[] = "{}[]\",:0123456789-e.FBIU \\";
  int parsed = 0, refused = 0;
  for (int it = 0; it < 2000; ++it) {
    std::vector<std::byte> b = base;
    const int edits = 1 + static_cast<int>(gen() % 4);
    for (int k = 0; k < edits && !b.empty(); ++k) {
      const size_t pos = gen() % b.size();
      switch (gen() % 5) {
        case 0:
          b[pos] ^= static_cast<std::byte>(1u << (gen() % 8));
          break;
        case 1:
          b[pos] = static_cast<std::byte>(kJsonish[gen() % (sizeof(kJsonish) - 1)]);
          break;
        case 2:
          b.resize(pos);
          break;
        case 3:
          b.insert(b.begin() + static_cast<std::ptrdiff_t>(pos),
                   static_cast<std::byte>(kJsonish[gen() % (sizeof(kJsonish) - 1)]));
          break;
        default:
          b[gen() % std::min<size_t>(b.size(), 8)] = static_cast<std::byte>(gen() & 0xff);
          break;
      }
    }
    try {
      const SafetensorsFile f = SafetensorsFile::from_memory(b, "mutant");
      for (const SafetensorsEntry& e : f.entries()) {
        std::vector<std::byte> out(e.nbytes());
        f.read(e.name, out);
        if (e.dtype == "F32" || e.dtype == "BF16" || e.dtype == "F16") (void)f.read_f32(e.name);
      }
      ++parsed;
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_EQ(parsed + refused, 2000);
  EXPECT_GT(refused, 0);
  std::printf("mutations: %d parsed, %d refused\n", parsed, refused);
}

}  // namespace
}  // namespace moerun::io
