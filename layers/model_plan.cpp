// Model planning: parameter counts that mirror Model's tensors, DeepSeek LLM's FLOPs-per-token M
// and scaling laws (notes/algorithms.md section 7), and a per-rank memory estimate.
#include "layers/model_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "runtime/check.h"

namespace moerun {

namespace {

int64_t n_moe_layers(const ModelConfig& c) {
  return c.layers - c.first_k_dense;
}

// The (E, 2F, H) + (E, H, F) routed experts of one MoE layer, per expert.
int64_t params_per_expert(const ModelConfig& c) {
  return 3 * c.moe.expert_width * c.hidden;
}

// Matrix parameters of one attention module (no norm weights).
//   MHA: wqkv (3H, H) + wo (H, H).
//   MLA (DeepSeek-V2 section 2.1, HF DeepseekV2Attention; n heads, d_c = kv_lora_rank, d_c' =
//   q_lora_rank, nope/rope/v the head dims): queries H -> n (nope + rope), or with d_c' > 0
//   H -> d_c' -> n (nope + rope); kv_a (d_c + rope, H): the latent and the one shared RoPE key;
//   kv_b (n (nope + v), d_c); o (H, n v).
int64_t attention_matrix_params(const ModelConfig& c) {
  const int64_t H = c.hidden;
  if (c.attention == AttentionKind::kMHA) return 3 * H * H + H * H;
  const MLAConfig& a = c.mla;
  const int64_t n = c.heads, qk = a.qk_head_dim();
  const int64_t q = a.q_lora_rank > 0 ? H * a.q_lora_rank + a.q_lora_rank * n * qk : H * n * qk;
  return q + H * (a.kv_lora_rank + a.qk_rope_head_dim) +
         a.kv_lora_rank * n * (a.qk_nope_head_dim + a.v_head_dim) + n * a.v_head_dim * H;
}

// Norm weights inside one attention module: MLA's kv_a RMSNorm (d_c) and q_a RMSNorm (d_c').
int64_t attention_norm_params(const ModelConfig& c) {
  if (c.attention == AttentionKind::kMHA) return 0;
  return c.mla.kv_lora_rank + c.mla.q_lora_rank;
}

// Matrix parameters of one block that every token uses, excluding the routed experts and the
// RMSNorm weights: attention, and the dense FFN or the MoE gate + shared experts.
int64_t dense_matrix_params_of_block(const ModelConfig& c, int64_t layer) {
  const int64_t H = c.hidden;
  int64_t n = attention_matrix_params(c);
  if (c.is_moe_layer(layer)) {
    n += c.moe.routed_experts * H;      // gate (E, H)
    n += 3 * c.moe.shared_width() * H;  // shared (2SF, H) + (H, SF)
  } else {
    n += 3 * c.dense_ffn * H;  // w13 (2Fd, H) + w2 (H, Fd)
  }
  return n;
}

// fp32 bytes one attention module saves for backward over N = micro_batch * seq_len tokens.
//   MHA: qkv (3 N H), att (N H), lse (N heads), RoPE tables (T head_dim).
//   MLA (layers/mla.h MLASaved): queries (N n qk) after RoPE, with q_lora the q_a output and its
//     norm (2 N d_c') and rstd (N); the kv latent before and after its norm (2 N d_c) and rstd
//     (N), the RoPE key (N rope); kv_b's output (N n (nope + v)); att (N n v); lse (N n); RoPE
//     tables (T rope). Its input is the block's normalised x, already counted.
int64_t attention_saved_bytes(const ModelConfig& c, int64_t N) {
  constexpr int64_t f32 = 4;
  const int64_t H = c.hidden, T = c.seq_len, n = c.heads;
  if (c.attention == AttentionKind::kMHA)
    return (3 * N * H + N * H + N * n + T * (n > 0 ? H / n : 0)) * f32;
  const MLAConfig& a = c.mla;
  const int64_t q = N * n * a.qk_head_dim() + (a.q_lora_rank > 0 ? 2 * N * a.q_lora_rank + N : 0);
  const int64_t kv = 2 * N * a.kv_lora_rank + N + N * a.qk_rope_head_dim +
                     N * n * (a.qk_nope_head_dim + a.v_head_dim);
  return (q + kv + N * n * a.v_head_dim + N * n + T * a.qk_rope_head_dim) * f32;
}

// fp32 bytes of one attention backward's temporaries: MHA datt + dqkv (4 N H); MLA the gradients
// of the queries, keys and values (2 N n qk + N n v), of att (N n v) and of kv_a's output.
int64_t attention_scratch_bytes(const ModelConfig& c, int64_t N) {
  constexpr int64_t f32 = 4;
  if (c.attention == AttentionKind::kMHA) return 4 * N * c.hidden * f32;
  const MLAConfig& a = c.mla;
  const int64_t n = c.heads;
  return (2 * N * n * a.qk_head_dim() + 2 * N * n * a.v_head_dim +
          N * (a.kv_lora_rank + a.qk_rope_head_dim)) *
         f32;
}

std::string human(double v) {
  const double a = std::fabs(v);
  if (a >= 1e12) return fmt::format("{:.2f}T", v / 1e12);
  if (a >= 1e9) return fmt::format("{:.2f}B", v / 1e9);
  if (a >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (a >= 1e3) return fmt::format("{:.2f}K", v / 1e3);
  return fmt::format("{:.0f}", v);
}

std::string gib(int64_t bytes) {
  return fmt::format("{:.3f} GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}

}  // namespace

ParamCounts count_params(const ModelConfig& c) {
  const int64_t V = c.vocab, H = c.hidden;
  ParamCounts p;
  p.embedding = 2 * V * H;
  int64_t dense = p.embedding + H;  // + final norm
  int64_t routed_active = 0;
  for (int64_t l = 0; l < c.layers; ++l) {
    // + attn_norm, ffn_norm and MLA's own norms
    dense += 2 * H + attention_norm_params(c) + dense_matrix_params_of_block(c, l);
    if (c.is_moe_layer(l)) {
      p.expert_total += c.moe.routed_experts * params_per_expert(c);
      routed_active += c.moe.top_k * params_per_expert(c);
    }
  }
  p.total = dense + p.expert_total;
  p.activated_per_token = dense + routed_active;
  return p;
}

// DeepSeek LLM (notes/algorithms.md section 7) defines the non-embedding FLOPs per token of a
// dense transformer as
//     M = 72 * n_layer * d_model^2 + 12 * n_layer * d_model * l_seq,
// where 72 L H^2 = 6 * (12 L H^2) is 6 FLOPs (forward 2 + backward 4) per non-embedding matrix
// parameter (4H^2 attention + 8H^2 FFN per layer) and 12 L H l_seq is the attention score and
// value products (q k^T and p v: 2 * 2 * H * l_seq forward, times 3 with backward, causal mask
// not discounted, as in the paper). For our SwiGLU and MoE blocks we keep the same two terms but
// count the matrix parameters a token actually multiplies:
//     M = 6 * N_act + 12 * n_layer * d_model * l_seq
//     N_act = sum over blocks of [4H^2 + (dense: 3 Fd H | MoE: E H gate + 3 S F H + K * 3 F H)]
// Like the paper, embedding and LM head (V x H) are left out; RMSNorm weights are not matrix
// parameters and are left out too. For a dense model with 3 Fd = 8H this is exactly the paper's M.
// MLA: 4H^2 becomes the MLA matrices (attention_matrix_params, counted as trained: the up-
// projections are not absorbed), and the score and value products run over n (nope + rope) and
// n v dims instead of H and H: 6 * n * (nope + rope + v) * l_seq per layer, which is 12 H l_seq
// again when nope + rope = v = H / n.
double flops_per_token(const ModelConfig& c) {
  double n_act = 0;
  for (int64_t l = 0; l < c.layers; ++l) {
    n_act += static_cast<double>(dense_matrix_params_of_block(c, l));
    if (c.is_moe_layer(l)) n_act += static_cast<double>(c.moe.top_k * params_per_expert(c));
  }
  const double score_dims =
      c.attention == AttentionKind::kMLA
          ? static_cast<double>(c.heads * (c.mla.qk_head_dim() + c.mla.v_head_dim))
          : 2.0 * static_cast<double>(c.hidden);
  return 6.0 * n_act +
         6.0 * static_cast<double>(c.layers) * score_dims * static_cast<double>(c.seq_len);
}

ScalingChoice scaling_law_choice(double m, double d, int64_t seq_len) {
  MOERUN_REQUIRE(m > 0 && d > 0 && seq_len > 0,
                 "scaling law needs M > 0, D > 0 and seq_len > 0 (got {}, {}, {})", m, d, seq_len);
  ScalingChoice s;
  s.compute_flops = m * d;
  // DeepSeek LLM's fits (notes/algorithms.md section 7).
  s.lr = 0.3118 * std::pow(s.compute_flops, -0.1250);
  s.batch_tokens = 0.2920 * std::pow(s.compute_flops, 0.3271);
  s.global_batch_seqs =
      std::max<int64_t>(1, std::llround(s.batch_tokens / static_cast<double>(seq_len)));
  s.explanation = fmt::format(
      "DeepSeek LLM scaling laws (notes/algorithms.md section 7):\n"
      "  M = non-embedding FLOPs per token         = {:.4g} ({})\n"
      "  D = training tokens                       = {:.4g} ({})\n"
      "  C = M * D                                 = {:.4g} FLOPs\n"
      "  lr_opt    = 0.3118 * C^-0.1250            = {:.3e}\n"
      "  batch_opt = 0.2920 * C^0.3271             = {:.4g} tokens ({})\n"
      "  global batch = round(batch_opt / seq_len) = round({:.4g} / {}) = {} sequences "
      "({} tokens)\n",
      m, human(m), d, human(d), s.compute_flops, s.lr, s.batch_tokens, human(s.batch_tokens),
      s.batch_tokens, seq_len, s.global_batch_seqs,
      human(static_cast<double>(s.global_batch_seqs * seq_len)));
  return s;
}

ScalingChoice scaling_law_choice(const ModelConfig& cfg, int64_t total_tokens) {
  return scaling_law_choice(flops_per_token(cfg), static_cast<double>(total_tokens), cfg.seq_len);
}

// What one rank holds, counted from what Model, Block, MoELayer and attention keep:
//   parameters, gradients and AdamW m, v: 4 fp32 copies of this rank's parameters, where the
//     routed experts are E/ep_size per rank and everything else (dense blocks, attention, gate,
//     shared experts, embeddings) is replicated on every rank (zero = 0; world_size only adds
//     data-parallel replicas). ZeRO-1 divides m, v by the DP degree of each part and adds the
//     gradient shards. The loss-free bias (E per MoE layer) is added to params.
//   saved activations of one micro-batch, N = micro_batch * seq_len tokens (fp32):
//     per block: x, xn1, h, xn2 (4 N H), rstd1, rstd2 (2N); attention (attention_saved_bytes:
//       MHA qkv (3 N H), att (N H), lse (N heads), RoPE tables (T head_dim); MLA its latents);
//     dense block: ab (2 N Fd);
//     MoE block: router scores (N E) and three (N, K) index/weight tensors; received rows
//       recv_x (P H) with P = N K pairs (dropless and balanced: on average every rank receives as
//       many pairs as it sends, whatever ep_size); the dispatch handle's per-pair vectors
//       (~4 int64 + 1 float per pair, 2 int64 per token); expert pre-activations ab (P 2F);
//       shared-expert pre-activations (N 2SF).
//     model: last block output, final norm output (2 N H), backward scratch dres/dxn/dtmp
//       (3 N H), the LM head's logits chunk (min(1024, N) V).
//   --recompute moe: MoE blocks without the SwiGLU pre-activations (pairs 2F, shared N 2SF); one
//     layer's come back in the scratch during its backward. --recompute full: each block keeps
//     its input (N H) and a MoE block its routing and dispatch handle; the block in backward
//     holds its whole recomputed set on top of the scratch.
//   peak scratch: the largest one-layer temporary set, usually MoE backward (dx (N H), dy_perm,
//     dx_perm and dispatch buffers ~3 P H, expert d-activations 2 P F) or attention backward
//     (attention_scratch_bytes: MHA datt + dqkv, 4 N H).
// Not counted: the host allocator's cached blocks, MPI's buffers, OpenBLAS's thread buffers, and
// routing imbalance (a hot expert's rank receives more than N K pairs). Expect the real resident
// size within about 2x of this.
MemoryEstimate estimate_memory(const ModelConfig& c, int ep_size, int world_size,
                               int64_t micro_batch, int zero) {
  MOERUN_REQUIRE(ep_size > 0 && world_size > 0 && world_size % ep_size == 0,
                 "ep_size ({}) must be > 0 and divide world_size ({})", ep_size, world_size);
  MOERUN_REQUIRE(micro_batch > 0, "micro_batch must be > 0 (got {})", micro_batch);
  const bool has_moe = n_moe_layers(c) > 0;
  MOERUN_REQUIRE(!has_moe || c.moe.routed_experts % ep_size == 0,
                 "experts ({}) must divide by EP size ({})", c.moe.routed_experts, ep_size);
  constexpr int64_t f32 = 4, i64 = 8;
  const ParamCounts pc = count_params(c);
  const int64_t local_expert_params = pc.expert_total / ep_size;
  const int64_t rank_params = pc.total - pc.expert_total + local_expert_params;
  const int64_t bias = has_moe ? n_moe_layers(c) * c.moe.routed_experts : 0;

  MemoryEstimate m;
  m.params_bytes = (rank_params + bias) * f32;
  m.grads_bytes = rank_params * f32;
  m.optimizer_bytes = 2 * rank_params * f32;
  if (zero == 1) {
    // Even shards (ceil), as the optimizer splits its flat regions (alignment gaps not counted).
    const int64_t edp = world_size / ep_size, dense = rank_params - local_expert_params;
    const int64_t shard =
        (dense + world_size - 1) / world_size + (local_expert_params + edp - 1) / edp;
    m.optimizer_bytes = 2 * shard * f32;
    m.grads_bytes += (world_size > 1 ? (dense + world_size - 1) / world_size : 0) * f32 +
                     (edp > 1 ? (local_expert_params + edp - 1) / edp : 0) * f32;
  }

  const int64_t H = c.hidden, T = c.seq_len, N = micro_batch * T, V = c.vocab;
  const int64_t K = c.moe.top_k, E = c.moe.routed_experts, F = c.moe.expert_width;
  const int64_t P = N * K;  // pairs received per rank, balanced
  const int64_t block_common = (4 * N * H + 2 * N) * f32 + attention_saved_bytes(c, N);
  const int64_t dense_block_full = block_common + 2 * N * c.dense_ffn * f32;
  // The MoE layer's SwiGLU pre-activations: what --recompute moe drops and rebuilds.
  const int64_t moe_ab = P * 2 * F * f32 + N * 2 * c.moe.shared_width() * f32;
  // Routing and dispatch handle: what --recompute full keeps of a MoE block besides its input.
  const int64_t moe_routing = (N * E + 3 * N * K) * f32 + P * (4 * i64 + f32) + 2 * N * i64;
  const int64_t moe_block_full = block_common + moe_routing + P * H * f32 + moe_ab;
  const int64_t model_extra = (5 * N * H + N + std::min<int64_t>(1024, N) * V) * f32;
  int64_t moe_scratch = has_moe ? (N * H + 3 * P * H + 2 * P * F) * f32 : 0;
  const int64_t attn_scratch = attention_scratch_bytes(c, N);
  const int64_t dense_scratch = c.first_k_dense > 0 ? 2 * N * c.dense_ffn * f32 : 0;
  int64_t dense_block = dense_block_full;
  int64_t moe_block = moe_block_full;
  int64_t recompute_scratch = 0;
  if (c.recompute == Recompute::kMoE) {
    // One MoE layer's pre-activations live again, only during its own backward.
    moe_block = moe_block_full - moe_ab;
    if (has_moe) moe_scratch += moe_ab;
  } else if (c.recompute == Recompute::kFull) {
    // Every block keeps its input (N H); a MoE block also its routing and handle. The block being
    // back-propagated holds its whole recomputed set (with the MoE pre-activations rebuilt one
    // at a time inside its backward, as with kMoE).
    dense_block = N * H * f32;
    moe_block = N * H * f32 + moe_routing;
    recompute_scratch = std::max(c.first_k_dense > 0 ? dense_block_full : 0,
                                 has_moe ? moe_block_full - moe_ab - moe_routing : 0);
    if (has_moe) moe_scratch += moe_ab;
  }
  const int64_t scratch = recompute_scratch + std::max({moe_scratch, attn_scratch, dense_scratch});
  const int64_t saved = c.first_k_dense * dense_block + n_moe_layers(c) * moe_block + model_extra;
  m.activations_bytes = saved + scratch;
  m.total_bytes = m.params_bytes + m.grads_bytes + m.optimizer_bytes + m.activations_bytes;

  std::ostringstream b;
  b << fmt::format(
      "per-rank memory estimate (fp32; EP {} of world {}; micro-batch {} x {} = {} tokens{}; "
      "recompute {})\n",
      ep_size, world_size, micro_batch, T, N, zero == 1 ? "; ZeRO-1" : "", to_string(c.recompute));
  b << fmt::format("  parameters on this rank   {} ({} routed-expert params of {} total, 1/{})\n",
                   human(static_cast<double>(rank_params)),
                   human(static_cast<double>(local_expert_params)),
                   human(static_cast<double>(pc.expert_total)), ep_size);
  b << fmt::format("  params                    {}\n", gib(m.params_bytes));
  b << fmt::format("  grads                     {}\n", gib(m.grads_bytes));
  b << fmt::format("  AdamW m, v                {}\n", gib(m.optimizer_bytes));
  b << fmt::format(
      "  activations               {} ({} dense block(s) x {}, {} MoE block(s) x {},\n"
      "                            model {}, peak scratch {})\n",
      gib(m.activations_bytes), c.first_k_dense, gib(dense_block), n_moe_layers(c), gib(moe_block),
      gib(model_extra), gib(scratch));
  b << fmt::format("  total                     {}\n", gib(m.total_bytes));
  b << "  (dropless, balanced routing; allocator caches, MPI and BLAS buffers not counted)\n";
  m.breakdown = b.str();
  return m;
}

int64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  while (in >> key) {
    if (key == "MemAvailable:") {
      int64_t kb = 0;
      std::string unit;
      if (in >> kb >> unit && unit == "kB") return kb * 1024;
      return 0;
    }
    std::string rest;
    std::getline(in, rest);
  }
  return 0;
}

}  // namespace moerun
