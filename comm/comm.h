// Comm: a move-only RAII MPI communicator with the collectives moerun needs, and MpiSession,
// which initialises and finalises MPI (errors return codes, so MPI_CHECK can throw).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moerun {

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
};

class Comm {
 public:
  Comm() = default;
  static Comm world();  // MPI_COMM_WORLD, not freed
  ~Comm();
  Comm(Comm&& other) noexcept;
  Comm& operator=(Comm&& other) noexcept;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  bool valid() const { return comm_ != MPI_COMM_NULL; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm raw() const { return comm_; }

  Comm split(int color, int key) const;
  Comm split_shared_memory() const;  // ranks on the same node
  Comm dup() const;

  void barrier() const;
  void allreduce_sum(std::span<int64_t> values) const;  // in place
  void allreduce_sum(std::span<float> values) const;
  void allreduce_sum(std::span<double> values) const;
  void allreduce_max(std::span<double> values) const;
  // ZeRO-1's two collectives over a flat buffer split into size() consecutive blocks of
  // counts[r] values (block r belongs to rank r). reduce_scatter_sum: recv (counts[rank()]
  // values, not overlapping send) becomes the sum over the ranks of block rank() of send.
  // allgather_inplace: block r of `values` is copied from rank r to every rank. Counts and
  // offsets are checked against INT_MAX.
  void reduce_scatter_sum(std::span<const float> send, std::span<float> recv,
                          std::span<const int64_t> counts) const;
  void allgather_inplace(std::span<float> values, std::span<const int64_t> counts) const;
  // True on every rank iff true on every rank: a test's verdict, or a config check.
  bool all_true(bool local) const;
  // The lowest rank where `local` is true, or size() when it is true nowhere.
  int first_rank_where(bool local) const;
  // True on every rank iff every rank passed the same value (a hash of what must agree).
  bool same_everywhere(uint64_t value) const;
  void broadcast(std::span<std::byte> bytes, int root) const;
  // The root's text on every rank (its length travels first).
  void broadcast(std::string& text, int root) const;
  // Every rank sends send.size() values (the same count everywhere); the root receives size()
  // blocks in rank order, the other ranks an empty vector.
  std::vector<int64_t> gather(std::span<const int64_t> send, int root) const;
  // Every rank's text, in rank order, on every rank (host names and the like: short strings).
  std::vector<std::string> allgather(const std::string& text) const;
  // send holds size() blocks of n values (n = send.size() / size()); block r goes to rank r.
  std::vector<int64_t> alltoall(std::span<const int64_t> send) const;
  // Variable all-to-all of fixed-size records (rows of row_bytes): counts and displacements are
  // in records, so one rank may send more than 2 GiB; each count is checked against INT_MAX.
  void alltoallv_records(const void* send, std::span<const int64_t> send_counts, void* recv,
                         std::span<const int64_t> recv_counts, size_t record_bytes) const;

  // Ends every process of this communicator (the last resort when some ranks may be waiting in
  // a collective that the failing rank will never join). Returns only if MPI_Abort fails.
  void abort(int code) const;

 private:
  Comm(MPI_Comm c, bool owned);
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = 0;
  int size_ = 0;
};

}  // namespace moerun
