// Attention config checks and the factory over the implementations.
#include "layers/attention.h"

#include <cmath>

#include "layers/mha.h"
#include "layers/mla.h"
#include "runtime/check.h"

namespace moerun {

void AttentionConfig::validate() const {
  MOERUN_REQUIRE(H > 0, "attention hidden size must be > 0 (got {})", H);
  MOERUN_REQUIRE(n_head > 0, "attention heads must be > 0 (got {})", n_head);
  if (kind == AttentionKind::kMHA) {
    MOERUN_REQUIRE(H % n_head == 0, "attention hidden size ({}) must divide by heads ({})", H,
                   n_head);
    MOERUN_REQUIRE(head_dim() % 2 == 0, "RoPE needs an even head_dim (H {} / heads {} = {})", H,
                   n_head, head_dim());
  }
  MOERUN_REQUIRE(rope_theta > 1.0, "rope_theta must be > 1 (got {})", rope_theta);
  MOERUN_REQUIRE(q_block > 0, "attention q_block must be > 0 (got {})", q_block);
  if (kind == AttentionKind::kMHA) {
    MOERUN_REQUIRE(!rope_scaling.yarn,
                   "YaRN rope scaling (--rope-scaling-factor) needs --attention mla; MHA uses "
                   "plain RoPE");
    return;
  }
  // MLA: the head sizes are free of H (H need not divide by the heads).
  const MLAConfig& m = mla;
  MOERUN_REQUIRE(m.kv_lora_rank > 0, "--kv-lora-rank must be > 0 for MLA (got {})", m.kv_lora_rank);
  MOERUN_REQUIRE(m.q_lora_rank >= 0,
                 "--q-lora-rank must be >= 0 for MLA (0 = no query compression; got {})",
                 m.q_lora_rank);
  MOERUN_REQUIRE(m.qk_nope_head_dim > 0, "--qk-nope-head-dim must be > 0 for MLA (got {})",
                 m.qk_nope_head_dim);
  MOERUN_REQUIRE(m.qk_rope_head_dim > 0 && m.qk_rope_head_dim % 2 == 0,
                 "--qk-rope-head-dim must be even and > 0 for MLA: RoPE turns pairs (got {})",
                 m.qk_rope_head_dim);
  MOERUN_REQUIRE(m.v_head_dim > 0, "--v-head-dim must be > 0 for MLA (got {})", m.v_head_dim);
  MOERUN_REQUIRE(norm_eps >= 0.0f && std::isfinite(norm_eps),
                 "MLA's latent RMSNorm eps must be finite and >= 0 (got {})", norm_eps);
  if (rope_scaling.yarn) {
    const RopeScaling& s = rope_scaling;
    MOERUN_REQUIRE(s.factor >= 1.0 && std::isfinite(s.factor),
                   "--rope-scaling-factor must be >= 1 for YaRN (got {})", s.factor);
    MOERUN_REQUIRE(s.original_max_position > 0,
                   "YaRN original_max_position_embeddings must be > 0 (got {})",
                   s.original_max_position);
    MOERUN_REQUIRE(s.beta_fast > 0.0 && s.beta_slow > 0.0 && s.beta_fast >= s.beta_slow,
                   "YaRN needs beta_fast >= beta_slow > 0 (got beta_fast {}, beta_slow {})",
                   s.beta_fast, s.beta_slow);
    MOERUN_REQUIRE(s.mscale >= 0.0 && s.mscale_all_dim >= 0.0,
                   "YaRN mscale and mscale_all_dim must be >= 0 (got {}, {})", s.mscale,
                   s.mscale_all_dim);
  }
}

AttentionKind parse_attention_kind(std::string_view s) {
  if (s == "mha") return AttentionKind::kMHA;
  if (s == "mla") return AttentionKind::kMLA;
  throw ConfigError(fmt::format("--attention must be mha or mla (got '{}')", s));
}

std::string to_string(AttentionKind k) {
  return k == AttentionKind::kMLA ? "mla" : "mha";
}

std::unique_ptr<Attention> make_attention(const AttentionConfig& cfg) {
  switch (cfg.kind) {
    case AttentionKind::kMHA:
      return std::make_unique<MHA>(cfg);
    case AttentionKind::kMLA:
      return std::make_unique<MLA>(cfg);
  }
  throw Error("unknown attention kind");
}

}  // namespace moerun
