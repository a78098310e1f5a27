// Attention config checks and the factory over the implementations.
#include "layers/attention.h"

#include "layers/mha.h"
#include "runtime/check.h"

namespace moerun {

void AttentionConfig::validate() const {
  MOERUN_REQUIRE(H > 0, "attention hidden size must be > 0 (got {})", H);
  MOERUN_REQUIRE(n_head > 0, "attention heads must be > 0 (got {})", n_head);
  MOERUN_REQUIRE(H % n_head == 0, "attention hidden size ({}) must divide by heads ({})", H,
                 n_head);
  MOERUN_REQUIRE(head_dim() % 2 == 0, "RoPE needs an even head_dim (H {} / heads {} = {})", H,
                 n_head, head_dim());
  MOERUN_REQUIRE(rope_theta > 1.0, "rope_theta must be > 1 (got {})", rope_theta);
  MOERUN_REQUIRE(q_block > 0, "attention q_block must be > 0 (got {})", q_block);
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
      throw Error("MLA attention is not built yet (layers/mla.h)");
  }
  throw Error("unknown attention kind");
}

}  // namespace moerun
