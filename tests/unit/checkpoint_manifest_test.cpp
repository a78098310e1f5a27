// Checkpoint manifest: JSON round trip and validation, safe names, step directory names, CRC
// slices joined in row order, durable writes and the directory scan (no MPI).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "io/checkpoint_manifest.h"
#include "runtime/durable_file.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

namespace fs = std::filesystem;
using namespace moerun::io;
using nlohmann::json;

Manifest sample() {
  Manifest m;
  m.step = 42;
  m.world_size = 4;
  m.files = {{"tensors.h5", 12345}};
  m.tensors = {
      {"embed.weight", DType::kF32, {7, 5}, TensorKind::kReplicated, "tensors.h5", 17},
      {"layers.0.moe.w1", DType::kF32, {8, 3, 5}, TensorKind::kSharded, "tensors.h5", 0xFFFFFFFFu},
      {"counts", DType::kI64, {8}, TensorKind::kReplicated, "tensors.h5", 0}};
  m.meta = {{"tokens", 123}, {"nested", {{"a", {1, 2}}}}};
  return m;
}

TEST(CheckpointManifest, RoundTripsThroughJson) {
  Manifest m = sample();
  Manifest r = parse_manifest(manifest_to_json(m), "test");
  EXPECT_EQ(r.step, 42);
  EXPECT_EQ(r.world_size, 4);
  ASSERT_EQ(r.files.size(), 1u);
  EXPECT_EQ(r.files[0].bytes, 12345);
  ASSERT_EQ(r.tensors.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r.tensors[i].name, m.tensors[i].name);
    EXPECT_EQ(r.tensors[i].dtype, m.tensors[i].dtype);
    EXPECT_EQ(r.tensors[i].shape, m.tensors[i].shape);
    EXPECT_EQ(r.tensors[i].kind, m.tensors[i].kind);
    EXPECT_EQ(r.tensors[i].crc32, m.tensors[i].crc32);
  }
  EXPECT_EQ(r.meta, m.meta);
  // The header comes first, for people reading the file.
  const std::string text = manifest_to_json(m);
  EXPECT_LT(text.find("\"format\""), text.find("\"step\""));
  EXPECT_LT(text.find("\"step\""), text.find("\"tensors\""));
}

// Each edit must be rejected with a CheckpointError whose message contains `needle`.
void expect_rejected(const std::function<void(json&)>& edit, const std::string& needle) {
  json j = json::parse(manifest_to_json(sample()));
  edit(j);
  try {
    parse_manifest(j.dump(), "M");
    ADD_FAILURE() << "accepted: " << j.dump();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("M"), std::string::npos) << e.what();
  }
}

TEST(CheckpointManifest, RejectsEveryKindOfEdit) {
  EXPECT_THROW(parse_manifest("{\"format\": ", "M"), CheckpointError);
  EXPECT_THROW(parse_manifest("[1, 2]", "M"), CheckpointError);
  expect_rejected([](json& j) { j["format"] = "other"; }, "format");
  expect_rejected([](json& j) { j["version"] = 99; }, "version 99");
  expect_rejected([](json& j) { j.erase("step"); }, "\"step\"");
  expect_rejected([](json& j) { j["step"] = -1; }, "\"step\"");
  expect_rejected([](json& j) { j["step"] = "7"; }, "integer");
  expect_rejected([](json& j) { j["files"][0]["path"] = "../x"; }, "../x");
  expect_rejected([](json& j) { j["files"][0]["path"] = "/abs"; }, "/abs");
  expect_rejected([](json& j) { j["files"][0]["path"] = "a/b"; }, "a/b");
  expect_rejected([](json& j) { j["files"].push_back(j["files"][0]); }, "twice");
  expect_rejected([](json& j) { j["tensors"][0]["file"] = "other.h5"; }, "other.h5");
  expect_rejected([](json& j) { j["tensors"][0]["name"] = "a/b"; }, "a/b");
  expect_rejected([](json& j) { j["tensors"][0]["name"] = ".."; }, "..");
  expect_rejected([](json& j) { j["tensors"][1]["name"] = "embed.weight"; }, "twice");
  expect_rejected([](json& j) { j["tensors"][0]["dtype"] = "f16"; }, "f16");
  expect_rejected([](json& j) { j["tensors"][0]["shape"] = {7, -5}; }, "shape");
  expect_rejected([](json& j) { j["tensors"][0]["shape"] = json::array(); }, "shape");
  expect_rejected([](json& j) { j["tensors"][0]["kind"] = "mirrored"; }, "mirrored");
  expect_rejected([](json& j) { j["tensors"][0]["crc32"] = int64_t{1} << 33; }, "crc32");
  expect_rejected([](json& j) { j["tensors"][0].erase("crc32"); }, "crc32");
  expect_rejected([](json& j) { j["meta"] = 3; }, "meta");
}

TEST(CheckpointManifest, NamesAndStepDirectories) {
  EXPECT_TRUE(is_safe_file_name("tensors.h5"));
  EXPECT_TRUE(is_safe_file_name("shard-00_01.h5"));
  for (const char* bad : {"", ".", "..", "../a", "a/b", "/a", "a\\b", "a b", "a\nb"})
    EXPECT_FALSE(is_safe_file_name(bad)) << bad;
  EXPECT_TRUE(is_valid_tensor_name("layers.0.moe.w1"));
  for (const char* bad : {"", ".", "..", "a/b", "a b"}) EXPECT_FALSE(is_valid_tensor_name(bad));
  EXPECT_EQ(step_dir_name(120), "step_120");
  EXPECT_EQ(parse_step_dir_name("step_120"), 120);
  EXPECT_EQ(parse_step_dir_name("step_0"), 0);
  for (const char* bad : {"step_", "step_-1", "step_+1", "step_1x", "step_1.tmp", "steps_1",
                          "step_99999999999999999999"})
    EXPECT_EQ(parse_step_dir_name(bad), std::nullopt) << bad;
}

TEST(CheckpointManifest, CrcSlicesJoinToTheWholeCrc) {
  const TestSeed seed = TestSeed::fresh();
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t rows = 1 + rng() % 40, rb = 1 + rng() % 24;
    std::vector<unsigned char> data(static_cast<size_t>(rows * rb));
    for (auto& b : data) b = static_cast<unsigned char>(rng());
    const uint32_t whole = crc32_bytes(data.data(), data.size());
    // Random cut points, slices handed over in shuffled order, some of them empty.
    std::vector<int64_t> cuts = {0, rows};
    for (int c = 0; c < 4; ++c) cuts.push_back(static_cast<int64_t>(rng() % (rows + 1)));
    std::sort(cuts.begin(), cuts.end());
    std::vector<CrcSlice> slices;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      const int64_t b = cuts[i], n = cuts[i + 1] - cuts[i];
      slices.push_back({b, n, crc32_bytes(data.data() + b * rb, static_cast<size_t>(n * rb))});
    }
    std::shuffle(slices.begin(), slices.end(), rng);
    CombinedCrc c = combine_crc_slices(slices, rows, rb);
    EXPECT_TRUE(c.error.empty()) << c.error;
    EXPECT_EQ(c.crc, whole);
  }
  EXPECT_NE(combine_crc_slices({{0, 2, 0}, {3, 1, 0}}, 4, 8).error.find("[2, 3)"),
            std::string::npos);
  EXPECT_NE(combine_crc_slices({{0, 2, 0}, {1, 3, 0}}, 4, 8).error.find("more than one"),
            std::string::npos);
  EXPECT_NE(combine_crc_slices({{0, 2, 0}}, 4, 8).error.find("[2, 4)"), std::string::npos);
  EXPECT_TRUE(combine_crc_slices({}, 0, 8).error.empty());
}

TEST(CheckpointManifest, ScanFindsCommittedAndPartialSteps) {
  const fs::path dir = fs::temp_directory_path() /
                       fmt::format("moerun_ckpt_scan_{}_{:x}", ::getpid(), std::random_device{}());
  fs::create_directories(dir);
  EXPECT_TRUE(scan_checkpoints((dir / "absent").string()).committed.empty());
  for (int64_t s : {3, 10}) {
    Manifest m = sample();
    m.step = s;
    fs::create_directories(step_dir(dir.string(), s));
    write_file_atomic(step_dir(dir.string(), s) + "/manifest.json", manifest_to_json(m));
  }
  fs::create_directories(dir / "step_11");  // crashed before its manifest
  fs::create_directories(dir / "step_12");  // a manifest from elsewhere
  Manifest other = sample();
  other.step = 5;
  std::ofstream(dir / "step_12" / "manifest.json") << manifest_to_json(other);
  fs::create_directories(dir / "notes");
  write_file_atomic((dir / "latest").string(), "10\n");
  EXPECT_FALSE(fs::exists(dir / "latest.tmp"));

  CheckpointScan scan = scan_checkpoints(dir.string());
  EXPECT_EQ(scan.committed, (std::vector<int64_t>{3, 10}));
  ASSERT_EQ(scan.partial.size(), 2u);
  EXPECT_EQ(scan.partial[0].step, 11);
  EXPECT_NE(scan.partial[0].reason.find("not committed"), std::string::npos);
  EXPECT_EQ(scan.partial[1].step, 12);
  EXPECT_NE(scan.partial[1].reason.find("says step 5"), std::string::npos);
  EXPECT_EQ(scan.latest_file, 10);
  EXPECT_EQ(read_manifest(dir.string(), 10).step, 10);
  EXPECT_THROW(read_manifest(dir.string(), 11), CheckpointError);
  fs::remove_all(dir);
}

// `latest` that names no step is reported as unreadable with what it holds (escaped), not as
// absent; a missing one is absent.
TEST(CheckpointManifest, GarbageLatestIsUnreadableNotAbsent) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("moerun_ckpt_latest_{}_{:x}",
                                                               ::getpid(), std::random_device{}());
  fs::create_directories(dir);
  EXPECT_EQ(describe_latest(scan_checkpoints(dir.string())), "absent");
  const std::pair<std::string, std::string> cases[] = {
      {std::string("x7\x01\n"), "unreadable: it holds \"x7\\x01\\n\""},
      {"", "unreadable: it is empty"},
      {"-3\n", "unreadable: it holds \"-3\\n\""},
      {"12 13\n", "unreadable: it holds \"12 13\\n\""},
  };
  for (const auto& [text, want] : cases) {
    std::ofstream(dir / "latest", std::ios::trunc) << text;
    const CheckpointScan scan = scan_checkpoints(dir.string());
    EXPECT_FALSE(scan.latest_file.has_value()) << text;
    EXPECT_EQ(scan.latest_problem, want);
    EXPECT_EQ(describe_latest(scan), want);
  }
  std::ofstream(dir / "latest", std::ios::trunc) << "42\n";
  EXPECT_EQ(describe_latest(scan_checkpoints(dir.string())), "42");
  fs::remove(dir / "latest");
  fs::create_directories(dir / "latest");
  EXPECT_EQ(scan_checkpoints(dir.string()).latest_problem, "unreadable: it is not a regular file");
  fs::remove_all(dir);
}

// Why a path cannot be resumed from, in words a --resume error can use.
TEST(CheckpointManifest, CheckpointDirProblemExplainsABadResumePath) {
  const fs::path dir = fs::temp_directory_path() /
                       fmt::format("moerun_ckpt_dirp_{}_{:x}", ::getpid(), std::random_device{}());
  fs::create_directories(dir);
  const std::string d = dir.string();
  EXPECT_EQ(checkpoint_dir_problem(d + "/absent"), d + "/absent does not exist");
  EXPECT_EQ(checkpoint_dir_problem(d), d + " holds no committed checkpoint (it is empty)");
  std::ofstream(dir / "file") << "x";
  EXPECT_EQ(checkpoint_dir_problem(d + "/file"), d + "/file is not a directory");
  EXPECT_EQ(checkpoint_dir_problem(d),
            d + " holds no committed checkpoint (no step_<N> directory)");
  fs::create_directories(dir / "step_4");
  const auto partial = checkpoint_dir_problem(d);
  ASSERT_TRUE(partial.has_value());
  EXPECT_NE(partial->find(d + " holds no committed checkpoint (1 uncommitted step directory: "
                              "step_4: "),
            std::string::npos)
      << *partial;
  EXPECT_NE(partial->find("manifest.json is missing"), std::string::npos) << *partial;
  Manifest m = sample();
  m.step = 4;
  write_file_atomic(step_dir(d, 4) + "/manifest.json", manifest_to_json(m));
  EXPECT_EQ(checkpoint_dir_problem(d), std::nullopt);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moerun::testing
