// Attention: the interface every attention module implements (MHA now, MLA next), and the
// config they share. A module owns its parameters, their gradients and its saved activations.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layers/param.h"
#include "runtime/tensor.h"

namespace moerun {

// kMHA: multi-head attention with fused q/k/v (DeepSeek LLM / DeepSeekMoE, layers/mha.h).
// kMLA: multi-head latent attention (DeepSeek-V2 section 2.1, layers/mla.h).
enum class AttentionKind { kMHA, kMLA };
AttentionKind parse_attention_kind(std::string_view s);  // "mha" | "mla"; names --attention
std::string to_string(AttentionKind k);

// RoPE frequency scaling. Off, or YaRN as DeepSeek-V2/V3 configs spell it (config.json
// "rope_scaling": {"type": "yarn", "factor", "original_max_position_embeddings", "beta_fast",
// "beta_slow", "mscale", "mscale_all_dim"}), computed exactly as HF transformers does.
struct RopeScaling {
  bool yarn = false;
  double factor = 1.0;
  int64_t original_max_position = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

// The MLA sizes, named as in HF DeepSeek-V2/V3 configs. Per head the query and key are
// [nope | rope] (qk_head_dim = nope + rope); the rope key is one per token, shared by the heads.
struct MLAConfig {
  int64_t q_lora_rank = 0;  // 0 = a plain q_proj (V2-Lite); else q_a_proj, RMSNorm, q_b_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  // V2/V3 rotate adjacent pairs (x[2i], x[2i+1]) of the rope part; false = the LLaMA
  // rotate_half pairing (x[i], x[i + d/2]).
  bool rope_interleave = true;
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

struct AttentionConfig {
  AttentionKind kind = AttentionKind::kMHA;
  int64_t H = 0;                // hidden size
  int64_t n_head = 0;           // heads; MHA: head_dim = H / n_head, which must be even for RoPE
  double rope_theta = 10000.0;  // angle = pos * rope_theta^(-2j/rope_dim)
  int64_t q_block = 64;         // query rows per score block: larger blocks mean fatter GEMMs but
                                // more masked (wasted) work on the causal diagonal
  MLAConfig mla;                // kMLA only
  RopeScaling rope_scaling;     // kMLA only (MHA refuses YaRN)
  float norm_eps = 1e-6f;       // kMLA: the q_a and kv_a RMSNorms
  int64_t head_dim() const { return n_head > 0 ? H / n_head : 0; }
  // Throws moerun::Error naming the bad field (e.g. H not divisible by n_head).
  void validate() const;
};

class Attention {
 public:
  virtual ~Attention() = default;
  // x (B*T, H): B sequences of T = seq_len tokens, positions restarting at 0 per sequence
  // -> out (B*T, H). Saves what backward needs.
  virtual Tensor forward(const Tensor& x, int64_t seq_len) = 0;
  // dout (B*T, H) -> dx (B*T, H); accumulates the parameter gradients.
  virtual Tensor backward(const Tensor& dout) = 0;
  // Normal(0, std) weights from Rng streams stream + {0, 1, 4, 5, 6, 7} (+2 and +3 belong to
  // the block's dense FFN); norm weights inside the module are 1.
  virtual void init(uint64_t seed, uint64_t stream, float std) = 0;
  // Appends prefix + each parameter's name ("wqkv", "wo", ...).
  virtual void named_params(const std::string& prefix, std::vector<NamedParam>& out) = 0;
  // Frees the saved activations (recomputation rebuilds them with forward).
  virtual void drop_saved() = 0;

  // Generation (moerun generate): no saved state, no gradients.
  // start_cache allocates an empty cache for `batch` sequences of up to max_len positions (MHA:
  // k after RoPE and v per head; MLA: the normalised kv latent and the rope key per token, as
  // DeepSeek-V2 caches them), replacing any earlier cache.
  virtual void start_cache(int64_t batch, int64_t max_len) = 0;
  // x (batch * t, H), each sequence's t rows contiguous, for positions [pos, pos + t): attends
  // to the cached positions [0, pos) and causally to themselves, appends their keys/values to
  // the cache, returns (batch * t, H). pos must equal the positions cached so far and
  // pos + t <= max_len (moerun::Error otherwise).
  virtual Tensor decode(const Tensor& x, int64_t pos) = 0;
  // Bytes the cache holds now (allocated for max_len).
  virtual int64_t cache_bytes() const = 0;
};

// The module cfg.kind names, with zero weights.
std::unique_ptr<Attention> make_attention(const AttentionConfig& cfg);

}  // namespace moerun
