// Token embedding: a gather of table rows by token id, and its scatter-add backward.
#pragma once

#include <cstdint>

namespace moerun {

// table (V, H), ids (N) int32 -> out (N, H), overwritten: out[i] = table[ids[i]].
// Throws moerun::Error naming the first id outside [0, V) before writing anything, so a bad
// token file fails loudly instead of reading past the table.
void embedding_forward(const float* table, int64_t V, int64_t H, const int32_t* ids, int64_t N,
                       float* out);

// dout (N, H) -> dtable (V, H), accumulated: dtable[ids[i]] += dout[i]. Repeated ids add up.
// The ids are checked again (cheap) because backward may run on ids the forward never saw.
void embedding_backward(const int32_t* ids, int64_t N, int64_t V, int64_t H, const float* dout,
                        float* dtable);

}  // namespace moerun
