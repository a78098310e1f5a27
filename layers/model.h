// Model: the whole DeepSeekMoE language model (embedding, decoder blocks with dense or MoE FFNs,
// final norm, untied LM head, cross-entropy) as modules; forward and its mirrored backward are
// two calls. Parameters and gradients live in two flat buffers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "layers/attention.h"
#include "layers/embedding.h"
#include "layers/loss.h"
#include "layers/mlp.h"
#include "layers/moe.h"
#include "layers/moe_config.h"
#include "layers/param.h"
#include "layers/rmsnorm.h"
#include "runtime/tensor.h"

namespace moerun {

// What a decoder block keeps from its forward for its backward (--recompute). Every mode gives
// bitwise the same losses and gradients: a recomputed activation is the same computation on the
// same inputs.
//   kNone: everything (fastest, most memory).
//   kMoE:  not the MoE layers' SwiGLU pre-activations (routed experts (pairs, 2F), shared experts
//          (T, 2SF)); backward recomputes them from the kept dispatched rows, no extra all-to-all.
//   kFull: only each block's input, plus its MoE routing and dispatch handle (indices, weights,
//          counts: no rows); backward re-runs the block's forward just before the block's
//          backward, re-dispatching the rows with the kept handle (one extra token all-to-all per
//          MoE block, no re-routing: the load counters, bias statistics, aux losses and drops
//          are counted once, in the first forward).
enum class Recompute { kNone, kMoE, kFull };
Recompute parse_recompute(const std::string& s);  // "none" | "moe" | "full"; names --recompute
std::string to_string(Recompute r);

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
  AttentionKind attention = AttentionKind::kMHA;  // --attention mha|mla
  MLAConfig mla;                                  // kMLA: the latent sizes (layers/attention.h)
  RopeScaling rope_scaling;                       // kMLA: YaRN or none
  Recompute recompute = Recompute::kNone;  // what blocks keep for backward (not the numerics)

  // Throws moerun::ConfigError naming the command-line option; no communication.
  void validate(int ep_size) const;
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense; }
};

// One decoder block: h = x + Attn(RMSNorm(x)); out = h + FFN(RMSNorm(h)), FFN dense or MoE.
// Every piece is a module with its own parameters, gradients and saved activations.
class Block {
 public:
  Block(const ModelConfig& cfg, const AttentionConfig& attn_cfg, int64_t layer, const Comm& ep);
  // x (N, H) -> out (N, H), N = n_seq * seq_len.
  Tensor forward(const Tensor& x);
  // dout (N, H) -> dx (N, H); accumulates every parameter gradient of the block.
  Tensor backward(const Tensor& dout);
  void named_params(const std::string& prefix, std::vector<NamedParam>& out);
  void drop_saved();
  // Generation: x (batch * t, H) at positions [pos, pos + t) -> out (batch * t, H) through the
  // attention's cache (Attention::decode) and the FFN's forward. Saves nothing for backward and
  // leaves the MoE's routing stats, saved state and bias as they were. A collective on the EP
  // group for MoE blocks.
  Tensor decode(const Tensor& x, int64_t pos);

  RMSNorm attn_norm;
  std::unique_ptr<Attention> attn;
  RMSNorm ffn_norm;
  std::unique_ptr<MLP> mlp;       // dense blocks only
  std::unique_ptr<MoELayer> moe;  // MoE blocks only

 private:
  // Re-runs the forward of the block's input saved_x_ so that every module holds its saved
  // activations again (kFull); the block's output is not needed and not formed.
  void recompute_forward();
  // Frees what the modules saved, keeping the MoE routing and dispatch handle.
  void drop_recomputable();

  int64_t seq_len_;
  float norm_eps_;
  Recompute recompute_;
  Tensor saved_x_;  // (N, H) the block's input (kFull only)
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

  // tokens, targets (n_seq, seq_len) int32. Returns this rank's mean cross-entropy over the
  // n_seq * seq_len positions plus the MoE auxiliary balance losses, and saves what backward
  // needs. A collective on the EP group when the model has MoE blocks: every rank must call it.
  double forward(const Tensor& tokens, const Tensor& targets);
  // The gradients of the last forward's loss (aux losses included), accumulated into the
  // gradient buffer. Also a collective on the EP group.
  void backward();

  // Generation (moerun generate). start_cache gives every block's attention an empty cache for
  // `batch` sequences of up to max_len <= seq_len positions. decode: tokens (batch, t) int32 at
  // positions [pos, pos + t), pos = the positions decoded since start_cache -> logits
  // (batch * t, V) (final norm and LM head), the same as forward's final_hidden W_head^T on the
  // whole sequences up to float rounding. No loss, no saved activations, no routing stats or bias
  // change. A collective on the EP group when the model has MoE blocks (ranks may pass different
  // batches, even after different start_cache sizes).
  void start_cache(int64_t batch, int64_t max_len);
  Tensor decode(const Tensor& tokens, int64_t pos);
  int64_t cache_bytes() const;  // every block's cache, allocated for max_len

  // Every parameter with its gradient, as views into the flat buffers below.
  std::vector<NamedParam> params();
  std::vector<MoELayer*> moe_layers();
  void zero_grad() { grad_buffer_.zero(); }
  // Frees every saved activation (recomputation rebuilds them with forward).
  void drop_saved();

  // Flat buffers: dense parameters first (params() order), then the expert ones; each tensor
  // starts on a 64-byte boundary (the gaps are zeros). The gradient buffer has the same layout,
  // so gradient sync reduces dense_grads() over the world and expert_grads() over the
  // expert-data-parallel group in place, and a sharded optimizer can split either by offset.
  Tensor& param_buffer() { return param_buffer_; }
  Tensor& grad_buffer() { return grad_buffer_; }
  Tensor dense_grads() { return grad_buffer_.view(0, {dense_numel_}); }
  Tensor expert_grads() {
    return grad_buffer_.view(dense_numel_, {grad_buffer_.numel() - dense_numel_});
  }

  const ModelConfig& config() const { return cfg_; }
  std::vector<Block>& blocks() { return blocks_; }
  // The last forward's normalised final hidden state (N, H): logits = final_hidden W_head^T.
  const Tensor& final_hidden() const { return saved_.xf; }
  const Tensor& lm_head() const { return head_.weight; }

 private:
  void bind_flat_buffers();

  ModelConfig cfg_;
  const Comm* ep_;
  AttentionConfig attn_cfg_;
  Embedding embed_;
  std::vector<Block> blocks_;
  RMSNorm norm_;  // final
  LMHeadLoss head_;
  Tensor param_buffer_, grad_buffer_;
  int64_t dense_numel_ = 0;
  struct Saved {
    Tensor xf;  // (N, H) final RMSNorm output
  } saved_;
  int64_t cache_batch_ = 0;  // start_cache's batch (0: no cache)
};

}  // namespace moerun
