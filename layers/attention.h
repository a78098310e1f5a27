// Causal multi-head self-attention with RoPE (HF LLaMA convention) and fused q/k/v projections.
// Forward and backward are explicit; scores are formed one (sequence, head, query block) at a
// time, so memory beyond the saved activations is q_block x T floats, never T x T per head.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace moerun {

struct AttentionConfig {
  int64_t H = 0;                // hidden size
  int64_t n_head = 0;           // heads; head_dim = H / n_head, which must be even for RoPE
  double rope_theta = 10000.0;  // angle = pos * rope_theta^(-2j/head_dim)
  int64_t q_block = 64;         // query rows per score block: larger blocks mean fatter GEMMs but
                                // more masked (wasted) work on the causal diagonal
  int64_t head_dim() const { return n_head > 0 ? H / n_head : 0; }
  // Throws moerun::Error naming the bad field (e.g. H not divisible by n_head).
  void validate() const;
};

struct AttentionWeights {
  const float* wqkv;  // (3H, H) rows [0,H) q_proj, [H,2H) k_proj, [2H,3H) v_proj (HF out x in)
  const float* wo;    // (H, H) o_proj
};

struct AttentionGrads {
  float* dwqkv;  // (3H, H), accumulated into
  float* dwo;    // (H, H), accumulated into
};

// What forward leaves for backward; reused (not reallocated) when the next call has the same B, T.
struct AttentionSaved {
  int64_t B = 0, T = 0;
  Tensor qkv;       // (B*T, 3H): q and k after RoPE, then v
  Tensor att;       // (B*T, H): per-head softmax(q k^T / sqrt(d)) v, heads concatenated, pre-o_proj
  Tensor lse;       // (B, n_head, T): log-sum-exp of each scaled causal score row
  Tensor rope_cos;  // (T, head_dim/2)
  Tensor rope_sin;  // (T, head_dim/2)
};

// x (B*T, H): B sequences of T tokens, positions restart at 0 per sequence -> out (B*T, H),
// overwritten. Fills saved.
void attention_forward(const AttentionConfig& cfg, const AttentionWeights& w, const float* x,
                       int64_t B, int64_t T, AttentionSaved& saved, float* out);

// dout (B*T, H) -> dx (B*T, H), overwritten; grads accumulated. x is the forward's input, saved
// is what that forward filled (B and T come from it).
void attention_backward(const AttentionConfig& cfg, const AttentionWeights& w, const float* x,
                        const AttentionSaved& saved, const float* dout, AttentionGrads& grads,
                        float* dx);

}  // namespace moerun
