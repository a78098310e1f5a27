// Sharded checkpoints, the read side: latest_step, load at any layout with CRC verification,
// committed_steps and verify_checkpoint (layout and protocol in checkpoint.h; the save side is
// checkpoint_save.cpp).
#include "io/checkpoint.h"

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "io/checkpoint_parts.h"
#include "runtime/durable_file.h"
#include "runtime/timer.h"

namespace moerun::io {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace ckpt;  // NOLINT: the helpers shared with the save side

std::optional<int64_t> latest_step(const std::string& ckpt_dir, const Comm& world) {
  int64_t latest = -1;
  on_root(world, [&] {
    CheckpointScan scan = scan_checkpoints(ckpt_dir);
    if (!scan.committed.empty()) latest = scan.committed.back();
    for (const auto& p : scan.partial)
      std::fprintf(stderr, "moerun: ignoring uncommitted checkpoint %s: %s\n",
                   step_dir(ckpt_dir, p.step).c_str(), p.reason.c_str());
    if (latest >= 0 && scan.latest_file != latest)
      std::fprintf(stderr, "moerun: %s/latest %s; the newest committed step is %lld\n",
                   ckpt_dir.c_str(),
                   scan.latest_file              ? fmt::format("says {}", *scan.latest_file).c_str()
                   : scan.latest_problem.empty() ? "is absent"
                                                 : ("is " + scan.latest_problem).c_str(),
                   static_cast<long long>(latest));
  });
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(&latest, 1)), 0);
  if (latest < 0) return std::nullopt;
  return latest;
}

json load_checkpoint(const std::string& ckpt_dir, int64_t step, std::span<const CkptTensor> tensors,
                     const Comm& world) {
  h5_silence_auto_print();
  const int W = world.size(), me = world.rank();
  const size_t N = tensors.size();
  on_all(world, [&] { validate_request(tensors); });
  if (!world.same_everywhere(fnv1a(describe(tensors), &step, sizeof(step))))
    throw CheckpointError("ranks asked for different checkpoint tensor lists or steps");

  // Rank 0 reads and checks the manifest; every rank parses the same text.
  std::string text;
  on_root(world, [&] {
    Manifest m0 = read_manifest(ckpt_dir, step);
    check_file_sizes(m0, step_dir(ckpt_dir, step));
    text = manifest_to_json(m0);
  });
  world.broadcast(text, 0);
  const std::string where = (fs::path(step_dir(ckpt_dir, step)) / kManifestName).string();
  Manifest m;
  std::vector<const ManifestTensor*> entries(N, nullptr);
  on_all(world, [&] {
    m = parse_manifest(text, where);
    std::map<std::string, const ManifestTensor*> by_name;
    for (const auto& t : m.tensors) by_name[t.name] = &t;
    std::vector<std::string> missing, extra, mismatched;
    for (size_t i = 0; i < N; ++i) {
      const CkptTensor& t = tensors[i];
      auto it = by_name.find(t.name);
      if (it == by_name.end()) {
        missing.push_back(t.name);
        continue;
      }
      const ManifestTensor& e = *it->second;
      by_name.erase(it);
      entries[i] = &e;
      if (e.shape != t.global_shape || e.dtype != t.local->dtype())
        mismatched.push_back(
            fmt::format("\"{}\" is {} ({}) in the checkpoint, {} ({}) here", t.name,
                        checkpoint_dtype_name(e.dtype), fmt::join(e.shape, ", "),
                        checkpoint_dtype_name(t.local->dtype()), fmt::join(t.global_shape, ", ")));
    }
    for (const auto& [name, e] : by_name) extra.push_back(name);
    std::vector<std::string> problems;
    if (!missing.empty())
      problems.push_back(fmt::format("missing from the checkpoint: {}", fmt::join(missing, ", ")));
    if (!extra.empty())
      problems.push_back(
          fmt::format("in the checkpoint but not requested: {}", fmt::join(extra, ", ")));
    if (!mismatched.empty())
      problems.push_back(fmt::format("mis-shaped: {}", fmt::join(mismatched, "; ")));
    MOERUN_CONFIG_REQUIRE(problems.empty(),
                          "checkpoint step {} in {} does not match the "
                          "model: {}",
                          step, ckpt_dir, fmt::join(problems, "; "));
  });

  // Every rank reads its rows (independently) and CRCs an even share of each dataset.
  std::vector<CrcSlice> mine(N);
  on_all(world, [&] {
    std::map<std::string, H5Id> files;
    for (const auto& f : m.files)
      files[f.path] = open_read_only((fs::path(step_dir(ckpt_dir, step)) / f.path).string());
    for (size_t i = 0; i < N; ++i) {
      const CkptTensor& t = tensors[i];
      const ManifestTensor& e = *entries[i];
      const std::string fpath = (fs::path(step_dir(ckpt_dir, step)) / e.file).string();
      H5Id dset = open_checked(files.at(e.file), e, fpath);
      const DType d = e.dtype;
      const int64_t rb = row_bytes(e.shape, d);
      const int64_t ub = unit_bytes(t);  // rb, or one element's bytes for a flat slice
      const Rows held = local_rows(t);
      std::byte* dst = raw_bytes(*t.local);
      read_rows(dset, d, ub, held.begin, held.count, dst, is_flat(t));
      // This rank's verification share (rows), from memory when it holds those bytes.
      const Rows v = share(e.shape[0], me, W);
      const int64_t vb = v.begin * rb, ve = (v.begin + v.count) * rb;  // bytes of the tensor
      const int64_t hb = held.begin * ub, he = (held.begin + held.count) * ub;
      uint32_t crc = 0;
      if (vb >= hb && ve <= he) {
        if (v.count) crc = crc32_bytes(dst + (vb - hb), static_cast<size_t>(ve - vb));
      } else {
        crc = crc_rows_from_file(dset, d, rb, v.begin, v.count);
      }
      mine[i] = {v.begin, v.count, crc};
    }
  });
  const std::vector<int64_t> all = gather_slices(world, mine);
  on_root(world, [&] {
    std::vector<std::string> bad;
    for (size_t i = 0; i < N; ++i) {
      const ManifestTensor& e = *entries[i];
      CombinedCrc c =
          combine_crc_slices(slices_of(all, i, N, W), e.shape[0], row_bytes(e.shape, e.dtype));
      MOERUN_REQUIRE(c.error.empty(), "checkpoint verification slices: {}", c.error);
      if (c.crc != e.crc32)
        bad.push_back(fmt::format("dataset \"/{}\" in {} (crc32 {:08x}, manifest {:08x})", e.name,
                                  (fs::path(step_dir(ckpt_dir, step)) / e.file).string(), c.crc,
                                  e.crc32));
    }
    MOERUN_CONFIG_REQUIRE(bad.empty(), "checkpoint step {} is corrupt: checksum mismatch in {}",
                          step, fmt::join(bad, "; "));
  });
  return m.meta;
}

std::vector<int64_t> committed_steps(const std::string& ckpt_dir, const Comm& world) {
  std::vector<int64_t> steps;
  on_root(world, [&] {
    const CheckpointScan scan = scan_checkpoints(ckpt_dir);
    steps.assign(scan.committed.rbegin(), scan.committed.rend());
  });
  int64_t n = static_cast<int64_t>(steps.size());
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(&n, 1)), 0);
  steps.resize(static_cast<size_t>(n));
  world.broadcast(std::as_writable_bytes(std::span(steps)), 0);
  return steps;
}

CheckpointVerdict verify_checkpoint(const std::string& ckpt_dir, int64_t step, const Comm& world) {
  h5_silence_auto_print();
  const int W = world.size(), me = world.rank();
  const std::string dir = step_dir(ckpt_dir, step);

  // Rank 0 reads and checks the manifest and the file sizes; every rank parses the same text.
  std::string text;
  LocalFailure local;
  if (me == 0)
    local = capture_failure([&] {
      Manifest m0 = read_manifest(ckpt_dir, step);
      check_file_sizes(m0, dir);
      text = manifest_to_json(m0);
    });
  LocalFailure f = agree_on_failure(world, local);
  if (f.failed()) return {false, f.message};
  world.broadcast(text, 0);

  // Every rank CRCs an even share of each dataset's rows, read from the file.
  Manifest m;
  std::vector<CrcSlice> mine;
  f = agree_on_failure(
      world, capture_failure([&] {
        m = parse_manifest(text, (fs::path(dir) / kManifestName).string());
        mine.resize(m.tensors.size());
        for (const auto& mf : m.files) {
          const std::string path = (fs::path(dir) / mf.path).string();
          H5Id file = open_read_only(path);
          std::set<std::string> listed;
          for (size_t i = 0; i < m.tensors.size(); ++i) {
            const ManifestTensor& e = m.tensors[i];
            if (e.file != mf.path) continue;
            listed.insert(e.name);
            H5Id dset = open_checked(file, e, path);
            const Rows v = share(e.shape[0], me, W);
            mine[i] = {
                v.begin, v.count,
                crc_rows_from_file(dset, e.dtype, row_bytes(e.shape, e.dtype), v.begin, v.count)};
          }
          if (me != 0) continue;
          std::vector<std::string> names;
          H5_CHECK(H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names));
          for (const auto& name : names)
            MOERUN_CONFIG_REQUIRE(listed.count(name),
                                  "{} holds \"/{}\", which the manifest does "
                                  "not list",
                                  path, name);
        }
      }));
  if (f.failed()) return {false, f.message};
  const std::vector<int64_t> all = gather_slices(world, mine);
  std::string reason;
  if (me == 0) {
    std::vector<std::string> bad;
    const size_t N = m.tensors.size();
    for (size_t i = 0; i < N; ++i) {
      const ManifestTensor& e = m.tensors[i];
      CombinedCrc c =
          combine_crc_slices(slices_of(all, i, N, W), e.shape[0], row_bytes(e.shape, e.dtype));
      if (!c.error.empty()) {
        bad.push_back(fmt::format("dataset \"/{}\": {}", e.name, c.error));
      } else if (c.crc != e.crc32) {
        bad.push_back(fmt::format("dataset \"/{}\" in {} (crc32 {:08x}, manifest {:08x})", e.name,
                                  (fs::path(dir) / e.file).string(), c.crc, e.crc32));
      }
    }
    if (!bad.empty())
      reason = fmt::format("checkpoint step {} is corrupt: checksum mismatch in {}", step,
                           fmt::join(bad, "; "));
  }
  world.broadcast(reason, 0);
  return {reason.empty(), reason};
}

std::vector<std::string> verify_checkpoint(const std::string& ckpt_dir, int64_t step) {
  h5_silence_auto_print();
  std::vector<std::string> problems;
  Manifest m;
  try {
    m = read_manifest(ckpt_dir, step);
    check_file_sizes(m, step_dir(ckpt_dir, step));
  } catch (const std::exception& e) {
    problems.push_back(e.what());
    return problems;
  }
  for (const auto& f : m.files) {
    const std::string path = (fs::path(step_dir(ckpt_dir, step)) / f.path).string();
    LocalFailure err = capture_failure([&] {
      H5Id file = open_read_only(path);
      std::set<std::string> listed;
      for (const auto& t : m.tensors) {
        if (t.file != f.path) continue;
        listed.insert(t.name);
        LocalFailure e = capture_failure([&] {
          H5Id dset = open_checked(file, t, path);
          uint32_t crc =
              crc_rows_from_file(dset, t.dtype, row_bytes(t.shape, t.dtype), 0, t.shape[0]);
          MOERUN_CONFIG_REQUIRE(crc == t.crc32,
                                "checksum mismatch in dataset \"/{}\" in {} (crc32 {:08x}, "
                                "manifest {:08x})",
                                t.name, path, crc, t.crc32);
        });
        if (e.failed()) problems.push_back(e.message);
      }
      std::vector<std::string> names;
      H5_CHECK(H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names));
      for (const auto& name : names)
        if (!listed.count(name))
          problems.push_back(
              fmt::format("{} holds \"/{}\", which the manifest does not list", path, name));
    });
    if (err.failed()) problems.push_back(err.message);
  }
  return problems;
}

}  // namespace moerun::io
