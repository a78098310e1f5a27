// `moerun bench checkpoint`: save_checkpoint / load_checkpoint bandwidth against a plain POSIX
// sequential write (+fsync) and read of the same bytes per rank, on the same filesystem in the
// same run. The tensors are random f32, half of the bytes replicated (every rank holds them; save
// spreads the rows over the ranks) and half sharded like routed experts ((E, F, H), E/W experts
// per rank). Each rank's plain file holds exactly the rows it writes into the checkpoint.
//
// The page cache: a read right after a write measures memory. After the data is fsynced, both
// the checkpoint file and the plain files get posix_fadvise(POSIX_FADV_DONTNEED) before their
// read phase (the same treatment for both); mincore() then tells how much of each stayed
// resident, and the output says so.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/program_options.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include "comm/agree.h"
#include "comm/comm.h"
#include "io/checkpoint.h"
#include "io/checkpoint_manifest.h"
#include "jobs/jobs.h"
#include "layers/model_plan.h"
#include "runtime/check.h"
#include "runtime/timer.h"

namespace moerun {

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

double max_over(const Comm& c, double v) {
  c.allreduce_max(std::span<double>(&v, 1));
  return v;
}

[[noreturn]] void posix_error(const char* what, const std::string& path) {
  throw Error(fmt::format("bench checkpoint: {} {}: {}", what, path, std::strerror(errno)));
}

// Fills with uniform floats in [-1, 1) (splitmix64; fast enough for gigabytes).
void fill_random(std::span<float> x, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < x.size(); i += 2) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    x[i] = static_cast<float>(static_cast<int32_t>(z)) * 0x1.0p-31f;
    if (i + 1 < x.size()) x[i + 1] = static_cast<float>(static_cast<int32_t>(z >> 32)) * 0x1.0p-31f;
  }
}

// The bytes of one tensor this rank writes: a contiguous byte range of its local storage.
struct Piece {
  const std::byte* data = nullptr;
  std::byte* mut = nullptr;
  size_t bytes = 0;
};

// Writes all pieces into `path` sequentially (large write calls), fsyncs and closes.
void plain_write(const std::string& path, const std::vector<Piece>& pieces) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) posix_error("cannot create", path);
  for (const Piece& p : pieces) {
    size_t done = 0;
    while (done < p.bytes) {
      const size_t n = std::min<size_t>(p.bytes - done, size_t{1} << 30);
      const ssize_t w = ::write(fd, p.data + done, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        ::close(fd);
        posix_error("cannot write", path);
      }
      done += static_cast<size_t>(w);
    }
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    posix_error("cannot fsync", path);
  }
  if (::close(fd) != 0) posix_error("cannot close", path);
}

void plain_read(const std::string& path, const std::vector<Piece>& pieces) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) posix_error("cannot open", path);
  for (const Piece& p : pieces) {
    size_t done = 0;
    while (done < p.bytes) {
      const size_t n = std::min<size_t>(p.bytes - done, size_t{1} << 30);
      const ssize_t r = ::read(fd, p.mut + done, n);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        ::close(fd);
        posix_error("cannot read", path);
      }
      done += static_cast<size_t>(r);
    }
  }
  ::close(fd);
}

// fsync + posix_fadvise(DONTNEED) of a whole file; true when the kernel accepted the advice.
bool drop_cache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) posix_error("cannot open", path);
  ::fsync(fd);  // already durable; harmless, and dirty pages cannot be dropped
  const bool ok = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
  ::close(fd);
  return ok;
}

// The fraction of a file's pages in the page cache (mincore); -1 when it cannot be told.
double resident_fraction(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0) {
    ::close(fd);
    return -1;
  }
  const size_t len = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return -1;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((len + page - 1) / page);
  double frac = -1;
  if (::mincore(map, len, vec.data()) == 0) {
    size_t in = 0;
    for (unsigned char v : vec) in += v & 1;
    frac = static_cast<double>(in) / static_cast<double>(vec.size());
  }
  ::munmap(map, len);
  return frac;
}

std::string percent(double f) {
  return f < 0 ? std::string("?") : fmt::format("{:.0f}%", 100.0 * f);
}

}  // namespace

int run_bench_checkpoint(int argc, char** argv) {
  const Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  po::options_description desc(
      "moerun bench checkpoint: save_checkpoint/load_checkpoint GB/s vs a plain sequential POSIX\n"
      "write (+fsync) and read of the same bytes per rank, same filesystem, same run");
  auto add = desc.add_options();
  add("help,h", "show this help");
  add("gb", po::value<double>()->default_value(2.0),
      "checkpoint size in GB (1e9 bytes) over all ranks: half replicated, half sharded");
  add("dir", po::value<std::string>()->default_value("/tmp/moerun-bench-ckpt"),
      "where to write (a fresh subdirectory is made and removed at the end)");
  add("tensors", po::value<int>()->default_value(64),
      "number of tensors (half replicated, half expert-sharded)");
  add("no-drop-cache", "read back from the page cache (skip posix_fadvise DONTNEED)");
  add("json", "print only the JSON line");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (me == 0) std::cout << desc << "\n";
    return 0;
  }
  const double gb = vm["gb"].as<double>();
  const int n_tensors = vm["tensors"].as<int>();
  const std::string dir = vm["dir"].as<std::string>();
  const bool drop = !vm.count("no-drop-cache");
  const bool quiet = vm.count("json") > 0;
  MOERUN_CONFIG_REQUIRE(gb > 0 && std::isfinite(gb), "--gb {} must be > 0", gb);
  MOERUN_CONFIG_REQUIRE(n_tensors >= 2, "--tensors {} must be at least 2", n_tensors);

  // Shapes: replicated (rows, 1024) f32; sharded (E, F, 1024) f32 with E = 4W experts.
  const int64_t H = 1024, row_bytes = H * 4, E = 4 * static_cast<int64_t>(W);
  const int n_rep = n_tensors / 2, n_shard = n_tensors - n_rep;
  const double total = gb * 1e9;
  const int64_t rep_rows = std::max<int64_t>(
      1, static_cast<int64_t>(total / 2 / n_rep / static_cast<double>(row_bytes)));
  const int64_t F = std::max<int64_t>(
      1, static_cast<int64_t>(total / 2 / n_shard / static_cast<double>(E * row_bytes)));
  const int64_t e_local = E / W;
  const int64_t ckpt_bytes = (n_rep * rep_rows + n_shard * E * F) * row_bytes;
  // Memory on this node: every rank holds all replicated tensors and its experts.
  Comm node = world.split_shared_memory();
  const int64_t per_rank = (n_rep * rep_rows + n_shard * e_local * F) * row_bytes;
  const int64_t node_need = per_rank * node.size();
  const int64_t avail = available_memory_bytes();
  MOERUN_CONFIG_REQUIRE(avail == 0 || node_need <= avail / 2,
                        "--gb {}: the tensors need {:.2f} GB of memory on this node ({} rank(s) x "
                        "{:.2f} GB: every rank holds the replicated half), more than half of "
                        "MemAvailable ({:.2f} GB); pass a smaller --gb",
                        gb, static_cast<double>(node_need) / 1e9, node.size(),
                        static_cast<double>(per_rank) / 1e9, static_cast<double>(avail) / 1e9);
  // Disk: the checkpoint and the plain files exist at once (checked where rank 0 writes).
  std::string work;
  on_rank0<ConfigError, ConfigError>(world, "preparing --dir", [&] {
    std::error_code ec;
    fs::create_directories(dir, ec);
    MOERUN_CONFIG_REQUIRE(!ec, "--dir {}: cannot create it: {}", dir, ec.message());
    const fs::space_info sp = fs::space(dir, ec);
    MOERUN_CONFIG_REQUIRE(!ec, "--dir {}: {}", dir, ec.message());
    MOERUN_CONFIG_REQUIRE(
        static_cast<double>(2 * ckpt_bytes) <= static_cast<double>(sp.available) / 2,
        "--gb {}: the checkpoint and the plain files take {:.2f} GB, more "
        "than half of the {:.2f} GB free in {}; pass a smaller --gb",
        gb, 2.0 * static_cast<double>(ckpt_bytes) / 1e9, static_cast<double>(sp.available) / 1e9,
        dir);
    work = (fs::path(dir) / fmt::format("run-{}", ::getpid())).string();
    fs::remove_all(work);
    fs::create_directories(work);
  });
  world.broadcast(work, 0);
  const std::string ckpt = (fs::path(work) / "ckpt").string();
  const std::string plain = (fs::path(work) / fmt::format("plain.{}.bin", me)).string();

  // The tensors and, per tensor, the rows this rank writes (as save_checkpoint spreads them).
  std::vector<Tensor> local;
  std::vector<io::CkptTensor> tensors;
  std::vector<Piece> pieces;
  local.reserve(static_cast<size_t>(n_tensors));
  for (int i = 0; i < n_tensors; ++i) {
    io::CkptTensor c;
    c.name = fmt::format("{}.{}", i < n_rep ? "replicated" : "sharded", i);
    if (i < n_rep) {
      local.push_back(Tensor::empty({rep_rows, H}));
      c.global_shape = {rep_rows, H};
      const int64_t b = rep_rows * me / W, e = rep_rows * (me + 1) / W;
      std::byte* p = reinterpret_cast<std::byte*>(local.back().f32());
      pieces.push_back(
          {p + b * row_bytes, p + b * row_bytes, static_cast<size_t>((e - b) * row_bytes)});
    } else {
      local.push_back(Tensor::empty({e_local, F, H}));
      c.global_shape = {E, F, H};
      c.kind = io::TensorKind::kSharded;
      c.row_begin = e_local * me;
      std::byte* p = reinterpret_cast<std::byte*>(local.back().f32());
      pieces.push_back({p, p, local.back().nbytes()});
    }
    // Replicated tensors are the same on every rank (seeded by index); experts by global index.
    fill_random(local.back().span<float>(),
                static_cast<uint64_t>(i) * 1000003u + (i < n_rep ? 0u : static_cast<uint64_t>(me)));
    c.local = &local.back();
    tensors.push_back(std::move(c));
  }
  int64_t my_bytes = 0;
  for (const Piece& p : pieces) my_bytes += static_cast<int64_t>(p.bytes);
  const nlohmann::json meta = {{"bench", "checkpoint"}, {"layout", {{"world", W}, {"ep", W}}}};

  // CRC32 of this rank's bytes from memory (what save and load add to the I/O).
  world.barrier();
  double t0 = now_seconds();
  uint32_t crc = 0;
  for (const Piece& p : pieces) crc = io::crc32_bytes(p.data, p.bytes, crc);
  const double t_crc = max_over(world, now_seconds() - t0);

  // Checkpoint: save, drop the cache, load.
  world.barrier();
  t0 = now_seconds();
  io::save_checkpoint(ckpt, 1, tensors, meta, world, 0);
  const double t_save = max_over(world, now_seconds() - t0);
  const std::string h5 = (fs::path(io::step_dir(ckpt, 1)) / io::kTensorFileName).string();
  bool dropped = true;
  double resident_ckpt = -1, resident_plain = -1;
  if (drop && me == 0) dropped = drop_cache(h5);
  if (me == 0) resident_ckpt = resident_fraction(h5);
  world.barrier();
  t0 = now_seconds();
  io::load_checkpoint(ckpt, 1, tensors, world);
  const double t_load = max_over(world, now_seconds() - t0);

  // Plain POSIX: each rank writes its bytes into its own file, then reads them back.
  world.barrier();
  t0 = now_seconds();
  plain_write(plain, pieces);
  const double t_write = max_over(world, now_seconds() - t0);
  if (drop) dropped = drop_cache(plain) && dropped;
  resident_plain = resident_fraction(plain);
  dropped = world.all_true(dropped);
  resident_plain = max_over(world, resident_plain);
  world.barrier();
  t0 = now_seconds();
  plain_read(plain, pieces);
  const double t_read = max_over(world, now_seconds() - t0);

  // The data read back is what was written.
  uint32_t crc2 = 0;
  for (const Piece& p : pieces) crc2 = io::crc32_bytes(p.data, p.bytes, crc2);
  const bool intact = world.all_true(crc2 == crc);
  world.barrier();
  if (me == 0) {
    std::error_code ec;
    fs::remove_all(work, ec);
  }
  MOERUN_REQUIRE(intact, "bench checkpoint: the plain read returned other bytes than were written");

  const double B = static_cast<double>(ckpt_bytes);
  const double save_gbs = B / t_save / 1e9, write_gbs = B / t_write / 1e9;
  const double load_gbs = B / t_load / 1e9, read_gbs = B / t_read / 1e9;
  const double load_read_bytes =
      static_cast<double>((n_rep * rep_rows * W + n_shard * E * F) * row_bytes);
  const double crc_gbs = static_cast<double>(my_bytes) / t_crc / 1e9;
  const std::string cache =
      !drop     ? "not dropped (--no-drop-cache): reads may come from the page cache"
      : dropped ? "dropped with fsync + posix_fadvise(DONTNEED) before each read phase"
                : "posix_fadvise(DONTNEED) failed on some file: reads may be cached";
  if (me == 0) {
    if (!quiet) {
      std::printf(
          "checkpoint bench: %d rank(s), %.3f GB (%d tensors: %d replicated (%ld, %ld), %d sharded "
          "(%ld, %ld, %ld) over EP %d), f32, in %s\n",
          W, B / 1e9, n_tensors, n_rep, static_cast<long>(rep_rows), static_cast<long>(H), n_shard,
          static_cast<long>(E), static_cast<long>(F), static_cast<long>(H), W, work.c_str());
      std::printf("page cache: %s; resident before reading: checkpoint %s, plain files %s (max)\n",
                  cache.c_str(), percent(resident_ckpt).c_str(), percent(resident_plain).c_str());
      std::printf("  %-32s %10s %12s %8s\n", "measure (all ranks, max time)", "checkpoint",
                  "plain POSIX", "ratio");
      std::printf("  %-32s %10.3f %12.3f %8.2f\n", "write GB/s (save / write+fsync)", save_gbs,
                  write_gbs, save_gbs / write_gbs);
      std::printf("  %-32s %10.3f %12.3f %8.2f\n", "read GB/s (load / read)", load_gbs, read_gbs,
                  load_gbs / read_gbs);
      std::printf("  %-32s %10.3f %12.3f\n", "write seconds", t_save, t_write);
      std::printf("  %-32s %10.3f %12.3f\n", "read seconds", t_load, t_read);
      std::printf("  %-32s %10.3f %12s   (per rank, %.3f GB each, in memory)\n", "crc32 GB/s",
                  crc_gbs, "", static_cast<double>(my_bytes) / 1e9);
      std::printf(
          "GB/s = checkpoint bytes / slowest rank's time. Each rank writes and plain-reads its\n"
          "%.3f GB; load reads the replicated half on every rank (%.3f GB read in all) and CRCs\n"
          "a share of each dataset; save CRCs its rows.\n",
          static_cast<double>(my_bytes) / 1e9, load_read_bytes / 1e9);
    }
    std::printf(
        "{\"bench\": \"checkpoint\", \"ranks\": %d, \"bytes\": %lld, \"tensors\": %d, "
        "\"save_s\": %.4f, \"load_s\": %.4f, \"plain_write_s\": %.4f, \"plain_read_s\": %.4f, "
        "\"save_gb_per_s\": %.4f, \"plain_write_gb_per_s\": %.4f, \"save_vs_write\": %.4f, "
        "\"load_gb_per_s\": %.4f, \"plain_read_gb_per_s\": %.4f, \"load_vs_read\": %.4f, "
        "\"crc32_gb_per_s_per_rank\": %.4f, \"cache_dropped\": %s, \"resident_ckpt\": %.4f, "
        "\"resident_plain\": %.4f}\n",
        W, static_cast<long long>(ckpt_bytes), n_tensors, t_save, t_load, t_write, t_read, save_gbs,
        write_gbs, save_gbs / write_gbs, load_gbs, read_gbs, load_gbs / read_gbs, crc_gbs,
        drop && dropped ? "true" : "false", resident_ckpt, resident_plain);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace moerun
