// Dispatch and combine across ranks with payloads that tell where they came from: each row of
// x holds (sender rank, token index, column); every rank computes what it must receive.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
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

}  // namespace
}  // namespace moerun::testing
