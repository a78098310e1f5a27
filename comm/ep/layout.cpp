// Counting-sort construction of the dispatch layout: O(T*K + R), no (T, E) or (T, R) buffers.
#include "comm/ep/layout.h"

#include <limits>

namespace moerun {

DispatchLayout make_dispatch_layout(const Tensor& dispatch_idx, const Tensor& topk_weight,
                                    int64_t E_local, int64_t R) {
  const int64_t T = dispatch_idx.dim(0), K = dispatch_idx.dim(1);
  MOERUN_REQUIRE(topk_weight.dim(0) == T && topk_weight.dim(1) == K,
                 "topk_weight {} must match dispatch_idx {}", topk_weight.shape_str(),
                 dispatch_idx.shape_str());
  MOERUN_REQUIRE(E_local > 0 && R > 0, "bad layout sizes E_local={} R={}", E_local, R);
  const int32_t* idx = dispatch_idx.data<int32_t>();
  const float* w = topk_weight.f32();
  DispatchLayout L;
  L.ranks = R;
  L.tokens_per_rank.assign(static_cast<size_t>(R), 0);
  L.pairs_per_rank.assign(static_cast<size_t>(R), 0);
  std::vector<int64_t> last_token(static_cast<size_t>(R), -1);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = idx[t * K + k];
      if (e < 0) continue;
      const int64_t r = e / E_local;
      MOERUN_REQUIRE(r < R, "expert {} beyond the {} ranks' experts", e, R);
      ++L.pairs_per_rank[static_cast<size_t>(r)];
      if (last_token[static_cast<size_t>(r)] != t) {
        last_token[static_cast<size_t>(r)] = t;
        ++L.tokens_per_rank[static_cast<size_t>(r)];
      }
    }
  }
  std::vector<int64_t> row_off(static_cast<size_t>(R), 0), pair_off(static_cast<size_t>(R), 0);
  for (int64_t r = 1; r < R; ++r) {
    row_off[static_cast<size_t>(r)] =
        row_off[static_cast<size_t>(r - 1)] + L.tokens_per_rank[static_cast<size_t>(r - 1)];
    pair_off[static_cast<size_t>(r)] =
        pair_off[static_cast<size_t>(r - 1)] + L.pairs_per_rank[static_cast<size_t>(r - 1)];
  }
  const int64_t rows = row_off.back() + L.tokens_per_rank.back();
  const int64_t pairs = pair_off.back() + L.pairs_per_rank.back();
  L.send_row_token.resize(static_cast<size_t>(rows));
  L.send_pairs.resize(static_cast<size_t>(pairs));
  L.send_pair_slot.resize(static_cast<size_t>(pairs));
  std::vector<int64_t> row_base = row_off;  // segment starts, to make rows segment-relative
  last_token.assign(static_cast<size_t>(R), -1);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = idx[t * K + k];
      if (e < 0) continue;
      const size_t r = static_cast<size_t>(e / E_local);
      if (last_token[r] != t) {
        last_token[r] = t;
        L.send_row_token[static_cast<size_t>(row_off[r]++)] = t;
      }
      const int64_t row = row_off[r] - 1 - row_base[r];
      MOERUN_REQUIRE(row <= std::numeric_limits<int32_t>::max(), "too many rows for one rank");
      const size_t p = static_cast<size_t>(pair_off[r]++);
      L.send_pairs[p] =
          PairMsg{static_cast<int32_t>(row), static_cast<int32_t>(e % E_local), w[t * K + k]};
      L.send_pair_slot[p] = t * K + k;
    }
  }
  return L;
}

}  // namespace moerun
