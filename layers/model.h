// Model: the whole DeepSeekMoE language model (embedding, decoder blocks with dense or MoE FFNs,
// final norm, untied LM head, cross-entropy), its forward and mirrored backward on CPU fp32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "layers/attention.h"
#include "layers/moe.h"
#include "layers/moe_config.h"
#include "runtime/tensor.h"

namespace moerun {

struct ModelConfig {
  int64_t vocab = 0;          // V
  int64_t hidden = 0;         // H
  int64_t layers = 0;         // L decoder blocks
  int64_t heads = 0;          // attention heads; head_dim = H / heads (even, for RoPE)
  int64_t seq_len = 0;        // T tokens per sequence
  int64_t first_k_dense = 0;  // blocks [0, first_k_dense) use the dense FFN, the rest MoE
  int64_t dense_ffn = 0;      // width of the dense SwiGLU FFN
  MoEConfig moe;              // every MoE block's shape and routing; moe.hidden == hidden
  float init_std = 0.006f;    // Normal(0, init_std) for every matrix
  float norm_eps = 1e-6f;     // RMSNorm epsilon
  double rope_theta = 10000;

  // Throws moerun::ConfigError naming the command-line option; no communication.
  void validate(int ep_size) const;
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense; }
};

// A parameter as optimizers and checkpoints see it. Expert tensors hold only this rank's
// E_local experts (their gradients reduce over the expert-data-parallel group, not the world).
struct NamedParam {
  std::string name;  // HF-like: "layers.1.moe.w13"
  Tensor* value;
  Tensor* grad;
  bool is_expert;  // sharded over the EP group
  bool is_matrix;  // 2-D or more (weight decay applies); norm weights are not
};

// One decoder block: h = x + Attn(RMSNorm(x)); out = h + FFN(RMSNorm(h)), FFN dense or MoE.
struct Block {
  Tensor attn_norm, dattn_norm;   // (H)
  Tensor wqkv, dwqkv;             // (3H, H) rows q | k | v (HF out x in)
  Tensor wo, dwo;                 // (H, H)
  Tensor ffn_norm, dffn_norm;     // (H)
  Tensor w13, dw13;               // (2*dense_ffn, H) dense blocks only: rows W1 | W3
  Tensor w2, dw2;                 // (H, dense_ffn) dense blocks only
  std::unique_ptr<MoELayer> moe;  // MoE blocks only (owns its parameters and gradients)

  // Saved by forward for backward, reused across steps of the same shape.
  Tensor x;            // (N, H) block input (the residual stream)
  Tensor xn1, rstd1;   // (N, H), (N): RMSNorm(x) and its 1/rms
  AttentionSaved att;  // attention's own saved activations
  Tensor h;            // (N, H) x + attention output
  Tensor xn2, rstd2;   // (N, H), (N): RMSNorm(h)
  Tensor ab;           // (N, 2*dense_ffn) dense FFN pre-activations
};

class Model {
 public:
  // Validates cfg against ep.size() before any communication; ep must outlive the model.
  Model(const ModelConfig& cfg, const Comm& ep);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Normal(0, init_std) for matrices, 1 for norm weights. MoE block l draws from seed + l with
  // experts drawn by global index, so every EP layout holds the same model.
  void init(uint64_t seed);

  // tokens, targets (n_seq, seq_len) int32 row-major. Forward, then backward accumulating into
  // the gradients. Returns this rank's mean cross-entropy over n_seq * seq_len positions plus the
  // MoE auxiliary balance losses (whose gradients flow too).
  double forward_backward(const int32_t* tokens, const int32_t* targets, int64_t n_seq);
  // The same loss without backward (evaluation, finite differences). Still a collective on the
  // EP group when it has MoE blocks: every rank must call it.
  double forward_loss(const int32_t* tokens, const int32_t* targets, int64_t n_seq);

  std::vector<NamedParam> params();
  std::vector<MoELayer*> moe_layers();
  void zero_grad();

  const ModelConfig& config() const { return cfg_; }
  std::vector<Block>& blocks() { return blocks_; }
  // The last forward's normalised final hidden state (N, H): logits = final_hidden W_head^T.
  const Tensor& final_hidden() const { return xf_; }
  const Tensor& lm_head() const { return lm_head_; }

 private:
  double run(const int32_t* tokens, const int32_t* targets, int64_t n_seq, bool backward);
  void block_forward(Block& b, int64_t n_seq, Tensor& out);
  // dres (N, H): the gradient of the block's output on entry, of its input on return.
  void block_backward(Block& b, Tensor& dres);

  ModelConfig cfg_;
  const Comm* ep_;
  AttentionConfig attn_cfg_;
  Tensor embed_, dembed_;  // (V, H)
  std::vector<Block> blocks_;
  Tensor norm_, dnorm_;        // (H) final RMSNorm
  Tensor lm_head_, dlm_head_;  // (V, H), untied
  // Saved by forward for backward.
  Tensor x_out_;        // (N, H) the last block's output
  Tensor xf_, rstd_f_;  // (N, H), (N): final RMSNorm
  // Backward scratch, (N, H) each.
  Tensor dres_, dxn_, dtmp_;
};

}  // namespace moerun
