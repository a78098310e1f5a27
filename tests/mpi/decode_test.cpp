// Generation: Model::decode through the attention caches (MHA and MLA) (a prefill, a chunk, then
// one token at a time) gives the logits of Model::forward on the whole sequences (final_hidden x
// lm_head), at every EP size that divides the world, with the ranks holding different batches; it
// leaves the routing stats, the biases and the saved state of a pending forward untouched (the
// backward after it gives bitwise the gradients of one without it); bad positions are errors.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstdint>
#include <vector>

#include "comm/topology.h"
#include "layers/lm_head.h"
#include "layers/model.h"
#include "runtime/check.h"
#include "runtime/rng.h"
#include "tests/common/expect_close.h"
#include "tests/common/mpi_test.h"
#include "tests/common/test_seed.h"

namespace moerun::testing {
namespace {

ModelConfig tiny_model(AttentionKind kind) {
  ModelConfig m;
  m.vocab = 37;
  m.hidden = 32;
  m.layers = 3;
  m.heads = 4;
  m.seq_len = 12;
  m.first_k_dense = 1;
  m.dense_ffn = 40;
  m.init_std = 0.08f;  // logits well away from zero, routing scores well apart
  m.moe.hidden = 32;
  m.moe.expert_width = 16;
  m.moe.routed_experts = 8;
  m.moe.shared_experts = 1;
  m.moe.top_k = 2;
  m.attention = kind;
  if (kind == AttentionKind::kMLA) {
    m.mla.q_lora_rank = 24;
    m.mla.kv_lora_rank = 16;
    m.mla.qk_nope_head_dim = 8;
    m.mla.qk_rope_head_dim = 4;
    m.mla.v_head_dim = 8;
  }
  return m;
}

Tensor random_tokens(int64_t B, int64_t T, int64_t V, Rng rng) {
  std::vector<int32_t> ids(static_cast<size_t>(B * T));
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(V));
  return Tensor::from_host(std::span<const int32_t>(ids), {B, T});
}

// tokens[:, begin:end) as (B, end - begin).
Tensor columns(const Tensor& tokens, int64_t begin, int64_t end) {
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  std::vector<int32_t> ids;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = begin; i < end; ++i) ids.push_back(tokens.span<int32_t>()[b * T + i]);
  return Tensor::from_host(std::span<const int32_t>(ids), {B, end - begin});
}

// Rows (b, [begin, end)) of the (B*T, V) reference, in decode's order (sequence-major).
std::vector<float> ref_rows(const Tensor& ref, int64_t B, int64_t T, int64_t begin, int64_t end) {
  const int64_t V = ref.dim(1);
  std::vector<float> out;
  for (int64_t b = 0; b < B; ++b) {
    const float* p = ref.f32() + (b * T + begin) * V;
    out.insert(out.end(), p, p + (end - begin) * V);
  }
  return out;
}

void randomise_biases(Model& model, uint64_t seed) {
  Rng rng(seed, 77);  // the same on every rank, as training keeps them
  for (MoELayer* l : model.moe_layers())
    for (float& b : l->params().bias.span<float>()) b = static_cast<float>(rng.normal() * 0.05);
}

void check_decode_equals_forward(AttentionKind kind, uint64_t seed) {
  Comm world = Comm::world();
  const int W = world.size(), me = world.rank();
  const ModelConfig mc = tiny_model(kind);
  const int64_t T = mc.seq_len, V = mc.vocab;
  for (int ep : {1, 2, 4}) {
    if (W % ep != 0) continue;
    Topology topo = Topology::create(ep);
    Model model(mc, topo.ep), plain(mc, topo.ep);
    for (Model* m : {&model, &plain}) {
      m->init(seed);
      randomise_biases(*m, seed);
    }
    // Ranks hold different batches (1 or 2 sequences), so the MoE decode sees uneven T.
    const int64_t B = 1 + me % 2;
    const Tensor tokens = random_tokens(B, T, V, Rng(seed, 100 + static_cast<uint64_t>(me)));
    const Tensor targets = random_tokens(B, T, V, Rng(seed, 200 + static_cast<uint64_t>(me)));
    model.forward(tokens, targets);
    plain.forward(tokens, targets);
    const Tensor ref = lm_head_forward(model.final_hidden(), model.lm_head());  // (B*T, V)
    std::vector<std::vector<int64_t>> counts;
    std::vector<std::vector<float>> biases;
    for (MoELayer* l : model.moe_layers()) {
      counts.push_back(l->stats().tokens_per_expert);
      const auto b = l->params().bias.span<float>();
      biases.emplace_back(b.begin(), b.end());
    }

    bool ok = true;
    const std::string where = fmt::format("{} EP {} rank {}", to_string(kind), ep, me);
    model.start_cache(B, T);
    EXPECT_GT(model.cache_bytes(), 0);
    if (kind == AttentionKind::kMHA) {
      // k and v per layer, sequence, head, position and head dim.
      EXPECT_EQ(model.cache_bytes(), mc.layers * 2 * B * mc.hidden * T * 4) << where;
    } else {
      // The latent and the one rope key per layer, sequence and position.
      EXPECT_EQ(model.cache_bytes(),
                mc.layers * B * T * (mc.mla.kv_lora_rank + mc.mla.qk_rope_head_dim) * 4)
          << where;
    }
    // Prefill 5 positions, then a chunk of 3, then one token at a time.
    std::vector<std::pair<int64_t, int64_t>> pieces{{0, 5}, {5, 8}};
    for (int64_t i = 8; i < T; ++i) pieces.emplace_back(i, i + 1);
    for (auto [begin, end] : pieces) {
      const Tensor logits = model.decode(columns(tokens, begin, end), begin);
      ok = expect_close(logits, ref_rows(ref, B, T, begin, end), 1e-5, 1e-5,
                        fmt::format("decode [{}, {}) vs forward, {}", begin, end, where)) &&
           ok;
    }
    // Nothing a training step reads changed: routing stats, biases, the saved forward.
    const std::vector<MoELayer*> moe = model.moe_layers();
    for (size_t l = 0; l < moe.size(); ++l) {
      ok = (moe[l]->stats().tokens_per_expert == counts[l]) && ok;
      const auto b = moe[l]->params().bias.span<float>();
      ok = std::vector<float>(b.begin(), b.end()) == biases[l] && ok;
    }
    EXPECT_TRUE(ok) << where;
    model.backward();
    plain.backward();
    const auto g = model.grad_buffer().span<float>(), gp = plain.grad_buffer().span<float>();
    const bool same_grads = std::equal(g.begin(), g.end(), gp.begin(), gp.end());
    EXPECT_TRUE(same_grads) << "a decode between forward and backward changed the gradients, "
                            << where;
    ok = ok && same_grads;
    EXPECT_TRUE(world.all_true(ok)) << "decode differs from forward on some rank at EP " << ep;
  }
}

TEST(Decode, MHAEqualsForward) {
  const TestSeed seed(0xdec0de);
  check_decode_equals_forward(AttentionKind::kMHA, seed);
}

// MLA caches the normalised kv latent and the rope key per token (DeepSeek-V2), with its q LoRA.
TEST(Decode, MLAEqualsForward) {
  const TestSeed seed(0xdec0de + 1);
  check_decode_equals_forward(AttentionKind::kMLA, seed);
}

TEST(Decode, BadPositionsAreErrors) {
  Comm world = Comm::world();
  Topology topo = Topology::create(world.size() % 2 == 0 ? 2 : 1);
  ModelConfig mc = tiny_model(AttentionKind::kMHA);
  Model model(mc, topo.ep);
  model.init(3);
  const Tensor two = random_tokens(1, 2, mc.vocab, Rng(3, 1));
  // Every rank throws the same error before any collective (the attention runs before the MoE).
  EXPECT_THROW(model.decode(two, 0), Error);  // no cache yet
  EXPECT_THROW(model.start_cache(1, mc.seq_len + 1), Error);
  model.start_cache(1, 3);
  EXPECT_THROW(model.decode(two, 1), Error);  // the cache holds 0 positions, not 1
  model.decode(two, 0);
  EXPECT_THROW(model.decode(two, 2), Error);  // 2 + 2 > max_len 3
  const Tensor one = random_tokens(1, 1, mc.vocab, Rng(3, 2));
  model.decode(one, 2);
  EXPECT_THROW(model.decode(one, 3), Error);  // full
  model.start_cache(1, 3);                    // a new cache starts at 0 again
  const Tensor logits = model.decode(two, 0);
  EXPECT_EQ(logits.shape(), std::vector<int64_t>({2, mc.vocab}));
}

}  // namespace
}  // namespace moerun::testing
