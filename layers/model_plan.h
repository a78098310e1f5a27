// Model planning without building a model: exact parameter counts, FLOPs per token, the
// DeepSeek LLM scaling-law choice of learning rate and batch, and a per-rank memory estimate.
#pragma once

#include <cstdint>
#include <string>

#include "layers/model.h"

namespace moerun {

// Exactly the numel of Model::params() over the whole model (every routed expert counted once,
// whatever the EP layout). The loss-free bias is a buffer, not a parameter, and is not counted.
struct ParamCounts {
  int64_t total = 0;
  int64_t embedding = 0;            // embed + lm_head, (V, H) each (untied)
  int64_t activated_per_token = 0;  // total minus the routed experts a token does not use:
                                    // everything else + K of E routed experts per MoE layer
  int64_t expert_total = 0;         // routed experts only (the EP-sharded part); shared experts
                                    // are always on and count as dense
};
ParamCounts count_params(const ModelConfig& cfg);

// Non-embedding FLOPs per token, DeepSeek LLM's M (notes/algorithms.md section 7). See the .cpp.
double flops_per_token(const ModelConfig& cfg);

struct ScalingChoice {
  double compute_flops = 0;       // C = M * D
  double lr = 0;                  // lr_opt
  double batch_tokens = 0;        // B_opt in tokens
  int64_t global_batch_seqs = 0;  // round(B_opt / seq_len), at least 1
  std::string explanation;        // multi-line, human-readable: C, M, D and both formulas
};
// total_tokens = D, the training tokens.
ScalingChoice scaling_law_choice(const ModelConfig& cfg, int64_t total_tokens);
// The same from a given M (FLOPs per token), D (tokens) and sequence length.
ScalingChoice scaling_law_choice(double flops_per_token, double total_tokens, int64_t seq_len);

// Per-rank bytes of one training process (CPU fp32).
struct MemoryEstimate {
  int64_t params_bytes = 0;       // fp32; routed experts E/ep_size per rank, the rest replicated
  int64_t grads_bytes = 0;        // one fp32 gradient per parameter
  int64_t optimizer_bytes = 0;    // AdamW m and v, fp32 (ZeRO-1: this rank's shards)
  int64_t activations_bytes = 0;  // saved for backward for one micro-batch + the peak scratch
  int64_t total_bytes = 0;
  std::string breakdown;  // multi-line, human-readable
};
// micro_batch = sequences per rank per forward/backward. ep_size must divide world_size and E.
// zero = 1 (ZeRO-1): the moments of the dense parameters split over the world and those of the
// local experts over the expert-DP group (world / ep_size), plus the gradient shards that the
// reduce-scatter fills (counted with the gradients).
MemoryEstimate estimate_memory(const ModelConfig& cfg, int ep_size, int world_size,
                               int64_t micro_batch, int zero = 0);

// MemAvailable from /proc/meminfo in bytes; 0 when it cannot be read.
int64_t available_memory_bytes();

}  // namespace moerun
