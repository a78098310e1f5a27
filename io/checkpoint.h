// Sharded checkpoints: named tensors at their global shapes in one parallel-HDF5 file per step,
// written by every rank at once, committed by a manifest, loadable at any layout.
//
// On disk (CKPT_DIR):
//   step_<N>/tensors.h5     one dataset per tensor at the root, named exactly as the tensor
//                           ("/layers.0.moe.w1", dots kept, no groups), at its GLOBAL shape, with
//                           attributes name, dtype ("f32"|"i32"|"i64"), kind
//                           ("replicated"|"sharded"); the file has attributes format, version,
//                           step, world_size. Experts sit at their global index of (E, ...).
//   step_<N>/manifest.json  the commit record: format, version, step, world_size, files (name
//                           and size), tensors (name, dtype, shape, kind, file, crc32), meta (the
//                           caller's JSON object). A step directory without it is never loaded.
//   latest                  "<N>\n", the step committed last (for people and tools; latest_step
//                           trusts manifests, not this file).
// Checksum: crc32 is zlib's CRC32 of the tensor's row-major little-endian bytes. Each rank CRCs
// the rows it writes (or verifies); rank 0 joins the slices in row order with crc32_combine.
//
// Commit protocol of save_checkpoint: every rank writes its rows (collective parallel HDF5),
// H5Fflush (MPI_File_sync) and H5Fclose -> all ranks agree (a barrier) -> rank 0 writes
// manifest.json.tmp, fsyncs, renames it to manifest.json and fsyncs the step directory -> rank 0
// rewrites `latest` the same way -> retention. Errors anywhere reach every rank as the same
// CheckpointError/Error, so no rank is left in a collective: every collective step of the HDF5
// write is followed by an agreement, since MPI-IO reports a failed write only on the ranks that
// wrote (the others' next collective HDF5 call would wait forever). A failed write names its
// cause, the file and the step, not HDF5's call chain: "checkpoint step 40: writing
// CKPT_DIR/step_40/tensors.h5 failed: No space left on device".
//
// Resuming: committed_steps (newest first) and the collective verify_checkpoint let a caller fall
// back from a damaged newest step to an intact older one; checkpoint_dir_problem
// (checkpoint_manifest.h) explains a path that holds no checkpoint at all.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "io/checkpoint_manifest.h"
#include "runtime/tensor.h"

namespace moerun::io {

struct CkptTensor {
  using Kind = TensorKind;
  std::string name;                   // valid per is_valid_tensor_name, unique in the list
  std::vector<int64_t> global_shape;  // at least 1-D
  int64_t row_begin = 0;              // kSharded: first global row (dim 0) held in `local`
  Tensor* local = nullptr;            // CPU, f32/i32/i64
  // kReplicated: every rank holds all rows (local shape == global shape); save spreads the rows
  // over the ranks; load fills all rows on every rank.
  // kSharded: `local` holds rows [row_begin, row_begin + local->dim(0)) of the global tensor; on
  // save only ranks with write=true write their rows (expert-data-parallel replicas pass false);
  // the writers must cover every row exactly once. On load every rank reads its own rows.
  Kind kind = Kind::kReplicated;
  bool write = true;
  // >= 0: a flat slice (ZeRO-1's optimizer shards): `local` (any shape) holds the elements
  // [flat_begin, flat_begin + local->numel()) of the row-major global tensor, and `kind` is only
  // the label the file records. On save every rank with write=true writes its elements (the
  // writers must cover every element exactly once); on load every rank reads its own.
  int64_t flat_begin = -1;
};

struct SaveStats {
  double seconds = 0;  // entry to commit, on this rank
  int64_t bytes = 0;   // tensor bytes in the checkpoint (all ranks together)
};

// Collective over `world`; every rank passes the same names, global shapes, dtypes and kinds in
// the same order, the same step, keep_last and meta (checked: a CheckpointError otherwise). Refuses
// to overwrite a committed step; a partial step_<N> is replaced. keep_last > 0 then deletes
// committed steps older than `step`, keeping keep_last steps including this one (steps newer than
// `step`, from an earlier run, are left alone).
SaveStats save_checkpoint(const std::string& ckpt_dir, int64_t step,
                          std::span<const CkptTensor> tensors, const nlohmann::json& meta,
                          const Comm& world, int keep_last = 0);

// The newest committed step (manifest present and parseable), the same on every rank (rank 0
// decides). Rank 0 reports on stderr the partial steps it ignored.
std::optional<int64_t> latest_step(const std::string& ckpt_dir, const Comm& world);

// Collective. Strict: a tensor missing from the checkpoint, one the checkpoint has but the caller
// does not ask for, or a shape/dtype mismatch is a CheckpointError naming them. Every dataset's
// crc32 is verified (each rank CRCs an even share of the rows). Fills the local tensors (their
// contents are unspecified after an error) and returns the manifest's meta object.
nlohmann::json load_checkpoint(const std::string& ckpt_dir, int64_t step,
                               std::span<const CkptTensor> tensors, const Comm& world);

// One process, no MPI: checks one step completely (manifest, file sizes, every dataset's shape,
// dtype and crc32, no unlisted datasets). Returns the problems found; empty means sound.
std::vector<std::string> verify_checkpoint(const std::string& ckpt_dir, int64_t step);

// The committed steps of ckpt_dir, newest first, the same on every rank (rank 0 scans). Empty
// when there are none (or ckpt_dir does not exist: checkpoint_dir_problem explains why).
std::vector<int64_t> committed_steps(const std::string& ckpt_dir, const Comm& world);

struct CheckpointVerdict {
  bool ok = false;
  std::string reason;  // why the step cannot be trusted (empty when ok)
};
// Collective: is step `step` of ckpt_dir sound, without loading it into a model? The manifest is
// read and checked, file sizes compared, every dataset's shape and dtype checked and its crc32
// computed from the file (each rank reads an even share of the rows) and compared with the
// manifest. The same verdict on every rank; nothing is thrown for a damaged step (an error
// while talking to the other ranks still is).
CheckpointVerdict verify_checkpoint(const std::string& ckpt_dir, int64_t step, const Comm& world);

namespace detail {
// Test hooks. The hook is called at the named phases of the commit protocol ("after_data" on
// every rank; "after_manifest_tmp", "after_manifest", "after_latest_tmp", "after_latest",
// "during_retention" on rank 0); a kill test makes it _exit. "write_failed" (every rank): a
// write of tensors.h5 failed somewhere, and the file is about to be closed. nullptr removes it.
using CheckpointTestHook = void (*)(const char* phase);
void set_checkpoint_test_hook(CheckpointTestHook hook);
// Largest single HDF5 read/write per rank (default 256 MiB; MPI-IO counts are int). Tests lower
// it to exercise the multi-piece path.
void set_checkpoint_io_piece_bytes(int64_t bytes);
}  // namespace detail

}  // namespace moerun::io
