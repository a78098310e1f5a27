// Token embedding gather and scatter-add (CPU).
#include "layers/embedding.h"

#include <cstring>

#include "runtime/check.h"

namespace moerun {

namespace {
void check_ids(const int32_t* ids, int64_t N, int64_t V) {
  for (int64_t i = 0; i < N; ++i) {
    MOERUN_REQUIRE(ids[i] >= 0 && ids[i] < V,
                   "token id {} at position {} is outside the vocabulary [0, {})", ids[i], i, V);
  }
}
}  // namespace

void embedding_forward(const float* table, int64_t V, int64_t H, const int32_t* ids, int64_t N,
                       float* out) {
  MOERUN_REQUIRE(V > 0 && H > 0 && N >= 0, "bad embedding shape V={} H={} N={}", V, H, N);
  check_ids(ids, N, V);
  const size_t row_bytes = static_cast<size_t>(H) * sizeof(float);
  for (int64_t i = 0; i < N; ++i) {
    std::memcpy(out + i * H, table + static_cast<int64_t>(ids[i]) * H, row_bytes);
  }
}

void embedding_backward(const int32_t* ids, int64_t N, int64_t V, int64_t H, const float* dout,
                        float* dtable) {
  MOERUN_REQUIRE(V > 0 && H > 0 && N >= 0, "bad embedding shape V={} H={} N={}", V, H, N);
  check_ids(ids, N, V);
  // Serial over tokens: two tokens with the same id write the same row, so a parallel version
  // would need a sort by id; the scatter is memory-bound and small next to the GEMMs anyway.
  for (int64_t i = 0; i < N; ++i) {
    float* drow = dtable + static_cast<int64_t>(ids[i]) * H;
    const float* g = dout + i * H;
    for (int64_t j = 0; j < H; ++j) drow[j] += g[j];
  }
}

}  // namespace moerun
