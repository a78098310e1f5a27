// Exchange: the all-to-all traffic of expert parallelism, behind one interface so that the
// Dispatcher's phases run over MPI now and over NCCL (device buffers, a stream) later.
// MpiExchange is the MPI implementation over the EP group's Comm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "comm/comm.h"
#include "runtime/tensor.h"

namespace moerun {

class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual int ranks() const = 0;  // R, the EP group's size
  virtual int rank() const = 0;

  // Host counts: send holds ranks() blocks of n values (n = send.size() / ranks()); block r goes
  // to rank r, and the result holds the blocks received, in rank order.
  virtual std::vector<int64_t> exchange_counts(std::span<const int64_t> send) = 0;
  // Host records of record_bytes (routing metadata): send_counts[r] records go to rank r,
  // recv_counts[r] arrive from rank r, each side packed in rank order.
  virtual void exchange_records(const void* send, std::span<const int64_t> send_counts, void* recv,
                                std::span<const int64_t> recv_counts, size_t record_bytes) = 0;
  // Rows of a tensor (slices of its outermost dimension: token rows (n, H), or one weight per
  // pair (n)) on the tensors' device: send_counts[r] rows of send go to rank r; recv (its rows
  // = sum of recv_counts, same row shape) is overwritten in rank order.
  virtual void exchange_rows(const Tensor& send, std::span<const int64_t> send_counts, Tensor& recv,
                             std::span<const int64_t> recv_counts) = 0;
};

class MpiExchange : public Exchange {
 public:
  // comm must outlive the exchange.
  explicit MpiExchange(const Comm& comm) : comm_(comm) {}
  int ranks() const override { return comm_.size(); }
  int rank() const override { return comm_.rank(); }
  std::vector<int64_t> exchange_counts(std::span<const int64_t> send) override;
  void exchange_records(const void* send, std::span<const int64_t> send_counts, void* recv,
                        std::span<const int64_t> recv_counts, size_t record_bytes) override;
  // CPU tensors (host MPI; a CUDA-aware MPI could take device pointers here).
  void exchange_rows(const Tensor& send, std::span<const int64_t> send_counts, Tensor& recv,
                     std::span<const int64_t> recv_counts) override;

 private:
  const Comm& comm_;
};

}  // namespace moerun
