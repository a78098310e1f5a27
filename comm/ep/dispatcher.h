// Dispatcher: moves tokens to the ranks that own their experts and back, over the EP group,
// in phases over an Exchange (MPI now, NCCL later):
//   layout            dispatch_idx, topk_weight -> DispatchHandle (counts + pair records only)
//   dispatch          x (T,H)        -> recv_x (n_pairs,H) grouped by local expert
//   combine           out (n_pairs,H) -> y (T,H) = sum_k g_k out      (weighted at the expert side)
//   combine_backward  dy (T,H)       -> dy_perm (n_pairs,H)            (= dispatch of dy)
//   dispatch_backward dx_perm, dg_perm -> dx (T,H), dtopk_weight (T,K) (= combine, unweighted)
// Each phase is prepare (local) -> exchange (communication only) -> finish (local). A token
// crosses to a rank once however many of its K experts live there, and comes back once,
// pre-summed.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "comm/ep/exchange.h"
#include "comm/ep/layout.h"
#include "runtime/tensor.h"

namespace moerun {

struct DispatchHandle {
  DispatchLayout layout;  // sender side
  int64_t T = 0, K = 0;
  std::vector<int64_t> recv_tokens_per_rank;     // (R) rows received from each rank
  std::vector<int64_t> recv_pairs_per_rank;      // (R) pairs received from each rank
  std::vector<int64_t> tokens_per_local_expert;  // (E_local) permuted rows per local expert
  std::vector<int64_t> perm_row;      // (n_pairs) received row (absolute) of each permuted pair
  Tensor perm_weight;                 // (n_pairs) f32 gate weight of each permuted pair
  std::vector<int64_t> perm_arrival;  // (n_pairs) index of the pair in arrival order
  // CSR of received row -> its permuted pairs (ascending, i.e. expert-major), and of token ->
  // its send rows (ascending, i.e. rank order): each sum is written once, in a fixed order.
  std::vector<int64_t> row_pair_off, row_pairs;
  std::vector<int64_t> token_row_off, token_rows;
  int64_t recv_rows() const;
  int64_t recv_pairs() const { return static_cast<int64_t>(perm_row.size()); }
};

struct DispatchResult {
  Tensor recv_x;                                 // (n_pairs, H) grouped by local expert
  std::vector<int64_t> tokens_per_local_expert;  // (E_local)
  DispatchHandle handle;
};

struct DispatchBackward {
  Tensor dx;            // (T, H)
  Tensor dtopk_weight;  // (T, K); 0 for pairs that were not dispatched
};

// Seconds spent, accumulated over calls (for benchmarks and metrics).
struct DispatchTimes {
  double local = 0.0;     // layout, packing, permuting, weighted sums
  double exchange = 0.0;  // Exchange calls
  int64_t bytes_sent = 0;
  std::vector<int64_t> bytes_to_rank;  // (R) row bytes sent to each EP rank (all four exchanges)
};

class Dispatcher {
 public:
  // Over an MpiExchange on ep (which must outlive the dispatcher).
  Dispatcher(const Comm& ep, int64_t routed_experts, int64_t hidden);
  Dispatcher(std::unique_ptr<Exchange> exchange, int64_t routed_experts, int64_t hidden);

  // Layout: dispatch_idx (T, K) int32 global experts (-1 = dropped), topk_weight (T, K) -> where
  // each pair goes and where it lands. Exchanges the counts and the pair records, no rows.
  DispatchHandle layout(const Tensor& dispatch_idx, const Tensor& topk_weight);
  // x (T, H) -> recv_x (n_pairs, H), grouped by local expert as h says.
  Tensor dispatch(const Tensor& x, const DispatchHandle& h);
  // expert_out (n_pairs, H) -> y (T, H), each pair weighted by its gate weight.
  Tensor combine(const Tensor& expert_out, const DispatchHandle& h);
  // dy (T, H) -> dy_perm (n_pairs, H).
  Tensor combine_backward(const Tensor& dy, const DispatchHandle& h);
  // dx_perm (n_pairs, H), dweight_perm (n_pairs): the gradients of the permuted rows and of each
  // pair's gate weight -> dx (T, H), dtopk_weight (T, K).
  DispatchBackward dispatch_backward(const Tensor& dx_perm, const Tensor& dweight_perm,
                                     const DispatchHandle& h);

  // layout, then dispatch.
  DispatchResult dispatch(const Tensor& x, const Tensor& dispatch_idx, const Tensor& topk_weight);

  int64_t local_experts() const { return e_local_; }
  DispatchTimes& times() { return times_; }
  Exchange& exchange() { return *exchange_; }

 private:
  // Rows of src (T,H) -> every rank -> permuted (n_pairs,H) (each received row copied to its
  // pairs).
  Tensor rows_to_experts(const Tensor& src, const DispatchHandle& h);
  // Permuted rows (n_pairs,H), optionally weighted, summed per received row -> senders -> (T,H).
  Tensor rows_to_tokens(const Tensor& perm, const float* weight, const DispatchHandle& h);

  void count_bytes(const std::vector<int64_t>& rows_per_rank, size_t row_bytes);

  std::unique_ptr<Exchange> exchange_;
  int64_t E_, e_local_, H_;
  DispatchTimes times_;
};

}  // namespace moerun
