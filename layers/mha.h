// Causal multi-head self-attention with RoPE (HF LLaMA convention) and fused q/k/v projections:
// the ops, and the MHA module behind the Attention interface. Scores are formed one (sequence,
// head, query block) at a time, so memory beyond the saved activations is q_block x T floats,
// never T x T per head.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/attention.h"
#include "runtime/tensor.h"

namespace moerun {

// What forward leaves for backward; reused (not reallocated) when the next call has the same B, T.
struct MHASaved {
  int64_t B = 0, T = 0;
  Tensor qkv;       // (B*T, 3H): q and k after RoPE, then v
  Tensor att;       // (B*T, H): per-head softmax(q k^T / sqrt(d)) v, heads concatenated, pre-o_proj
  Tensor lse;       // (B, n_head, T): log-sum-exp of each scaled causal score row
  Tensor rope_cos;  // (T, head_dim/2)
  Tensor rope_sin;  // (T, head_dim/2)
};

// The generation cache: keys after RoPE and values, per sequence and head, for positions
// [0, len) of at most max_len.
struct MHACache {
  int64_t batch = 0, max_len = 0, len = 0;
  Tensor k;  // (batch, n_head, max_len, head_dim)
  Tensor v;  // (batch, n_head, max_len, head_dim)
  int64_t bytes() const { return (k.defined() ? k.numel() + v.numel() : 0) * 4; }
};

// wqkv (3H, H) rows q_proj | k_proj | v_proj (HF out x in), wo (H, H) o_proj.
// x (B*T, H): B sequences of T = seq_len tokens -> out (B*T, H). Fills saved.
Tensor mha_forward(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo,
                   const Tensor& x, int64_t seq_len, MHASaved& saved);

// dout (B*T, H) -> dx (B*T, H); dwqkv, dwo accumulated. x is the forward's input, saved is what
// that forward filled (B and T come from it).
Tensor mha_backward(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo,
                    const Tensor& x, const MHASaved& saved, const Tensor& dout, Tensor& dwqkv,
                    Tensor& dwo);

// x (batch * t, H) at positions [pos, pos + t) of each sequence (pos == cache.len) -> out
// (batch * t, H): the rows attend to the cached positions and causally to each other, and their
// keys and values are appended to the cache. The same arithmetic as mha_forward, row for row.
Tensor mha_decode(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo, const Tensor& x,
                  int64_t pos, MHACache& cache);

namespace cpu {
void mha_decode(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo, const Tensor& x,
                int64_t t, MHACache& cache, Tensor& out);
void mha_forward(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo, const Tensor& x,
                 int64_t B, int64_t T, MHASaved& saved, Tensor& out);
void mha_backward(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo, const Tensor& x,
                  const MHASaved& saved, const Tensor& dout, Tensor& dwqkv, Tensor& dwo,
                  Tensor& dx);
}  // namespace cpu

class MHA : public Attention {
 public:
  explicit MHA(const AttentionConfig& cfg);
  Tensor forward(const Tensor& x, int64_t seq_len) override;
  Tensor backward(const Tensor& dout) override;
  void init(uint64_t seed, uint64_t stream, float std) override;
  void named_params(const std::string& prefix, std::vector<NamedParam>& out) override;
  void drop_saved() override { saved_ = {}; }
  void start_cache(int64_t batch, int64_t max_len) override;
  Tensor decode(const Tensor& x, int64_t pos) override;
  int64_t cache_bytes() const override;

  Tensor wqkv, dwqkv;  // (3H, H) rows q | k | v
  Tensor wo, dwo;      // (H, H)

 private:
  AttentionConfig cfg_;
  struct Saved {
    Tensor x;  // (B*T, H)
    MHASaved mha;
  } saved_;
  MHACache cache_;
};

}  // namespace moerun
