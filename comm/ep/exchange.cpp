// MpiExchange: the Exchange over MPI all-to-all(v) with one-record datatypes (comm/comm.cpp).
#include "comm/ep/exchange.h"

#include "runtime/check.h"

namespace moerun {

std::vector<int64_t> MpiExchange::exchange_counts(std::span<const int64_t> send) {
  return comm_.alltoall(send);
}

void MpiExchange::exchange_records(const void* send, std::span<const int64_t> send_counts,
                                   void* recv, std::span<const int64_t> recv_counts,
                                   size_t record_bytes) {
  comm_.alltoallv_records(send, send_counts, recv, recv_counts, record_bytes);
}

void MpiExchange::exchange_rows(const Tensor& send, std::span<const int64_t> send_counts,
                                Tensor& recv, std::span<const int64_t> recv_counts) {
  MOERUN_REQUIRE(send.device() == Device::kCpu && recv.device() == Device::kCpu,
                 "MpiExchange moves host tensors (got {} and {})", to_string(send.device()),
                 to_string(recv.device()));
  MOERUN_REQUIRE(send.dtype() == recv.dtype() && send.ndim() >= 1 && recv.ndim() == send.ndim(),
                 "exchange of {} {} rows into {} {}", to_string(send.dtype()), send.shape_str(),
                 to_string(recv.dtype()), recv.shape_str());
  int64_t n_send = 0, n_recv = 0;
  for (int64_t c : send_counts) n_send += c;
  for (int64_t c : recv_counts) n_recv += c;
  MOERUN_REQUIRE(n_send == send.dim(0) && n_recv == recv.dim(0),
                 "counts cover {} and {} rows of {} and {}", n_send, n_recv, send.shape_str(),
                 recv.shape_str());
  // Row size from the shape, not the data: a rank with no rows still agrees on the record size.
  int64_t elems = 1;
  for (int i = 1; i < send.ndim(); ++i) {
    MOERUN_REQUIRE(send.dim(i) == recv.dim(i), "row shapes differ: {} and {}", send.shape_str(),
                   recv.shape_str());
    elems *= send.dim(i);
  }
  comm_.alltoallv_records(send.raw_data(), send_counts, recv.raw_data(), recv_counts,
                          static_cast<size_t>(elems) * dtype_size(send.dtype()));
}

}  // namespace moerun
