// Multi-head Latent Attention (DeepSeek-V2 section 2.1), as HF transformers' DeepseekV2Attention
// and DeepseekV3Attention compute it: the ops (forward, backward, decode over a latent cache)
// and the MLA module behind the Attention interface. Scores are formed one (sequence, head,
// query block) at a time, as in MHA: never T x T per head.
//
// Per token, with C = kv_lora_rank, dn / dr = qk_nope / qk_rope head dims, dv = v_head_dim:
//   q     = x wq^T, or RMSNorm(x wq_a^T) wq_b^T           (N, n_head*(dn+dr)), per head [nope|rope]
//   kv_a  = x wkv_a^T = [c_kv (C) | k_rope (dr)]            k_rope: one per token, shared by heads
//   kv    = RMSNorm(c_kv) wkv_b^T                          (N, n_head*(dn+dv)), per head [k_nope|v]
//   RoPE (times YaRN's attention factor) on q_rope and k_rope only
//   att_h = softmax(scale (q_nope k_nope^T + q_rope k_rope^T), causal) v   (scale: rope.h)
//   out   = att wo^T
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/attention.h"
#include "runtime/tensor.h"

namespace moerun {

// The parameters (HF out x in, rows in HF's order), or their gradients. NH = n_head,
// dq = qk_head_dim.
struct MLAWeights {
  Tensor wq;       // (NH*dq, H) q_proj; q_lora_rank == 0 only
  Tensor wq_a;     // (q_lora_rank, H) q_a_proj; q_lora_rank > 0 only
  Tensor q_norm;   // (q_lora_rank) q_a_layernorm
  Tensor wq_b;     // (NH*dq, q_lora_rank) q_b_proj
  Tensor wkv_a;    // (C + dr, H) kv_a_proj_with_mqa
  Tensor kv_norm;  // (C) kv_a_layernorm
  Tensor wkv_b;    // (NH*(dn+dv), C) kv_b_proj
  Tensor wo;       // (H, NH*dv) o_proj
};

// What forward leaves for backward (N = B*T); reused when the next call has the same B, T.
// Beside the input x: N*(2C + dr) + N*NH*(dq + dn + 2dv) + 2N*q_lora_rank floats, plus the
// row statistics (N per norm, B*NH*T lse) and the RoPE tables.
struct MLASaved {
  int64_t B = 0, T = 0;
  Tensor q_a;        // (N, q_lora_rank) x wq_a^T before its norm (q_lora only)
  Tensor q_a_rstd;   // (N) its RMSNorm statistic
  Tensor q_latent;   // (N, q_lora_rank) RMSNorm(q_a): the input of wq_b
  Tensor q;          // (N, NH*dq) per head [q_nope | q_rope after RoPE]
  Tensor c_kv;       // (N, C) the kv latent before its norm
  Tensor kv_rstd;    // (N) its RMSNorm statistic
  Tensor kv_latent;  // (N, C) RMSNorm(c_kv): the input of wkv_b (what decode caches)
  Tensor k_rope;     // (N, dr) after RoPE (what decode caches)
  Tensor kv;         // (N, NH*(dn+dv)) per head [k_nope | v]
  Tensor att;        // (N, NH*dv) per-head attention outputs, pre-o_proj
  Tensor lse;        // (B, NH, T) log-sum-exp of each scaled causal score row
  Tensor rope_cos;   // (T, dr/2) times the attention factor
  Tensor rope_sin;   // (T, dr/2)
};

// How decode attends over the cache: wkv_b absorbed into the query and output (attention over
// the latents; cheap for a token or a few against a long cache), k_nope and v expanded from the
// latents as forward does (cheaper for a prompt's prefill when 2 kv_lora_rank > dn + dv), or
// whichever costs fewer FLOPs for the call (kAuto, the module's choice). Same result to rounding.
enum class MLADecodePath { kAuto, kAbsorb, kExpand };

// The decode cache, DeepSeek-V2's: per sequence and position the normalised kv latent and the
// rope key after RoPE (no expanded key or value is kept).
struct MLACache {
  int64_t batch = 0, max_len = 0, len = 0;  // len: positions cached so far
  MLADecodePath path = MLADecodePath::kAuto;
  Tensor kv_latent;  // (batch, max_len, C)
  Tensor k_rope;     // (batch, max_len, dr)
  int64_t bytes() const { return static_cast<int64_t>(kv_latent.nbytes() + k_rope.nbytes()); }
};

// Throws moerun::Error unless cfg is a valid kMLA config and w holds the parameters it names
// with the right shapes.
void check_mla_weights(const AttentionConfig& cfg, const MLAWeights& w);

// x (B*T, H): B sequences of T = seq_len tokens -> out (B*T, H). Fills saved.
Tensor mla_forward(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x,
                   int64_t seq_len, MLASaved& saved);

// dout (B*T, H) -> dx (B*T, H); every gradient in dw (shaped as w) accumulated into. x is the
// forward's input, saved what that forward filled.
Tensor mla_backward(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x,
                    const MLASaved& saved, const Tensor& dout, MLAWeights& dw);

// An empty cache for `batch` sequences of up to max_len positions.
MLACache mla_start_cache(const AttentionConfig& cfg, int64_t batch, int64_t max_len,
                         MLADecodePath path = MLADecodePath::kAuto);

// x (batch * t, H) at positions [pos, pos + t) of each sequence -> (batch * t, H); appends to
// the cache. pos must equal cache.len and pos + t <= cache.max_len.
Tensor mla_decode(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x, int64_t pos,
                  MLACache& cache);

namespace cpu {
void mla_forward(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x, int64_t B,
                 int64_t T, MLASaved& saved, Tensor& out);
void mla_backward(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x,
                  const MLASaved& saved, const Tensor& dout, MLAWeights& dw, Tensor& dx);
void mla_decode(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x, int64_t pos,
                MLACache& cache, Tensor& out);
}  // namespace cpu

class MLA : public Attention {
 public:
  explicit MLA(const AttentionConfig& cfg);
  Tensor forward(const Tensor& x, int64_t seq_len) override;
  Tensor backward(const Tensor& dout) override;
  void init(uint64_t seed, uint64_t stream, float std) override;
  void named_params(const std::string& prefix, std::vector<NamedParam>& out) override;
  void drop_saved() override { saved_ = {}; }
  void start_cache(int64_t batch, int64_t max_len) override;
  Tensor decode(const Tensor& x, int64_t pos) override;
  // batch * max_len * (kv_lora_rank + qk_rope_head_dim) * 4 bytes (fp32), 0 before start_cache.
  int64_t cache_bytes() const override;

  MLAWeights w, dw;  // the unused q path (wq, or wq_a / q_norm / wq_b) stays undefined

 private:
  AttentionConfig cfg_;
  struct Saved {
    Tensor x;  // (B*T, H)
    MLASaved mla;
  } saved_;
  MLACache cache_;
};

}  // namespace moerun
