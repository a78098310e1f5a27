// Token embedding gather and scatter-add (CPU).
#include <cstring>

#include "layers/embedding.h"
#include "runtime/check.h"

namespace moerun::cpu {

namespace {
void check_ids(const int32_t* ids, int64_t N, int64_t V) {
  for (int64_t i = 0; i < N; ++i) {
    MOERUN_REQUIRE(ids[i] >= 0 && ids[i] < V,
                   "token id {} at position {} is outside the vocabulary [0, {})", ids[i], i, V);
  }
}
}  // namespace

void embedding_forward(const Tensor& table_t, const Tensor& ids_t, Tensor& out_t) {
  const int64_t V = table_t.dim(0), H = table_t.dim(1), N = ids_t.numel();
  MOERUN_REQUIRE(V > 0 && H > 0 && N >= 0, "bad embedding shape V={} H={} N={}", V, H, N);
  const int32_t* ids = ids_t.data<int32_t>();
  const float* table = table_t.f32();
  float* out = out_t.f32();
  check_ids(ids, N, V);
  const size_t row_bytes = static_cast<size_t>(H) * sizeof(float);
  for (int64_t i = 0; i < N; ++i) {
    std::memcpy(out + i * H, table + static_cast<int64_t>(ids[i]) * H, row_bytes);
  }
}

void embedding_backward(const Tensor& ids_t, const Tensor& dout_t, Tensor& dtable_t) {
  const int64_t V = dtable_t.dim(0), H = dtable_t.dim(1), N = ids_t.numel();
  MOERUN_REQUIRE(V > 0 && H > 0 && N >= 0, "bad embedding shape V={} H={} N={}", V, H, N);
  const int32_t* ids = ids_t.data<int32_t>();
  const float* dout = dout_t.f32();
  float* dtable = dtable_t.f32();
  check_ids(ids, N, V);
  // Serial over tokens: two tokens with the same id write the same row, so a parallel version
  // would need a sort by id; the scatter is memory-bound and small next to the GEMMs anyway.
  for (int64_t i = 0; i < N; ++i) {
    float* drow = dtable + static_cast<int64_t>(ids[i]) * H;
    const float* g = dout + i * H;
    for (int64_t j = 0; j < H; ++j) drow[j] += g[j];
  }
}

}  // namespace moerun::cpu
