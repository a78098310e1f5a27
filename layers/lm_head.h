// LM head: logits = x W^T with W (V, H) (HF lm_head.weight, or embed_tokens when tied), and a
// fused, row-chunked head + cross-entropy that never materialises the full (N, V) logits.
#pragma once

#include <cstdint>

namespace moerun {

// x (N, H), w (V, H) -> logits (N, V), overwritten.
void lm_head_forward(const float* x, const float* w, int64_t N, int64_t H, int64_t V,
                     float* logits);

// dlogits (N, V) -> dx (N, H), overwritten; dw (V, H) accumulated into.
void lm_head_backward(const float* x, const float* w, const float* dlogits, int64_t N, int64_t H,
                      int64_t V, float* dw, float* dx);

// Head + cross-entropy forward and backward in chunks of chunk_rows rows: returns the mean loss
// over all N rows; with dx != null also writes dx (N, H) (overwritten) and accumulates dw (V, H),
// both for loss_scale * mean loss. Scratch is chunk_rows x V floats (at V = 100k and 1024 rows,
// 400 MB instead of N x V). Pass dx = dw = null for the loss only.
double lm_head_cross_entropy(const float* x, const float* w, const int32_t* targets, int64_t N,
                             int64_t H, int64_t V, float loss_scale, float* dw, float* dx,
                             int64_t chunk_rows = 1024);

}  // namespace moerun
