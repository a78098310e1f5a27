// Sharded checkpoints, the save side: parallel-HDF5 writes of every rank's part, CRCs, the
// commit protocol and retention (layout and protocol in checkpoint.h).
#include "io/checkpoint.h"

#include <hdf5.h>

#include <algorithm>
#include <bit>
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
using namespace ckpt;  // NOLINT: this file's own helpers

static_assert(std::endian::native == std::endian::little,
              "checkpoint CRCs are computed over little-endian bytes in memory");

namespace {

// ---- save ------------------------------------------------------------------------------------

H5Id create_dataset(hid_t file, const CkptTensor& t) {
  const DType d = t.local->dtype();
  std::vector<hsize_t> dims(t.global_shape.begin(), t.global_shape.end());
  H5Id space(H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)));
  H5Id dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  H5_CHECK(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));  // every row is written
  H5Id dset(H5_CHECK(H5Dcreate2(file, ("/" + t.name).c_str(), file_type(d), space, H5P_DEFAULT,
                                dcpl, H5P_DEFAULT)));
  h5_write_attr(dset, "name", t.name);
  h5_write_attr(dset, "dtype", std::string(checkpoint_dtype_name(d)));
  h5_write_attr(dset, "kind", std::string(to_string(t.kind)));
  return dset;
}

// Round r of the collective write of `rows` of t: every rank makes the same number of calls, an
// empty one when it has no rows left.
void write_round(hid_t dset, const CkptTensor& t, Rows rows, int64_t r, hid_t dxpl) {
  const DType d = t.local->dtype();
  const int64_t rb = unit_bytes(t);
  const int64_t step = piece_rows(rb);
  const Rows held = local_rows(t);
  const std::byte* data = raw_bytes(*t.local);
  static const std::byte dummy[8] = {};
  int64_t b = std::min(rows.count, r * step), n = std::min(rows.count - b, step);
  H5Id fs_ = unit_selection(dset, is_flat(t), rows.begin + b, n);
  H5Id ms = mem_space(n * rb / static_cast<int64_t>(dtype_size(d)));
  const std::byte* src = n ? data + (rows.begin - held.begin + b) * rb : dummy;
  H5_CHECK(H5Dwrite(dset, mem_type(d), ms, fs_, dxpl, src));
}

// Rank 0, after the data is durable: manifest, latest, retention (each step a hook point).
void commit(const std::string& ckpt_dir, const Manifest& m, int keep_last) {
  const std::string dir = step_dir(ckpt_dir, m.step);
  fsync_path((fs::path(dir) / kTensorFileName).string());
  fsync_path(dir);
  const std::string manifest = (fs::path(dir) / kManifestName).string();
  write_file_synced(manifest + ".tmp", manifest_to_json(m));
  hook("after_manifest_tmp");
  rename_durably(manifest + ".tmp", manifest);  // the commit point
  hook("after_manifest");
  const std::string latest = (fs::path(ckpt_dir) / kLatestName).string();
  write_file_synced(latest + ".tmp", fmt::format("{}\n", m.step));
  hook("after_latest_tmp");
  rename_durably(latest + ".tmp", latest);
  hook("after_latest");
  if (keep_last <= 0) return;
  std::vector<int64_t> older;
  for (int64_t s : scan_checkpoints(ckpt_dir).committed)
    if (s < m.step) older.push_back(s);
  const size_t keep_older = static_cast<size_t>(keep_last - 1);
  if (older.size() <= keep_older) return;
  older.resize(older.size() - keep_older);  // the oldest ones
  for (int64_t s : older) {
    // Uncommit first: a crash in the middle leaves a partial step, never a damaged committed one.
    const std::string sdir = step_dir(ckpt_dir, s);
    std::error_code ec;
    fs::remove(fs::path(sdir) / kManifestName, ec);
    if (!ec) fsync_path(sdir);
    hook("during_retention");
    if (!ec) fs::remove_all(sdir, ec);
    if (ec)
      std::fprintf(stderr, "moerun: checkpoint retention could not delete %s: %s\n", sdir.c_str(),
                   ec.message().c_str());
  }
}

}  // namespace

SaveStats save_checkpoint(const std::string& ckpt_dir, int64_t step,
                          std::span<const CkptTensor> tensors, const json& meta, const Comm& world,
                          int keep_last) {
  const double t0 = now_seconds();
  h5_silence_auto_print();
  const int W = world.size(), me = world.rank();
  const size_t N = tensors.size();
  on_all(world, [&] {
    MOERUN_CONFIG_REQUIRE(step >= 0, "checkpoint step {} is negative", step);
    MOERUN_CONFIG_REQUIRE(keep_last >= 0, "keep_last {} is negative", keep_last);
    MOERUN_CONFIG_REQUIRE(meta.is_object(), "checkpoint meta must be a JSON object");
    validate_request(tensors);
  });
  uint64_t h = fnv1a(describe(tensors), &step, sizeof(step));
  h = fnv1a(h, &keep_last, sizeof(keep_last));
  const std::string meta_text = meta.dump();
  h = fnv1a(h, meta_text.data(), meta_text.size());
  if (!world.same_everywhere(h))
    throw CheckpointError("ranks passed different checkpoint tensor lists, steps or meta");

  // What each rank writes, and its CRC (computed before the write, from memory).
  std::vector<Rows> writes(N);
  std::vector<CrcSlice> mine(N);
  SaveStats stats;
  for (size_t i = 0; i < N; ++i) {
    const CkptTensor& t = tensors[i];
    const int64_t rb = unit_bytes(t);
    stats.bytes += units(t) * rb;
    if (t.kind == TensorKind::kReplicated && !is_flat(t)) {
      writes[i] = share(t.global_shape[0], me, W);
    } else if (t.write) {
      writes[i] = local_rows(t);
    }
    const std::byte* src = raw_bytes(*t.local);
    const Rows held = local_rows(t);
    mine[i] = {writes[i].begin, writes[i].count,
               writes[i].count ? crc32_bytes(src + (writes[i].begin - held.begin) * rb,
                                             static_cast<size_t>(writes[i].count * rb))
                               : 0u};
  }
  const std::vector<int64_t> all = gather_slices(world, mine);

  // Rank 0: the writers must tile every tensor; the step directory is prepared.
  Manifest m;
  std::vector<int64_t> rounds(N, 0);
  on_root(world, [&] {
    m.step = step;
    m.world_size = W;
    m.meta = meta;
    std::vector<std::string> problems;
    for (size_t i = 0; i < N; ++i) {
      const CkptTensor& t = tensors[i];
      const int64_t rb = unit_bytes(t);
      auto slices = slices_of(all, i, N, W);
      // A dataset without elements has no storage: nobody writes to it (rounds stay 0).
      for (const auto& s : slices) {
        if (rb > 0 && s.count > 0)
          rounds[i] = std::max(rounds[i], (s.count - 1) / piece_rows(rb) + 1);
      }
      CombinedCrc c = combine_crc_slices(std::move(slices), units(t), rb);
      if (!c.error.empty())
        problems.push_back(fmt::format("\"{}\": {} (check {} and write)", t.name, c.error,
                                       is_flat(t) ? "flat_begin" : "row_begin"));
      m.tensors.push_back(
          {t.name, t.local->dtype(), t.global_shape, t.kind, kTensorFileName, c.crc});
    }
    MOERUN_CONFIG_REQUIRE(problems.empty(), "cannot save checkpoint step {}: {}", step,
                          fmt::join(problems, "; "));
    const std::string dir = step_dir(ckpt_dir, step);
    MOERUN_CONFIG_REQUIRE(!fs::exists(fs::path(dir) / kManifestName),
                          "checkpoint step {} is already committed in {}; refusing to "
                          "overwrite it",
                          step, dir);
    std::error_code ec;
    fs::remove_all(dir, ec);  // a partial step from a crashed run
    if (!ec) fs::create_directories(dir, ec);
    MOERUN_REQUIRE(!ec, "cannot prepare checkpoint directory {}: {}", dir, ec.message());
  });
  world.broadcast(std::as_writable_bytes(std::span(rounds)), 0);

  // Every rank: collective parallel-HDF5 write of its rows, flushed to disk, closed. MPI-IO reports
  // a failed write only on the ranks that wrote (the aggregators), and the others' next collective
  // HDF5 call would wait for them forever: so after each collective step every rank learns whether
  // any rank failed, and all stop at the same step (the handles then close on every rank). A
  // failure is reported by its cause (a full disk, a quota), the file and the step, not HDF5's
  // call chain; a rank that saw the system error speaks for all.
  const std::string path = (fs::path(step_dir(ckpt_dir, step)) / kTensorFileName).string();
  LocalFailure wrote;
  int sys_errno = 0;
  auto all_ok = [&](auto&& f) {
    if (!wrote.failed())
      wrote = capture_failure([&] {
        try {
          f();
        } catch (const std::exception& e) {
          if (const auto* h5 = dynamic_cast<const H5Error*>(&e)) sys_errno = h5->sys_errno();
          throw Error(fmt::format("checkpoint step {}: writing {} failed: {}", step, path,
                                  write_failure_cause(e, path)));
        }
      });
    return world.all_true(!wrote.failed());
  };
  {
    H5Id file, dxpl;
    bool ok = all_ok([&] {
      H5Id fapl = file_access(&world);
      file = H5Id(H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl)));
      h5_write_attr(file, "format", std::string(kCheckpointFormat));
      h5_write_attr(file, "version", int64_t{kCheckpointVersion});
      h5_write_attr(file, "step", step);
      h5_write_attr(file, "world_size", int64_t{W});
      dxpl = H5Id(H5_CHECK(H5Pcreate(H5P_DATASET_XFER)));
      H5_CHECK(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE));
    });
    H5Id dset;  // the previous one closes when the next is assigned
    for (size_t i = 0; ok && i < N; ++i) {
      ok = all_ok([&] { dset = create_dataset(file, tensors[i]); });
      for (int64_t r = 0; ok && r < rounds[i]; ++r)
        ok = all_ok([&] { write_round(dset, tensors[i], writes[i], r, dxpl); });
    }
    if (ok) {
      dset.reset();
      ok = all_ok([&] {
        H5_CHECK(H5Fflush(file, H5F_SCOPE_GLOBAL));  // MPI_File_sync on every rank
        H5_CHECK(H5Fclose(file.release()));
      });
    }
    if (!ok) hook("write_failed");
  }  // after a failure: the dataset and the file close here, on every rank
  LocalFailure failed = agree_on_failure(world, sys_errno != 0 ? wrote : LocalFailure{});
  if (!failed.failed()) failed = agree_on_failure(world, wrote);
  if (failed.failed()) throw Error(failed.message);
  hook("after_data");

  on_root(world, [&] {
    m.files.push_back({kTensorFileName, static_cast<int64_t>(fs::file_size(path))});
    try {
      commit(ckpt_dir, m, keep_last);
    } catch (const ConfigError&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(fmt::format("checkpoint step {}: committing failed: {}", step, e.what()));
    }
  });
  stats.seconds = now_seconds() - t0;
  return stats;
}

}  // namespace moerun::io
