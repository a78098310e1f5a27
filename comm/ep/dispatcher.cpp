// Dispatch and combine in phases over an Exchange, one-row records (counts are token counts).
#include "comm/ep/dispatcher.h"

#include <cstring>
#include <numeric>

#include "runtime/timer.h"

namespace moerun {

namespace {
std::vector<int64_t> offsets(const std::vector<int64_t>& counts) {
  std::vector<int64_t> off(counts.size() + 1, 0);
  for (size_t i = 0; i < counts.size(); ++i) off[i + 1] = off[i] + counts[i];
  return off;
}
int64_t total(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}
// Inverts a map item -> key (keys in [0, n_keys)) into CSR key -> items, items ascending.
void build_csr(const std::vector<int64_t>& key_of, int64_t n_keys, std::vector<int64_t>& off,
               std::vector<int64_t>& items) {
  off.assign(static_cast<size_t>(n_keys + 1), 0);
  for (int64_t k : key_of) ++off[static_cast<size_t>(k + 1)];
  for (size_t i = 1; i < off.size(); ++i) off[i] += off[i - 1];
  items.resize(key_of.size());
  std::vector<int64_t> fill(off.begin(), off.end() - 1);
  for (size_t i = 0; i < key_of.size(); ++i)
    items[static_cast<size_t>(fill[static_cast<size_t>(key_of[i])]++)] = static_cast<int64_t>(i);
}

// dst = sum_i w_i * rows[i] over the listed rows, in list order; zero for an empty list.
void weighted_row_sum(float* dst, const Tensor& rows, const int64_t* list, int64_t n,
                      const float* weight, int64_t H) {
  if (n == 0) {
    std::memset(dst, 0, static_cast<size_t>(H) * sizeof(float));
    return;
  }
  const float* s = rows.row(list[0]);
  const float w0 = weight ? weight[list[0]] : 1.0f;
  for (int64_t j = 0; j < H; ++j) dst[j] = w0 * s[j];
  for (int64_t i = 1; i < n; ++i) {
    s = rows.row(list[i]);
    const float wi = weight ? weight[list[i]] : 1.0f;
    for (int64_t j = 0; j < H; ++j) dst[j] += wi * s[j];
  }
}
}  // namespace

int64_t DispatchHandle::recv_rows() const {
  return total(recv_tokens_per_rank);
}

Dispatcher::Dispatcher(const Comm& ep, int64_t routed_experts, int64_t hidden)
    : Dispatcher(std::make_unique<MpiExchange>(ep), routed_experts, hidden) {}

Dispatcher::Dispatcher(std::unique_ptr<Exchange> exchange, int64_t routed_experts, int64_t hidden)
    : exchange_(std::move(exchange)), E_(routed_experts), H_(hidden) {
  const int R = exchange_->ranks();
  MOERUN_REQUIRE(routed_experts % R == 0, "experts ({}) must divide by EP size ({})",
                 routed_experts, R);
  e_local_ = routed_experts / R;
}

DispatchResult Dispatcher::dispatch(const Tensor& x, const Tensor& dispatch_idx,
                                    const Tensor& topk_weight) {
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(1) == H_ && x.dim(0) == dispatch_idx.dim(0),
                 "dispatch input {} does not match H={} and dispatch_idx {}", x.shape_str(), H_,
                 dispatch_idx.shape_str());
  DispatchResult res;
  res.handle = layout(dispatch_idx, topk_weight);
  res.recv_x = dispatch(x, res.handle);
  res.tokens_per_local_expert = res.handle.tokens_per_local_expert;
  return res;
}

DispatchHandle Dispatcher::layout(const Tensor& dispatch_idx, const Tensor& topk_weight) {
  const int64_t R = exchange_->ranks();
  MOERUN_REQUIRE(dispatch_idx.ndim() == 2 && topk_weight.shape() == dispatch_idx.shape(),
                 "dispatch_idx {} and topk_weight {} must both be (T, K)", dispatch_idx.shape_str(),
                 topk_weight.shape_str());
  DispatchHandle h;
  double t0 = now_seconds();
  h.T = dispatch_idx.dim(0);
  h.K = dispatch_idx.dim(1);
  h.layout = make_dispatch_layout(dispatch_idx, topk_weight, e_local_, R);
  const DispatchLayout& L = h.layout;
  std::vector<int64_t> counts(static_cast<size_t>(2 * R));
  for (int64_t r = 0; r < R; ++r) {
    counts[static_cast<size_t>(2 * r)] = L.tokens_per_rank[static_cast<size_t>(r)];
    counts[static_cast<size_t>(2 * r + 1)] = L.pairs_per_rank[static_cast<size_t>(r)];
  }
  double t1 = now_seconds();
  std::vector<int64_t> recv_counts = exchange_->exchange_counts(counts);
  h.recv_tokens_per_rank.resize(static_cast<size_t>(R));
  h.recv_pairs_per_rank.resize(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    h.recv_tokens_per_rank[static_cast<size_t>(r)] = recv_counts[static_cast<size_t>(2 * r)];
    h.recv_pairs_per_rank[static_cast<size_t>(r)] = recv_counts[static_cast<size_t>(2 * r + 1)];
  }
  std::vector<PairMsg> recv_pairs(static_cast<size_t>(total(h.recv_pairs_per_rank)));
  exchange_->exchange_records(L.send_pairs.data(), L.pairs_per_rank, recv_pairs.data(),
                              h.recv_pairs_per_rank, sizeof(PairMsg));
  double t2 = now_seconds();

  // Group the received pairs by local expert (stable: source rank, then row, then k).
  const std::vector<int64_t> row_off = offsets(h.recv_tokens_per_rank);
  h.tokens_per_local_expert.assign(static_cast<size_t>(e_local_), 0);
  for (const PairMsg& p : recv_pairs) {
    MOERUN_REQUIRE(p.local_expert >= 0 && p.local_expert < e_local_, "received bad expert {}",
                   p.local_expert);
    ++h.tokens_per_local_expert[static_cast<size_t>(p.local_expert)];
  }
  std::vector<int64_t> slot = offsets(h.tokens_per_local_expert);
  const size_t n_pairs = recv_pairs.size();
  h.perm_row.resize(n_pairs);
  h.perm_weight = Tensor::empty({static_cast<int64_t>(n_pairs)});
  float* perm_weight = h.perm_weight.f32();
  h.perm_arrival.resize(n_pairs);
  size_t a = 0;
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < h.recv_pairs_per_rank[static_cast<size_t>(r)]; ++j, ++a) {
      const PairMsg& p = recv_pairs[a];
      MOERUN_REQUIRE(p.row >= 0 && p.row < h.recv_tokens_per_rank[static_cast<size_t>(r)],
                     "received pair row {} outside rank {}'s {} rows", p.row, r,
                     h.recv_tokens_per_rank[static_cast<size_t>(r)]);
      const size_t q = static_cast<size_t>(slot[static_cast<size_t>(p.local_expert)]++);
      h.perm_row[q] = row_off[static_cast<size_t>(r)] + p.row;
      perm_weight[q] = p.weight;
      h.perm_arrival[q] = static_cast<int64_t>(a);
    }
  }
  build_csr(h.perm_row, h.recv_rows(), h.row_pair_off, h.row_pairs);
  build_csr(L.send_row_token, h.T, h.token_row_off, h.token_rows);
  times_.local += (t1 - t0) + (now_seconds() - t2);
  times_.exchange += t2 - t1;
  return h;
}

Tensor Dispatcher::dispatch(const Tensor& x, const DispatchHandle& h) {
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(0) == h.T && x.dim(1) == H_,
                 "dispatch input {} must be ({}, {})", x.shape_str(), h.T, H_);
  return rows_to_experts(x, h);
}

void Dispatcher::count_bytes(const std::vector<int64_t>& rows_per_rank, size_t row_bytes) {
  times_.bytes_to_rank.resize(rows_per_rank.size(), 0);
  for (size_t r = 0; r < rows_per_rank.size(); ++r)
    times_.bytes_to_rank[r] += rows_per_rank[r] * static_cast<int64_t>(row_bytes);
}

Tensor Dispatcher::rows_to_experts(const Tensor& src, const DispatchHandle& h) {
  const DispatchLayout& L = h.layout;
  const size_t row_bytes = static_cast<size_t>(H_) * sizeof(float);
  double t0 = now_seconds();
  Tensor send = Tensor::empty({static_cast<int64_t>(L.send_row_token.size()), H_});
  for (size_t i = 0; i < L.send_row_token.size(); ++i)
    std::memcpy(send.row(static_cast<int64_t>(i)), src.row(L.send_row_token[i]), row_bytes);
  Tensor recv = Tensor::empty({h.recv_rows(), H_});
  double t1 = now_seconds();
  exchange_->exchange_rows(send, L.tokens_per_rank, recv, h.recv_tokens_per_rank);
  double t2 = now_seconds();
  Tensor perm = Tensor::empty({h.recv_pairs(), H_});
  for (size_t q = 0; q < h.perm_row.size(); ++q)
    std::memcpy(perm.row(static_cast<int64_t>(q)), recv.row(h.perm_row[q]), row_bytes);
  times_.local += (t1 - t0) + (now_seconds() - t2);
  times_.exchange += t2 - t1;
  times_.bytes_sent += static_cast<int64_t>(send.nbytes());
  count_bytes(L.tokens_per_rank, row_bytes);
  return perm;
}

Tensor Dispatcher::rows_to_tokens(const Tensor& perm, const float* weight,
                                  const DispatchHandle& h) {
  const DispatchLayout& L = h.layout;
  MOERUN_REQUIRE(perm.dim(0) == h.recv_pairs() && perm.dim(1) == H_,
                 "expert rows {} do not match the {} dispatched pairs", perm.shape_str(),
                 h.recv_pairs());
  double t0 = now_seconds();
  // Sum each received row's pairs in permuted order (expert-major): the order a single rank
  // holding every expert would use, so results do not depend on the EP size.
  Tensor partial = Tensor::empty({h.recv_rows(), H_});
  for (int64_t r = 0; r < h.recv_rows(); ++r) {
    const int64_t b = h.row_pair_off[static_cast<size_t>(r)];
    weighted_row_sum(partial.row(r), perm, h.row_pairs.data() + b,
                     h.row_pair_off[static_cast<size_t>(r + 1)] - b, weight, H_);
  }
  Tensor back = Tensor::empty({static_cast<int64_t>(L.send_row_token.size()), H_});
  double t1 = now_seconds();
  exchange_->exchange_rows(partial, h.recv_tokens_per_rank, back, L.tokens_per_rank);
  double t2 = now_seconds();
  Tensor out = Tensor::empty({h.T, H_});
  for (int64_t t = 0; t < h.T; ++t) {
    const int64_t b = h.token_row_off[static_cast<size_t>(t)];
    weighted_row_sum(out.row(t), back, h.token_rows.data() + b,
                     h.token_row_off[static_cast<size_t>(t + 1)] - b, nullptr, H_);
  }
  times_.local += (t1 - t0) + (now_seconds() - t2);
  times_.exchange += t2 - t1;
  times_.bytes_sent += static_cast<int64_t>(partial.nbytes());
  count_bytes(h.recv_tokens_per_rank, static_cast<size_t>(H_) * sizeof(float));
  return out;
}

Tensor Dispatcher::combine(const Tensor& expert_out, const DispatchHandle& h) {
  return rows_to_tokens(expert_out, h.perm_weight.f32(), h);
}

Tensor Dispatcher::combine_backward(const Tensor& dy, const DispatchHandle& h) {
  MOERUN_REQUIRE(dy.ndim() == 2 && dy.dim(0) == h.T && dy.dim(1) == H_, "dy {} must be ({}, {})",
                 dy.shape_str(), h.T, H_);
  return rows_to_experts(dy, h);
}

DispatchBackward Dispatcher::dispatch_backward(const Tensor& dx_perm, const Tensor& dweight_perm,
                                               const DispatchHandle& h) {
  MOERUN_REQUIRE(dweight_perm.numel() == h.recv_pairs(),
                 "weight gradients ({}) do not match the {} dispatched pairs", dweight_perm.numel(),
                 h.recv_pairs());
  DispatchBackward out;
  out.dx = rows_to_tokens(dx_perm, nullptr, h);
  double t0 = now_seconds();
  const float* dweight = dweight_perm.f32();
  Tensor arrival = Tensor::empty({dweight_perm.numel()});
  float* pa = arrival.f32();
  for (size_t q = 0; q < h.perm_arrival.size(); ++q)
    pa[static_cast<size_t>(h.perm_arrival[q])] = dweight[q];
  Tensor back = Tensor::empty({static_cast<int64_t>(h.layout.send_pairs.size())});
  double t1 = now_seconds();
  exchange_->exchange_rows(arrival, h.recv_pairs_per_rank, back, h.layout.pairs_per_rank);
  double t2 = now_seconds();
  out.dtopk_weight = Tensor::zeros({h.T, h.K});
  float* dw = out.dtopk_weight.f32();
  const float* pb = back.f32();
  for (int64_t i = 0; i < back.numel(); ++i)
    dw[h.layout.send_pair_slot[static_cast<size_t>(i)]] = pb[i];
  times_.local += (t1 - t0) + (now_seconds() - t2);
  times_.exchange += t2 - t1;
  return out;
}

}  // namespace moerun
