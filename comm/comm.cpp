// MPI communicator wrapper: ownership, splits and collectives, each call checked.
#include "comm/comm.h"

#include <climits>
#include <string>
#include <utility>
#include <vector>

#include "comm/mpi_check.h"

namespace moerun {

void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
  throw_error(call, file, line,
              fmt::format("MPI error {}: {}", code, std::string(text, static_cast<size_t>(len))));
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  }
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

Comm::Comm(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
  if (comm_ != MPI_COMM_NULL) {
    MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPI_CHECK(MPI_Comm_size(comm_, &size_));
    MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  }
}

Comm Comm::world() {
  return Comm(MPI_COMM_WORLD, false);
}

Comm::~Comm() {
  if (owned_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

Comm::Comm(Comm&& other) noexcept
    : comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      owned_(std::exchange(other.owned_, false)),
      rank_(other.rank_),
      size_(other.size_) {}

Comm& Comm::operator=(Comm&& other) noexcept {
  if (this != &other) {
    if (owned_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    owned_ = std::exchange(other.owned_, false);
    rank_ = other.rank_;
    size_ = other.size_;
  }
  return *this;
}

Comm Comm::split(int color, int key) const {
  MPI_Comm out = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(comm_, color, key, &out));
  return Comm(out, true);
}

Comm Comm::split_shared_memory() const {
  MPI_Comm out = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &out));
  return Comm(out, true);
}

Comm Comm::dup() const {
  MPI_Comm out = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_dup(comm_, &out));
  return Comm(out, true);
}

void Comm::barrier() const {
  MPI_CHECK(MPI_Barrier(comm_));
}

namespace {
int checked_int(size_t n, const char* what) {
  MOERUN_REQUIRE(n <= static_cast<size_t>(INT_MAX), "{} count {} exceeds INT_MAX", what, n);
  return static_cast<int>(n);
}
}  // namespace

void Comm::allreduce_sum(std::span<int64_t> v) const {
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v.data(), checked_int(v.size(), "allreduce"), MPI_INT64_T,
                          MPI_SUM, comm_));
}
void Comm::allreduce_sum(std::span<float> v) const {
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v.data(), checked_int(v.size(), "allreduce"), MPI_FLOAT,
                          MPI_SUM, comm_));
}
void Comm::allreduce_sum(std::span<double> v) const {
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v.data(), checked_int(v.size(), "allreduce"), MPI_DOUBLE,
                          MPI_SUM, comm_));
}
namespace {
// counts as int, with the displacements (prefix sums); checks their sum against `total`.
void int_blocks(std::span<const int64_t> counts, size_t total, int size, std::vector<int>& n,
                std::vector<int>& displ, const char* what) {
  MOERUN_REQUIRE(counts.size() == static_cast<size_t>(size), "{}: {} counts for {} ranks", what,
                 counts.size(), size);
  int64_t off = 0;
  for (int64_t c : counts) {
    MOERUN_REQUIRE(c >= 0, "{}: negative count {}", what, c);
    n.push_back(checked_int(static_cast<size_t>(c), what));
    displ.push_back(checked_int(static_cast<size_t>(off), what));
    off += c;
  }
  MOERUN_REQUIRE(static_cast<size_t>(off) == total, "{}: counts sum to {}, the buffer holds {}",
                 what, off, total);
}
}  // namespace

void Comm::reduce_scatter_sum(std::span<const float> send, std::span<float> recv,
                              std::span<const int64_t> counts) const {
  std::vector<int> n, displ;
  int_blocks(counts, send.size(), size_, n, displ, "reduce_scatter");
  MOERUN_REQUIRE(recv.size() == static_cast<size_t>(n[static_cast<size_t>(rank_)]),
                 "reduce_scatter: recv holds {} values, the block {}", recv.size(),
                 n[static_cast<size_t>(rank_)]);
  MPI_CHECK(MPI_Reduce_scatter(send.data(), recv.data(), n.data(), MPI_FLOAT, MPI_SUM, comm_));
}

void Comm::allgather_inplace(std::span<float> values, std::span<const int64_t> counts) const {
  std::vector<int> n, displ;
  int_blocks(counts, values.size(), size_, n, displ, "allgather");
  MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, values.data(), n.data(),
                           displ.data(), MPI_FLOAT, comm_));
}

void Comm::allreduce_max(std::span<double> v) const {
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v.data(), checked_int(v.size(), "allreduce"), MPI_DOUBLE,
                          MPI_MAX, comm_));
}

bool Comm::all_true(bool local) const {
  int v = local ? 1 : 0;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_LAND, comm_));
  return v != 0;
}

int Comm::first_rank_where(bool local) const {
  int first = local ? rank_ : size_;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm_));
  return first;
}

bool Comm::same_everywhere(uint64_t value) const {
  // min(v) == v and min(~v) == ~v on every rank <=> max(v) == min(v).
  uint64_t v[2] = {value, ~value};
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_UINT64_T, MPI_MIN, comm_));
  return all_true(v[0] == value && v[1] == ~value);
}

void Comm::broadcast(std::span<std::byte> bytes, int root) const {
  MPI_CHECK(MPI_Bcast(bytes.data(), checked_int(bytes.size(), "broadcast"), MPI_BYTE, root, comm_));
}

void Comm::broadcast(std::string& text, int root) const {
  int64_t n = static_cast<int64_t>(text.size());
  broadcast(std::as_writable_bytes(std::span<int64_t>(&n, 1)), root);
  text.resize(static_cast<size_t>(n));
  broadcast(std::as_writable_bytes(std::span<char>(text.data(), text.size())), root);
}

std::vector<int64_t> Comm::gather(std::span<const int64_t> send, int root) const {
  const int n = checked_int(send.size(), "gather");
  std::vector<int64_t> recv(rank_ == root ? send.size() * static_cast<size_t>(size_) : 0);
  MPI_CHECK(MPI_Gather(send.data(), n, MPI_INT64_T, recv.data(), n, MPI_INT64_T, root, comm_));
  return recv;
}

std::vector<std::string> Comm::allgather(const std::string& text) const {
  const int n = checked_int(text.size(), "allgather");
  std::vector<int> counts(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_));
  MPI_CHECK(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_));
  int64_t total = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    displs[r] = checked_int(static_cast<size_t>(total), "allgather");
    total += counts[r];
  }
  std::string all(static_cast<size_t>(total), '\0');
  MPI_CHECK(MPI_Allgatherv(text.data(), n, MPI_CHAR, all.data(), counts.data(), displs.data(),
                           MPI_CHAR, comm_));
  std::vector<std::string> out;
  for (size_t r = 0; r < counts.size(); ++r)
    out.push_back(all.substr(static_cast<size_t>(displs[r]), static_cast<size_t>(counts[r])));
  return out;
}

std::vector<int64_t> Comm::alltoall(std::span<const int64_t> send) const {
  MOERUN_REQUIRE(size_ > 0 && send.size() % static_cast<size_t>(size_) == 0,
                 "alltoall needs a multiple of {} values, got {}", size_, send.size());
  const int n = checked_int(send.size() / static_cast<size_t>(size_), "alltoall");
  std::vector<int64_t> recv(send.size());
  MPI_CHECK(MPI_Alltoall(send.data(), n, MPI_INT64_T, recv.data(), n, MPI_INT64_T, comm_));
  return recv;
}

void Comm::alltoallv_records(const void* send, std::span<const int64_t> send_counts, void* recv,
                             std::span<const int64_t> recv_counts, size_t record_bytes) const {
  const size_t R = static_cast<size_t>(size_);
  MOERUN_REQUIRE(send_counts.size() == R && recv_counts.size() == R,
                 "alltoallv needs one count per rank ({})", R);
  MOERUN_REQUIRE(record_bytes > 0 && record_bytes <= static_cast<size_t>(INT_MAX),
                 "record size {} bytes out of range", record_bytes);
  std::vector<int> sc(R), sd(R), rc(R), rd(R);
  size_t soff = 0, roff = 0;
  for (size_t r = 0; r < R; ++r) {
    sc[r] = checked_int(static_cast<size_t>(send_counts[r]), "alltoallv send");
    rc[r] = checked_int(static_cast<size_t>(recv_counts[r]), "alltoallv recv");
    sd[r] = checked_int(soff, "alltoallv send displacement");
    rd[r] = checked_int(roff, "alltoallv recv displacement");
    soff += static_cast<size_t>(send_counts[r]);
    roff += static_cast<size_t>(recv_counts[r]);
  }
  MPI_Datatype record = MPI_DATATYPE_NULL;
  MPI_CHECK(MPI_Type_contiguous(static_cast<int>(record_bytes), MPI_BYTE, &record));
  MPI_CHECK(MPI_Type_commit(&record));
  int rc_code =
      MPI_Alltoallv(send, sc.data(), sd.data(), record, recv, rc.data(), rd.data(), record, comm_);
  MPI_Type_free(&record);
  MPI_CHECK(rc_code);
}

void Comm::abort(int code) const {
  MPI_Abort(comm_, code);
}

}  // namespace moerun
