// Private to io/checkpoint*.cpp: what the save path (checkpoint_save.cpp) and the load and
// verify paths (checkpoint.cpp) share: agreed errors, the units a tensor moves in, and the HDF5
// selections, reads and CRCs. Not part of io's interface (checkpoint.h is).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "comm/agree.h"
#include "io/checkpoint.h"
#include "io/checkpoint_manifest.h"
#include "io/h5_util.h"

namespace moerun::io::ckpt {

using nlohmann::json;

void hook(const char* phase);

// ---- errors that every rank agrees on --------------------------------------------------------

// Collective: runs f on every rank; if it threw anywhere, every rank throws the lowest failing
// rank's message, a CheckpointError for bad input and an Error otherwise.
template <class F>
void on_all(const Comm& world, F&& f) {
  on_every_rank<CheckpointError>(world, "checkpoint", std::forward<F>(f));
}
// Collective: the same, with f on rank 0 only.
template <class F>
void on_root(const Comm& world, F&& f) {
  on_rank0<CheckpointError>(world, "checkpoint", std::forward<F>(f));
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n);

// What must agree on every rank: names, global shapes, dtypes and kinds, in order.
uint64_t describe(std::span<const CkptTensor> tensors);

// ---- requests --------------------------------------------------------------------------------

int64_t product(std::span<const int64_t> dims);

int64_t row_bytes(const std::vector<int64_t>& shape, DType dtype);

// A tensor is moved in units: rows of dim 0, or single elements for a flat slice (flat_begin).
bool is_flat(const CkptTensor& t);
int64_t units(const CkptTensor& t);
int64_t unit_bytes(const CkptTensor& t);

// Units (rows, or elements of a flat slice) [begin, begin + count) held locally by this rank.
struct Rows {
  int64_t begin = 0, count = 0;
};
Rows local_rows(const CkptTensor& t);
// An even share of `rows` for rank r of W: replicated rows on save, CRC verification on load.
Rows share(int64_t rows, int r, int W);

void validate_request(std::span<const CkptTensor> tensors);

// ---- HDF5 ------------------------------------------------------------------------------------

hid_t file_type(DType d);
hid_t mem_type(DType d);

H5Id file_access(const Comm* world);

// File selection of rows [begin, begin + count) (none when count is 0).
H5Id row_selection(hid_t dset, int64_t begin, int64_t count);

// The boxes (start, count per dim) that cover the row-major elements [a, b) of the array of
// shape dims[k..] below the fixed coordinates `at` (at most 2 per dim).
void flat_boxes(const std::vector<hsize_t>& dims, size_t k, std::vector<hsize_t>& at, int64_t a,
                int64_t b, std::vector<std::pair<std::vector<hsize_t>, std::vector<hsize_t>>>& out);

// File selection of the row-major elements [begin, begin + count) (a flat slice).
H5Id flat_selection(hid_t dset, int64_t begin, int64_t count);

H5Id unit_selection(hid_t dset, bool flat, int64_t begin, int64_t count);

H5Id mem_space(int64_t elements);

std::byte* raw_bytes(Tensor& x);

int64_t piece_rows(int64_t rb);

// Reads rows (flat: elements) [begin, begin + count) of `dset` into out (independent, in
// pieces); rb is the bytes of one row (flat: of one element).
void read_rows(hid_t dset, DType d, int64_t rb, int64_t begin, int64_t count, std::byte* out,
               bool flat = false);

// CRC of rows [begin, begin + count) read from the file in pieces.
uint32_t crc_rows_from_file(hid_t dset, DType d, int64_t rb, int64_t begin, int64_t count);

// Opens "/<name>" and checks its shape and type against the manifest.
H5Id open_checked(hid_t file, const ManifestTensor& t, const std::string& path);

H5Id open_read_only(const std::string& path);

// File sizes must match the manifest: a truncated or replaced file is named before HDF5 sees it.
void check_file_sizes(const Manifest& m, const std::string& dir);

// ---- CRC slices and dataset names (save and verify) ----------------------------------------

// H5Literate callback: appends each link's name to the std::vector<std::string> at `out`.
herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* out);
// Gathers this rank's CRC slices (begin, count, crc per tensor) to rank 0.
std::vector<int64_t> gather_slices(const Comm& world, const std::vector<CrcSlice>& mine);
std::vector<CrcSlice> slices_of(const std::vector<int64_t>& all, size_t tensor, size_t n, int W);

}  // namespace moerun::io::ckpt
