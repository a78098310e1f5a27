// Flat checkpoint slices (io::CkptTensor::flat_begin, ZeRO-1's optimizer shards): every rank
// writes an arbitrary range of a tensor's row-major elements (cutting rows anywhere, some ranks
// none); the file holds the same dataset as a whole-tensor save (same CRC32), loads whole or as
// other flat ranges, in pieces as small as one element; writers that leave a gap are refused.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "io/checkpoint.h"
#include "runtime/check.h"
#include "tests/common/mpi_test.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

namespace fs = std::filesystem;
using io::CkptTensor;
using nlohmann::json;

// A fresh directory (name chosen by rank 0), removed at the end of the test.
struct SharedDir {
  explicit SharedDir(const Comm& w, const char* tag) : world(w) {
    std::string name;
    if (world.rank() == 0) {
      name = (fs::temp_directory_path() /
              fmt::format("moerun_flat_{}_{}_{:x}", tag, ::getpid(), std::random_device{}()))
                 .string();
      fs::create_directories(name);
    }
    world.broadcast(name, 0);
    path = name;
  }
  ~SharedDir() {
    world.barrier();
    std::error_code ec;
    if (world.rank() == 0) fs::remove_all(path, ec);
  }
  const Comm& world;
  std::string path;
};

// The tensors of the test: every element tells its tensor and flat index.
struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  io::TensorKind kind;
};
const std::vector<Spec>& specs() {
  static const std::vector<Spec> s = {{"a3d", {5, 3, 7}, io::TensorKind::kReplicated},
                                      {"b1d", {13}, io::TensorKind::kReplicated},
                                      {"c2d", {4, 9}, io::TensorKind::kSharded}};
  return s;
}
int64_t numel(const Spec& s) {
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  return n;
}
float value(size_t tensor, int64_t i, uint64_t seed) {
  return static_cast<float>(tensor * 1000 + static_cast<size_t>(i)) + static_cast<float>(seed % 7);
}

// W + 1 sorted cut points of [0, n) drawn from `rng` (repeats allowed: empty slices).
std::vector<int64_t> cuts(int64_t n, int W, std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> pick(0, n);
  std::vector<int64_t> c{0, n};
  for (int r = 1; r < W; ++r) c.push_back(pick(rng));
  std::sort(c.begin(), c.end());
  return c;
}

// This rank's flat slices (cut points drawn from rng, the same on every rank) of every tensor,
// filled with their values (fill = true) or poisoned.
struct Slices {
  std::vector<Tensor> local;
  std::vector<CkptTensor> list;
};
Slices flat_slices(int me, int W, std::mt19937_64& rng, bool fill, uint64_t seed) {
  Slices s;
  s.local.reserve(specs().size());  // list points into it
  for (size_t k = 0; k < specs().size(); ++k) {
    const Spec& sp = specs()[k];
    const std::vector<int64_t> c = cuts(numel(sp), W, rng);
    const int64_t b = c[static_cast<size_t>(me)], e = c[static_cast<size_t>(me) + 1];
    s.local.push_back(Tensor::zeros({e - b}));
    Tensor& t = s.local.back();
    for (int64_t i = 0; i < e - b; ++i) t.f32()[i] = fill ? value(k, b + i, seed) : -1e30f;
    CkptTensor ct;
    ct.name = sp.name;
    ct.global_shape = sp.shape;
    ct.kind = sp.kind;
    ct.local = &t;
    ct.flat_begin = b;
    s.list.push_back(ct);
  }
  return s;
}

}  // namespace

TEST(CheckpointFlat, SlicesAnywhereRoundTripAndMatchAWholeSave) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  const TestSeed seed = TestSeed::shared(world);
  SharedDir dir(world, "roundtrip");

  // Whole tensors (replicated: every rank holds all, the rows are spread over the ranks).
  std::vector<Tensor> whole;
  std::vector<CkptTensor> whole_list;
  whole.reserve(specs().size());
  for (size_t k = 0; k < specs().size(); ++k) {
    Tensor t = Tensor::zeros(specs()[k].shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = value(k, i, seed);
    whole.push_back(t);
  }
  for (size_t k = 0; k < specs().size(); ++k) {
    CkptTensor c;
    c.name = specs()[k].name;
    c.global_shape = specs()[k].shape;
    c.local = &whole[k];
    if (specs()[k].kind == io::TensorKind::kSharded) {  // row-sharded: rank 0 writes all rows
      c.kind = io::TensorKind::kSharded;
      c.write = me == 0;
    }
    whole_list.push_back(c);
  }
  io::save_checkpoint(dir.path + "/whole", 1, whole_list, json::object(), world);

  // Flat slices cut at random points (the same draws on every rank), in one-element pieces.
  auto make = [&](uint64_t draw, bool fill) {
    std::mt19937_64 rng(seed.value() * 31 + draw);
    return flat_slices(me, W, rng, fill, seed);
  };
  io::detail::set_checkpoint_io_piece_bytes(4);
  Slices written = make(1, true);
  io::save_checkpoint(dir.path + "/flat", 1, written.list, json::object(), world);
  io::detail::set_checkpoint_io_piece_bytes(int64_t{256} << 20);

  // The same datasets (shape, kind label, CRC32) as the whole save.
  bool ok = true;
  if (me == 0) {
    const io::Manifest a = io::read_manifest(dir.path + "/whole", 1);
    const io::Manifest b = io::read_manifest(dir.path + "/flat", 1);
    ok = a.tensors.size() == b.tensors.size();
    for (size_t k = 0; ok && k < a.tensors.size(); ++k) {
      const io::ManifestTensor &x = a.tensors[k], &y = b.tensors[k];
      if (x.name != y.name || x.shape != y.shape || x.kind != y.kind || x.crc32 != y.crc32) {
        ADD_FAILURE() << "\"" << x.name << "\": the flat save differs from the whole save";
        ok = false;
      }
    }
    const std::vector<std::string> problems = io::verify_checkpoint(dir.path + "/flat", 1);
    for (const std::string& p : problems) ADD_FAILURE() << p;
    ok = ok && problems.empty();
  }
  MOERUN_EXPECT_ALL(world, ok);

  // Loaded whole: every element where it belongs.
  std::vector<Tensor> back;
  std::vector<CkptTensor> back_list = whole_list;
  back.reserve(specs().size());
  for (size_t k = 0; k < specs().size(); ++k) {
    back.push_back(Tensor::zeros(specs()[k].shape));
    back.back().fill(-1e30f);
    back_list[k].local = &back[k];
    back_list[k].kind = io::TensorKind::kReplicated;  // every rank reads all rows
    back_list[k].write = true;
  }
  io::load_checkpoint(dir.path + "/flat", 1, back_list, world);
  ok = true;
  for (size_t k = 0; k < specs().size(); ++k)
    for (int64_t i = 0; i < back[k].numel(); ++i)
      if (back[k].f32()[i] != value(k, i, seed)) {
        ADD_FAILURE() << specs()[k].name << "[" << i << "] = " << back[k].f32()[i];
        ok = false;
        break;
      }
  MOERUN_EXPECT_ALL(world, ok);

  // The whole save loaded as other flat slices (in small pieces too).
  io::detail::set_checkpoint_io_piece_bytes(8);
  Slices read = make(2, false);
  io::load_checkpoint(dir.path + "/whole", 1, read.list, world);
  io::detail::set_checkpoint_io_piece_bytes(int64_t{256} << 20);
  ok = true;
  for (size_t k = 0; k < specs().size(); ++k)
    for (int64_t i = 0; i < read.local[k].numel(); ++i)
      if (read.local[k].f32()[i] != value(k, read.list[k].flat_begin + i, seed)) {
        ADD_FAILURE() << specs()[k].name << " flat [" << read.list[k].flat_begin + i
                      << "] = " << read.local[k].f32()[i];
        ok = false;
        break;
      }
  MOERUN_EXPECT_ALL(world, ok);
}

TEST(CheckpointFlat, WritersMustCoverEveryElementOnce) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  SharedDir dir(world, "cover");
  // Rank r claims [3r, 3r + 3) of 3W + 1 elements: the last one is held by no rank.
  Tensor t = Tensor::zeros({3});
  t.fill(1.0f);
  CkptTensor c;
  c.name = "gap";
  c.global_shape = {3 * static_cast<int64_t>(W) + 1};
  c.local = &t;
  c.flat_begin = 3 * me;
  std::vector<CkptTensor> list{c};
  bool threw = false;
  try {
    io::save_checkpoint(dir.path, 1, list, json::object(), world);
  } catch (const io::CheckpointError& e) {
    threw = std::string(e.what()).find("held by no rank") != std::string::npos;
    if (!threw) ADD_FAILURE() << e.what();
  }
  MOERUN_EXPECT_ALL(world, threw);
}

}  // namespace moerun::testing
