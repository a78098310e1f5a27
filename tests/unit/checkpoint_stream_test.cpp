// CheckpointWriter / CheckpointReader (one process, serial HDF5): the writer's output is a
// checkpoint that load_checkpoint (on a one-rank communicator), latest_step and
// verify_checkpoint accept, bitwise; the reader reads save_checkpoint's output; a damaged
// dataset is a CRC error naming the dataset and the file.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>

#include "io/checkpoint.h"
#include "io/checkpoint_stream.h"
#include "io/h5_util.h"
#include "tests/common/file_size_limit.h"
#include "tests/common/temp_dir.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

namespace fs = std::filesystem;
using namespace moerun::io;
using nlohmann::json;

struct Named {
  std::string name;
  TensorKind kind;
  Tensor t;
};

// f32 replicated and sharded, i32, i64, and a tensor without elements.
std::vector<Named> sample_tensors(uint64_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  auto f32 = [&](std::vector<int64_t> shape) {
    Tensor t = Tensor::empty(std::move(shape));
    for (float& v : t.span<float>()) v = nd(rng);
    return t;
  };
  std::vector<Named> out;
  out.push_back({"embed.weight", TensorKind::kReplicated, f32({7, 5})});
  out.push_back({"layers.1.moe.w13", TensorKind::kSharded, f32({8, 6, 5})});
  out.push_back({"optim.m.layers.1.moe.w13", TensorKind::kSharded, f32({8, 6, 5})});
  out.push_back({"norm.weight", TensorKind::kReplicated, f32({5})});
  Tensor i32 = Tensor::empty({9}, DType::kI32);
  for (int i = 0; i < 9; ++i) i32.data<int32_t>()[i] = static_cast<int32_t>(rng());
  out.push_back({"counts32", TensorKind::kReplicated, i32});
  Tensor i64 = Tensor::empty({3, 2}, DType::kI64);
  for (int i = 0; i < 6; ++i) i64.data<int64_t>()[i] = static_cast<int64_t>(rng()) << 20;
  out.push_back({"counts64", TensorKind::kReplicated, i64});
  out.push_back({"empty", TensorKind::kReplicated, Tensor::empty({0, 4})});
  return out;
}

std::vector<CheckpointTensorSpec> specs_of(const std::vector<Named>& ts) {
  std::vector<CheckpointTensorSpec> s;
  for (const Named& n : ts) s.push_back({n.name, n.t.dtype(), n.t.shape(), n.kind});
  return s;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  if (a.nbytes() == 0) return true;
  switch (a.dtype()) {
    case DType::kF32:
      return std::memcmp(a.data<float>(), b.data<float>(), a.nbytes()) == 0;
    case DType::kI32:
      return std::memcmp(a.data<int32_t>(), b.data<int32_t>(), a.nbytes()) == 0;
    default:
      return std::memcmp(a.data<int64_t>(), b.data<int64_t>(), a.nbytes()) == 0;
  }
}

void write_all(const std::string& dir, int64_t step, const std::vector<Named>& ts,
               const json& meta) {
  CheckpointWriter w(dir, step, specs_of(ts));
  // Any order: backwards.
  for (auto it = ts.rbegin(); it != ts.rend(); ++it) w.write(it->name, it->t);
  w.commit(meta);
}

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(CheckpointStream, WriterOutputLoadsWithLoadCheckpointAndReader) {
  TempDir tmp("ckpt_stream");
  const std::string dir = tmp.file("ckpt");
  const TestSeed seed(1);
  const std::vector<Named> ts = sample_tensors(seed);
  const json meta = {{"step", 5}, {"model", {{"hidden", 5}}}, {"note", "streamed"}};
  write_all(dir, 5, ts, meta);

  // The same files and the same commit record as save_checkpoint.
  EXPECT_TRUE(fs::exists(fs::path(step_dir(dir, 5)) / kTensorFileName));
  EXPECT_TRUE(fs::exists(fs::path(step_dir(dir, 5)) / kManifestName));
  EXPECT_FALSE(fs::exists(fs::path(step_dir(dir, 5)) / (std::string(kManifestName) + ".tmp")));
  std::ifstream latest(fs::path(dir) / kLatestName);
  std::string line;
  std::getline(latest, line);
  EXPECT_EQ(line, "5");
  EXPECT_TRUE(verify_checkpoint(dir, 5).empty());

  const Comm world = Comm::world();
  const Comm one = world.split(world.rank(), 0);
  ASSERT_EQ(one.size(), 1);
  EXPECT_EQ(latest_step(dir, one), 5);

  // load_checkpoint (parallel HDF5 on one rank): bitwise equal, meta returned.
  std::vector<Tensor> loaded;
  for (const Named& n : ts) {
    Tensor t = Tensor::zeros(n.t.shape(), n.t.dtype());
    loaded.push_back(t);
  }
  std::vector<CkptTensor> req;
  for (size_t i = 0; i < ts.size(); ++i) {
    CkptTensor c;
    c.name = ts[i].name;
    c.global_shape = ts[i].t.shape();
    c.local = &loaded[i];
    c.kind = ts[i].kind;
    req.push_back(c);
  }
  const json got_meta = load_checkpoint(dir, 5, req, one);
  EXPECT_EQ(got_meta, meta);
  for (size_t i = 0; i < ts.size(); ++i) EXPECT_TRUE(same_bytes(loaded[i], ts[i].t)) << ts[i].name;

  // The reader: the manifest and every tensor, bitwise.
  CheckpointReader r = CheckpointReader::open(dir, 5);
  EXPECT_EQ(r.manifest().step, 5);
  EXPECT_EQ(r.manifest().meta, meta);
  ASSERT_EQ(r.manifest().tensors.size(), ts.size());
  for (const Named& n : ts) {
    ASSERT_NE(r.find(n.name), nullptr);
    EXPECT_EQ(r.find(n.name)->kind, n.kind);
    EXPECT_TRUE(same_bytes(r.read(n.name), n.t)) << n.name;
  }
  EXPECT_EQ(r.find("nope"), nullptr);
  EXPECT_NE(error_of([&] { r.read("nope"); }).find("no tensor \"nope\""), std::string::npos);
}

TEST(CheckpointStream, ReaderReadsSaveCheckpointOutput) {
  TempDir tmp("ckpt_stream");
  const std::string dir = tmp.file("ckpt");
  const TestSeed seed(2);
  std::vector<Named> ts = sample_tensors(seed);
  const Comm world = Comm::world();
  const Comm one = world.split(world.rank(), 0);
  std::vector<CkptTensor> req;
  for (Named& n : ts) {
    CkptTensor c;
    c.name = n.name;
    c.global_shape = n.t.shape();
    c.local = &n.t;
    c.kind = n.kind;
    req.push_back(c);
  }
  save_checkpoint(dir, 3, req, {{"by", "save_checkpoint"}}, one);
  CheckpointReader r = CheckpointReader::open(dir, 3);
  EXPECT_EQ(r.manifest().meta, json({{"by", "save_checkpoint"}}));
  for (const Named& n : ts) EXPECT_TRUE(same_bytes(r.read(n.name), n.t)) << n.name;
}

TEST(CheckpointStream, WriterRefusesMisuse) {
  TempDir tmp("ckpt_stream");
  const std::string dir = tmp.file("ckpt");
  const TestSeed seed(3);
  const std::vector<Named> ts = sample_tensors(seed);
  write_all(dir, 1, ts, json::object());
  // A committed step is never overwritten.
  const std::string e1 = error_of([&] { CheckpointWriter w(dir, 1, specs_of(ts)); });
  EXPECT_NE(e1.find("already committed"), std::string::npos) << e1;
  // Repeated names, wrong shapes, unknown names, missing tensors at commit.
  auto specs = specs_of(ts);
  specs.push_back(specs[0]);
  EXPECT_NE(error_of([&] { CheckpointWriter w(dir, 2, specs); }).find("listed twice"),
            std::string::npos);
  {
    CheckpointWriter w(dir, 2, specs_of(ts));
    EXPECT_NE(error_of([&] {
                w.write("embed.weight", Tensor::zeros({7, 4}));
              }).find("declared"),
              std::string::npos);
    EXPECT_NE(error_of([&] { w.write("other", Tensor::zeros({1})); }).find("not declared"),
              std::string::npos);
    w.write("embed.weight", ts[0].t);
    EXPECT_NE(error_of([&] { w.write("embed.weight", ts[0].t); }).find("twice"), std::string::npos);
    const std::string e = error_of([&] { w.commit(json::object()); });
    EXPECT_NE(e.find("never written"), std::string::npos) << e;
    EXPECT_NE(e.find("norm.weight"), std::string::npos) << e;
  }
  // The abandoned step 2 is partial: not committed, and a new writer replaces it.
  EXPECT_EQ(scan_checkpoints(dir).committed, std::vector<int64_t>{1});
  write_all(dir, 2, ts, json::object());
  EXPECT_EQ(scan_checkpoints(dir).committed, (std::vector<int64_t>{1, 2}));
}

TEST(CheckpointStream, ReaderDetectsCrcMismatch) {
  TempDir tmp("ckpt_stream");
  const std::string dir = tmp.file("ckpt");
  const TestSeed seed(4);
  const std::vector<Named> ts = sample_tensors(seed);
  write_all(dir, 7, ts, json::object());
  const std::string path = (fs::path(step_dir(dir, 7)) / kTensorFileName).string();
  // Flip one byte in the middle of /layers.1.moe.w13's data (the file keeps its size).
  haddr_t offset = 0;
  {
    H5Id f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    ASSERT_TRUE(f.valid());
    H5Id d(H5Dopen2(f, "/layers.1.moe.w13", H5P_DEFAULT));
    ASSERT_TRUE(d.valid());
    offset = H5Dget_offset(d);
    ASSERT_NE(offset, HADDR_UNDEF);
  }
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    const auto pos = static_cast<std::streamoff>(offset + 37);
    f.seekg(pos);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(pos);
    f.write(&c, 1);
  }
  CheckpointReader r = CheckpointReader::open(dir, 7);
  const std::string e = error_of([&] { r.read("layers.1.moe.w13"); });
  EXPECT_NE(e.find("checksum mismatch"), std::string::npos) << e;
  EXPECT_NE(e.find("\"/layers.1.moe.w13\""), std::string::npos) << e;
  EXPECT_NE(e.find(path), std::string::npos) << e;
  // The other tensors are still fine.
  EXPECT_TRUE(same_bytes(r.read("embed.weight"), ts[0].t));
  // A truncated file is named when the reader opens it.
  fs::resize_file(path, fs::file_size(path) - 1);
  const std::string e2 = error_of([&] { CheckpointReader::open(dir, 7); });
  EXPECT_NE(e2.find("truncated"), std::string::npos) << e2;
}

// A write that the file system refuses (here: beyond RLIMIT_FSIZE, as a full disk would) is
// reported by its cause, the file and the step, not by HDF5's call chain; nothing is committed.
TEST(CheckpointStream, WriteFailureNamesTheCauseFileAndStep) {
  TempDir tmp("ckpt_stream");
  const std::string dir = tmp.file("ckpt");
  const std::vector<Named> ts = sample_tensors(4);
  const Tensor big = Tensor::zeros({256, 1024});  // 1 MiB
  std::vector<CheckpointTensorSpec> specs = specs_of(ts);
  specs.push_back({"big", DType::kF32, big.shape(), TensorKind::kReplicated});
  std::string e;
  std::optional<CheckpointWriter> w;
  {
    FileSizeLimit limit(64 << 10);
    if (!limit.ok()) GTEST_SKIP() << "setrlimit(RLIMIT_FSIZE) is not permitted here";
    e = error_of([&] {
      w.emplace(dir, 3, specs);
      for (const Named& n : ts) w->write(n.name, n.t);
      w->write("big", big);
      w->commit(json::object());
    });
  }
  // Closed once the limit is gone: HDF5 1.10 cannot close a file whose final size is refused
  // (the close fails and the library crashes at exit), unlike on a full disk, where a file's size
  // can still grow without blocks.
  w.reset();
  const std::string path = (fs::path(step_dir(dir, 3)) / kTensorFileName).string();
  EXPECT_NE(e.find("checkpoint step 3: writing " + path + " failed: File too large"),
            std::string::npos)
      << e;
  EXPECT_EQ(e.find("H5D"), std::string::npos) << "HDF5's call chain leaked into: " << e;
  EXPECT_LT(e.size(), 300u) << e;
  EXPECT_TRUE(scan_checkpoints(dir).committed.empty());
}

}  // namespace
}  // namespace moerun::testing
