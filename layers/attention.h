// Attention: the interface every attention module implements (MHA now, MLA next), and the
// config they share. A module owns its parameters, their gradients and its saved activations.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "layers/param.h"
#include "runtime/tensor.h"

namespace moerun {

enum class AttentionKind { kMHA };

struct AttentionConfig {
  AttentionKind kind = AttentionKind::kMHA;
  int64_t H = 0;                // hidden size
  int64_t n_head = 0;           // heads; head_dim = H / n_head, which must be even for RoPE
  double rope_theta = 10000.0;  // angle = pos * rope_theta^(-2j/head_dim)
  int64_t q_block = 64;         // query rows per score block: larger blocks mean fatter GEMMs but
                                // more masked (wasted) work on the causal diagonal
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
  // Normal(0, std) weights from Rng streams stream, stream + 1, ... (at most 8).
  virtual void init(uint64_t seed, uint64_t stream, float std) = 0;
  // Appends prefix + each parameter's name ("wqkv", "wo", ...).
  virtual void named_params(const std::string& prefix, std::vector<NamedParam>& out) = 0;
  // Frees the saved activations (recomputation rebuilds them with forward).
  virtual void drop_saved() = 0;
};

// The module cfg.kind names, with zero weights.
std::unique_ptr<Attention> make_attention(const AttentionConfig& cfg);

}  // namespace moerun
