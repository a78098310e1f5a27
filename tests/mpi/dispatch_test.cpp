// Dispatch and combine across ranks with payloads that tell where they came from: each row of
// x holds (sender rank, token index, column); every rank computes what it must receive.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <tuple>

#include "comm/ep/dispatcher.h"
#include "runtime/rng.h"
#include "tests/common/mpi_test.h"

namespace moerun::testing {
namespace {

constexpr int64_t kH = 4;

float payload(int rank, int64_t t, int64_t c) {
  return static_cast<float>(rank * 100000 + t * 10 + c);
}

// Routing for rank r: a function of (r, t, k) every rank can evaluate for every other rank.
using Route = std::function<int32_t(int r, int64_t t, int64_t k)>;

struct Scenario {
  int64_t E;
  int64_t K;
  std::function<int64_t(int r)> tokens;
  Route route;
};

// Runs dispatch -> (identity experts) -> combine and checks every received row and the result.
bool run_scenario(const Scenario& s, std::string* why) {
  Comm world = Comm::world();
  const int R = world.size(), me = world.rank();
  const int64_t El = s.E / R, T = s.tokens(me), K = s.K;
  Tensor x = Tensor::empty({T, kH});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < kH; ++c) x.f32()[t * kH + c] = payload(me, t, c);
  Tensor idx = Tensor::empty({T, K}, DType::kI32), w = Tensor::empty({T, K});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      idx.data<int32_t>()[t * K + k] = s.route(me, t, k);
      w.f32()[t * K + k] = 0.5f + 0.125f * static_cast<float>(k);
    }
  Dispatcher d(world, s.E, kH);
  DispatchResult res = d.dispatch(x, idx, w);

  // Expected: for each local expert in order, the (sender, token) pairs in sender-rank order,
  // then token order, then k order.
  std::vector<std::vector<std::tuple<int, int64_t, float>>> expect(static_cast<size_t>(El));
  for (int r = 0; r < R; ++r)
    for (int64_t t = 0; t < s.tokens(r); ++t)
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = s.route(r, t, k);
        if (e >= 0 && e / El == me)
          expect[static_cast<size_t>(e % El)].emplace_back(r, t,
                                                           0.5f + 0.125f * static_cast<float>(k));
      }
  int64_t row = 0;
  for (int64_t e = 0; e < El; ++e) {
    if (res.tokens_per_local_expert[static_cast<size_t>(e)] !=
        static_cast<int64_t>(expect[static_cast<size_t>(e)].size())) {
      *why = fmt::format("rank {} expert {}: {} rows, expected {}", me, e,
                         res.tokens_per_local_expert[static_cast<size_t>(e)],
                         expect[static_cast<size_t>(e)].size());
      return false;
    }
    for (auto [r, t, wt] : expect[static_cast<size_t>(e)]) {
      for (int64_t c = 0; c < kH; ++c)
        if (res.recv_x.f32()[row * kH + c] != payload(r, t, c)) {
          *why = fmt::format("rank {} row {}: got {}, expected sender {} token {}", me, row,
                             res.recv_x.f32()[row * kH + c], r, t);
          return false;
        }
      if (res.handle.perm_weight.f32()[row] != wt) {
        *why = fmt::format("rank {} row {}: weight {} expected {}", me, row,
                           res.handle.perm_weight.f32()[row], wt);
        return false;
      }
      ++row;
    }
  }
  // Identity experts: combine gives sum_k w_k x over the kept pairs.
  Tensor y = d.combine(res.recv_x, res.handle);
  for (int64_t t = 0; t < T; ++t) {
    float wsum = 0;
    for (int64_t k = 0; k < K; ++k)
      if (s.route(me, t, k) >= 0) wsum += 0.5f + 0.125f * static_cast<float>(k);
    for (int64_t c = 0; c < kH; ++c) {
      const float want = wsum * payload(me, t, c);
      if (std::abs(y.f32()[t * kH + c] - want) > 1e-6f * std::abs(want) + 1e-6f) {
        *why = fmt::format("rank {} token {}: combine gave {}, expected {}", me, t,
                           y.f32()[t * kH + c], want);
        return false;
      }
    }
  }
  // Backward: dispatch_backward of rows that carry their pair index returns per-token sums and
  // the per-pair weight gradients to the right (t, k) slots.
  Tensor dweight = Tensor::empty({res.handle.recv_pairs()});
  for (int64_t q = 0; q < dweight.numel(); ++q)
    dweight.f32()[q] = res.recv_x.f32()[q * kH];  // = payload(r,t,0)
  DispatchBackward back = d.dispatch_backward(res.recv_x, dweight, res.handle);
  for (int64_t t = 0; t < T; ++t) {
    int n = 0;
    for (int64_t k = 0; k < K; ++k) {
      const bool sent = s.route(me, t, k) >= 0;
      n += sent;
      const float want = sent ? payload(me, t, 0) : 0.0f;
      if (back.dtopk_weight.f32()[t * K + k] != want) {
        *why = fmt::format("rank {} token {} k {}: dweight {} expected {}", me, t, k,
                           back.dtopk_weight.f32()[t * K + k], want);
        return false;
      }
    }
    for (int64_t c = 0; c < kH; ++c)
      if (std::abs(back.dx.f32()[t * kH + c] - n * payload(me, t, c)) >
          1e-6f * std::abs(n * payload(me, t, c))) {
        *why = fmt::format("rank {} token {}: dx {} expected {}", me, t, back.dx.f32()[t * kH + c],
                           n * payload(me, t, c));
        return false;
      }
  }
  return true;
}

void expect_scenario(const Scenario& s) {
  std::string why;
  bool ok = false;
  try {
    ok = run_scenario(s, &why);
  } catch (const std::exception& e) {
    why = e.what();
  }
  if (!ok) ADD_FAILURE() << why;
  EXPECT_TRUE(Comm::world().all_true(ok)) << "some rank saw a wrong payload";
}

int64_t hash_route(int r, int64_t t, int64_t k, int64_t E) {
  return static_cast<int64_t>(mix64(static_cast<uint64_t>(r * 1000003 + t * 31 + k)) %
                              static_cast<uint64_t>(E));
}

TEST(Dispatch, RandomRoutingPayloadsArriveGroupedByExpert) {
  const int R = world_size();
  const int64_t E = 4 * R, K = 3;
  // Distinct experts per token: hash to a start, then step.
  expect_scenario({E, K, [](int r) { return 20 + 3 * r; },
                   [E](int r, int64_t t, int64_t k) {
                     return static_cast<int32_t>((hash_route(r, t, 0, E) + k * 5) % E);
                   }});
}

TEST(Dispatch, SkewedRoutingEveryTokenToOneExpert) {
  const int R = world_size();
  const int64_t E = 2 * R;
  expect_scenario(
      {E, 2, [](int) { return 17; },
       [E](int, int64_t, int64_t k) { return static_cast<int32_t>(k == 0 ? E - 1 : 0); }});
}

TEST(Dispatch, ARankWithZeroTokens) {
  const int R = world_size();
  const int64_t E = 3 * R;
  expect_scenario({E, 2, [](int r) { return r == 0 ? int64_t{0} : int64_t{9}; },
                   [E](int r, int64_t t, int64_t k) {
                     return static_cast<int32_t>((hash_route(r, t, k, E / 2) * 2 + k) % E);
                   }});
}

TEST(Dispatch, ExpertsWithZeroTokensAndDroppedPairs) {
  const int R = world_size();
  const int64_t E = 4 * R;
  // Only even experts are used; every third pair is dropped (-1, as capacity would).
  expect_scenario({E, 3, [](int r) { return 11 + r; },
                   [E](int r, int64_t t, int64_t k) {
                     if ((t + k) % 3 == 0) return int32_t{-1};
                     return static_cast<int32_t>((2 * (hash_route(r, t, 0, E / 2) + k)) % E);
                   }});
}

// An Exchange that forwards to MPI and records what each phase moved: the Dispatcher talks to
// the interface only, so a second implementation (NCCL) slots in the same way.
class RecordingExchange : public Exchange {
 public:
  explicit RecordingExchange(const Comm& c) : mpi_(c) {}
  int ranks() const override { return mpi_.ranks(); }
  int rank() const override { return mpi_.rank(); }
  std::vector<int64_t> exchange_counts(std::span<const int64_t> send) override {
    ++counts;
    return mpi_.exchange_counts(send);
  }
  void exchange_records(const void* send, std::span<const int64_t> send_counts, void* recv,
                        std::span<const int64_t> recv_counts, size_t record_bytes) override {
    ++records;
    mpi_.exchange_records(send, send_counts, recv, recv_counts, record_bytes);
  }
  void exchange_rows(const Tensor& send, std::span<const int64_t> send_counts, Tensor& recv,
                     std::span<const int64_t> recv_counts) override {
    ++rows;
    rows_sent += send.dim(0);
    mpi_.exchange_rows(send, send_counts, recv, recv_counts);
  }
  int counts = 0, records = 0, rows = 0;
  int64_t rows_sent = 0;

 private:
  MpiExchange mpi_;
};

TEST(Dispatch, PhasesOverAnExchangeMatchTheOneCallDispatch) {
  Comm world = Comm::world();
  const int R = world.size(), me = world.rank();
  const int64_t E = 4 * R, K = 2, T = 13 + me;
  Rng rng(77, static_cast<uint64_t>(me));
  Tensor x = Tensor::empty({T, kH});
  for (float& v : x.span<float>()) v = static_cast<float>(rng.normal());
  Tensor idx = Tensor::empty({T, K}, DType::kI32), w = Tensor::empty({T, K});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      idx.data<int32_t>()[t * K + k] = static_cast<int32_t>((hash_route(me, t, 0, E) + k) % E);
      w.f32()[t * K + k] = static_cast<float>(0.25 + rng.uniform());
    }
  Dispatcher one(world, E, kH);
  const DispatchResult want = one.dispatch(x, idx, w);
  const Tensor want_y = one.combine(want.recv_x, want.handle);

  auto ex = std::make_unique<RecordingExchange>(world);
  RecordingExchange& rec = *ex;
  Dispatcher phased(std::move(ex), E, kH);
  const DispatchHandle h = phased.layout(idx, w);
  bool ok = rec.counts == 1 && rec.records == 1 && rec.rows == 0;  // metadata only
  const Tensor recv_x = phased.dispatch(x, h);
  ok = ok && rec.rows == 1 && h.tokens_per_local_expert == want.tokens_per_local_expert;
  ok = ok && recv_x.shape() == want.recv_x.shape();
  for (int64_t i = 0; ok && i < recv_x.numel(); ++i) ok = recv_x.f32()[i] == want.recv_x.f32()[i];
  const Tensor y = phased.combine(recv_x, h);
  ok = ok && rec.rows == 2 && y.shape() == want_y.shape();
  for (int64_t i = 0; ok && i < y.numel(); ++i) ok = y.f32()[i] == want_y.f32()[i];
  // Each token crosses once per destination rank, not once per pair.
  ok = ok && rec.rows_sent == h.recv_rows() + static_cast<int64_t>(h.layout.send_row_token.size());
  MOERUN_EXPECT_ALL(world, ok) << " phased dispatch differs from the one-call dispatch";
}

}  // namespace
}  // namespace moerun::testing
