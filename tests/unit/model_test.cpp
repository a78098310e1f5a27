// The whole model: every named parameter's gradient against central differences of the loss,
// the loss of forward then backward against forward alone, the loss at init, named parameters in
// flat buffers, gradient accumulation, saved activations, and config errors that name the option.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "layers/model.h"
#include "runtime/check.h"
#include "runtime/rng.h"
#include "tests/common/expect_close.h"
#include "tests/common/test_seed.h"

namespace moerun {
namespace {

using testing::TestSeed;

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab = 11;
  c.hidden = 8;
  c.layers = 2;
  c.first_k_dense = 1;  // block 0 dense, block 1 MoE
  c.heads = 2;
  c.seq_len = 5;
  c.dense_ffn = 12;
  c.moe.hidden = 8;
  c.moe.routed_experts = 4;
  c.moe.top_k = 2;
  c.moe.expert_width = 4;
  c.moe.shared_experts = 1;
  c.moe.score_fn = ScoreFn::kSoftmax;
  return c;
}

std::vector<int32_t> random_ids(int64_t n, int64_t V, Rng& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& v : ids) v = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(V));
  return ids;
}

Tensor ids_tensor(std::span<const int32_t> ids, int64_t n_seq) {
  return Tensor::from_host(ids, {n_seq, static_cast<int64_t>(ids.size()) / n_seq});
}

double forward_loss(Model& m, std::span<const int32_t> tokens, std::span<const int32_t> targets,
                    int64_t n_seq) {
  return m.forward(ids_tensor(tokens, n_seq), ids_tensor(targets, n_seq));
}

double forward_backward(Model& m, std::span<const int32_t> tokens, std::span<const int32_t> targets,
                        int64_t n_seq) {
  const double loss = forward_loss(m, tokens, targets, n_seq);
  m.backward();
  return loss;
}

// The experts every MoE block chose in the last forward, to spot routing flips.
std::vector<int32_t> routing_of(Model& m) {
  std::vector<int32_t> out;
  for (MoELayer* moe : m.moe_layers()) {
    const Tensor& idx = moe->routing().topk_idx;
    out.insert(out.end(), idx.data<int32_t>(), idx.data<int32_t>() + idx.numel());
  }
  return out;
}

struct GradCase {
  std::string name;
  ScoreFn score = ScoreFn::kSoftmax;
  TopkNorm norm = TopkNorm::kNone;
  double scale = 1.0;
  Balance balance = Balance::kLossFree;
  double a1 = 0, aseq = 0;
};

void PrintTo(const GradCase& c, std::ostream* os) {
  *os << c.name;
}

class ModelGradCheck : public ::testing::TestWithParam<GradCase> {};

TEST_P(ModelGradCheck, EveryParameterMatchesCentralDifferences) {
  const GradCase& k = GetParam();
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  ModelConfig cfg = tiny_config();
  cfg.moe.score_fn = k.score;
  cfg.moe.topk_norm = k.norm;
  cfg.moe.routed_scaling_factor = k.scale;
  cfg.moe.balance = k.balance;
  cfg.moe.aux_alpha1 = k.a1;
  cfg.moe.aux_seq_alpha = k.aseq;
  // Large weights so every path carries signal well above fp32 rounding of the loss, and
  // router logits have margins far wider than a perturbation.
  cfg.init_std = 0.4f;
  Model model(cfg, self);
  const TestSeed seed(1234);
  model.init(seed);
  Rng rng(mix64(seed));  // inputs from a stream of their own
  // Norm weights away from 1 and a nonzero loss-free bias (selection only) so neither is a
  // special case that hides an error.
  for (NamedParam& p : model.params())
    if (!p.is_matrix)
      for (float& v : p.value->span<float>()) v = static_cast<float>(1.0 + 0.3 * rng.normal());
  if (k.balance == Balance::kLossFree)
    for (MoELayer* moe : model.moe_layers())
      for (float& v : moe->params().bias.span<float>()) v = static_cast<float>(0.05 * rng.normal());

  const int64_t n_seq = 2, N = n_seq * cfg.seq_len;
  const std::vector<int32_t> tokens = random_ids(N, cfg.vocab, rng);
  const std::vector<int32_t> targets = random_ids(N, cfg.vocab, rng);

  model.zero_grad();
  const double loss = forward_backward(model, tokens, targets, n_seq);
  ASSERT_TRUE(std::isfinite(loss));
  const std::vector<int32_t> routing = routing_of(model);
  if (k.a1 > 0 || k.aseq > 0) {
    EXPECT_GT(model.moe_layers()[0]->stats().aux_loss, 0.0);
  }

  // h balances truncation (1e-2 leaves ~3% curvature error through the norms) against fp32
  // rounding of the loss (~1e-7 / 2h); the worst entries then use about half the tolerance.
  // This margin holds for the fixed seed only: with other seeds (MOERUN_TEST_SEED) the
  // curvature through attention at init_std 0.4 can reach thousands of times the slope on a
  // few entries (errors shrinking as h^2: 7% at h = 3e-3, 0.7% at 1e-3), and routing flips can
  // pass the 1/20 limit below.
  const float h = 3e-3f;
  const double atol = 1e-4, rtol = 5e-3;
  int64_t checked = 0, skipped = 0;
  for (NamedParam& p : model.params()) {
    const int64_t n = p.value->numel();
    // Every entry of these small tensors; the sampled variant is there for larger configs.
    const int64_t samples = std::min<int64_t>(n, 400);
    std::vector<int64_t> index;
    std::vector<double> analytic, numeric;
    for (int64_t s = 0; s < samples; ++s) {
      const int64_t i =
          samples == n ? s : static_cast<int64_t>(rng.next_u64() % static_cast<uint64_t>(n));
      float* w = p.value->f32() + i;
      const float orig = *w;
      const float up = orig + h, down = orig - h;
      *w = up;
      const double lp = forward_loss(model, tokens, targets, n_seq);
      const bool flip_up = routing_of(model) != routing;
      *w = down;
      const double lm = forward_loss(model, tokens, targets, n_seq);
      const bool flip_down = routing_of(model) != routing;
      *w = orig;
      // Routing is piecewise constant: a difference across a flip measures the jump, not the
      // derivative, so those entries say nothing about the gradient.
      if (flip_up || flip_down) {
        ++skipped;
        continue;
      }
      index.push_back(i);
      analytic.push_back(p.grad->f32()[i]);
      numeric.push_back((lp - lm) / (static_cast<double>(up) - static_cast<double>(down)));
    }
    checked += static_cast<int64_t>(index.size());
    const testing::Closeness c = testing::closeness(analytic, numeric, atol, rtol);
    testing::expect_close(c, p.name + " (analytic vs central differences)", atol, rtol, index);
    RecordProperty(p.name + "_worst", std::to_string(c.ratio));
  }
  RecordProperty("checked", std::to_string(checked));
  RecordProperty("skipped", std::to_string(skipped));
  // A handful of flips is expected; many would mean the check tested almost nothing.
  EXPECT_LE(skipped, checked / 20)
      << "routing flipped on " << skipped << " of " << checked + skipped << " perturbations";
  // The differences must leave the model as they found it.
  EXPECT_EQ(forward_loss(model, tokens, targets, n_seq), loss);
}

INSTANTIATE_TEST_SUITE_P(
    ModelRouting, ModelGradCheck,
    ::testing::Values(GradCase{"softmax"},
                      GradCase{"sigmoid_norm", ScoreFn::kSigmoid, TopkNorm::kNormalize, 2.5},
                      GradCase{"aux", ScoreFn::kSoftmax, TopkNorm::kNone, 1.0, Balance::kAux, 0.1},
                      GradCase{"aux_seq", ScoreFn::kSigmoid, TopkNorm::kNone, 1.0, Balance::kAux,
                               0.1, 0.05}),
    [](const ::testing::TestParamInfo<GradCase>& p) { return p.param.name; });

TEST(Model, ForwardBackwardReturnsTheForwardLossAndInitLossIsLogVocab) {
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  ModelConfig cfg = tiny_config();
  cfg.vocab = 50;
  cfg.moe.aux_alpha1 = 1e-3;
  cfg.moe.balance = Balance::kAux;
  Model model(cfg, self);
  const TestSeed seed(7);
  model.init(seed);
  Rng rng(mix64(seed));
  const int64_t n_seq = 3;
  const std::vector<int32_t> tokens = random_ids(n_seq * cfg.seq_len, cfg.vocab, rng);
  const std::vector<int32_t> targets = random_ids(n_seq * cfg.seq_len, cfg.vocab, rng);
  const double eval = forward_loss(model, tokens, targets, n_seq);
  model.zero_grad();
  const double train = forward_backward(model, tokens, targets, n_seq);
  EXPECT_EQ(train, eval);
  // Tiny weights make the logits nearly 0 and the softmax nearly uniform. Near balance the aux
  // loss is about alpha1 * sum_i f_i P_i ~ alpha1 (f_i ~ 1, softmax P_i ~ 1/E): 1e-3 here.
  // Logit std ~ init_std * sqrt(H) = 0.017 moves a mean over 15 tokens by a few 1e-3.
  EXPECT_NEAR(train, std::log(static_cast<double>(cfg.vocab)), 2e-2);
  // A second call with the same inputs accumulates twice the gradient (up to the rounding of
  // adding row contributions onto a nonzero sum).
  std::vector<std::vector<float>> first;
  for (NamedParam& p : model.params())
    first.emplace_back(p.grad->f32(), p.grad->f32() + p.grad->numel());
  forward_backward(model, tokens, targets, n_seq);
  size_t j = 0;
  for (NamedParam& p : model.params()) {
    const std::vector<float>& g = first[j++];
    double norm = 0.0;
    for (int64_t i = 0; i < p.grad->numel(); ++i) {
      const double want = 2.0 * g[static_cast<size_t>(i)];
      EXPECT_NEAR(p.grad->f32()[i], want, 1e-5 * std::abs(want) + 1e-12)
          << p.name << "[" << i << "]";
      norm += std::abs(g[static_cast<size_t>(i)]);
    }
    EXPECT_GT(norm, 0.0) << p.name << " got no gradient";
  }
  model.zero_grad();
  for (NamedParam& p : model.params())
    for (float v : p.grad->span<float>()) ASSERT_EQ(v, 0.0f) << p.name;
}

// Sequences do not see each other (attention within a sequence, positions restarting at 0,
// dropless routing per token): a batch's loss is the mean of its sequences' losses.
TEST(Model, SequencesAreIndependent) {
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  ModelConfig cfg = tiny_config();
  cfg.init_std = 0.3f;
  Model model(cfg, self);
  const TestSeed seed(11);
  model.init(seed);
  Rng rng(mix64(seed));
  const int64_t n_seq = 3, T = cfg.seq_len;
  const std::vector<int32_t> tokens = random_ids(n_seq * T, cfg.vocab, rng);
  const std::vector<int32_t> targets = random_ids(n_seq * T, cfg.vocab, rng);
  const double batch = forward_loss(model, tokens, targets, n_seq);
  double sum = 0.0;
  for (int64_t q = 0; q < n_seq; ++q)
    sum += forward_loss(model, std::span(tokens).subspan(static_cast<size_t>(q * T), T),
                        std::span(targets).subspan(static_cast<size_t>(q * T), T), 1);
  EXPECT_NEAR(batch, sum / static_cast<double>(n_seq), 1e-5);
}

TEST(Model, NamedParametersCoverEveryTensorOnce) {
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  ModelConfig cfg = tiny_config();
  Model model(cfg, self);
  std::set<std::string> names;
  std::set<const Tensor*> tensors;
  int64_t total = 0;
  for (const NamedParam& p : model.params()) {
    EXPECT_TRUE(names.insert(p.name).second) << "duplicate " << p.name;
    EXPECT_TRUE(tensors.insert(p.value).second) << "shared tensor " << p.name;
    EXPECT_EQ(p.value->shape(), p.grad->shape()) << p.name;
    EXPECT_EQ(p.is_expert, p.name == "layers.1.moe.w13" || p.name == "layers.1.moe.w2") << p.name;
    EXPECT_EQ(p.is_matrix, p.value->ndim() >= 2) << p.name;
    total += p.value->numel();
  }
  const std::set<std::string> expected = {"embed.weight",
                                          "layers.0.attn_norm.weight",
                                          "layers.0.attn.wqkv",
                                          "layers.0.attn.wo",
                                          "layers.0.ffn_norm.weight",
                                          "layers.0.ffn.w13",
                                          "layers.0.ffn.w2",
                                          "layers.1.attn_norm.weight",
                                          "layers.1.attn.wqkv",
                                          "layers.1.attn.wo",
                                          "layers.1.ffn_norm.weight",
                                          "layers.1.moe.gate",
                                          "layers.1.moe.w13",
                                          "layers.1.moe.w2",
                                          "layers.1.moe.shared_w13",
                                          "layers.1.moe.shared_w2",
                                          "norm.weight",
                                          "lm_head.weight"};
  EXPECT_EQ(names, expected);
  const int64_t V = 11, H = 8, Fd = 12, E = 4, F = 4, S = 1;
  const int64_t attn = 2 * H + 4 * H * H;
  const int64_t expect_total =
      2 * V * H + H + 2 * attn + 3 * H * Fd + E * H + E * 3 * H * F + 3 * H * S * F;
  EXPECT_EQ(total, expect_total);
  EXPECT_EQ(model.moe_layers().size(), 1u);
}

// Parameters and gradients are views into two flat buffers: dense tensors first, then the expert
// ones, each on a 64-byte boundary, none overlapping; zero_grad clears the whole buffer.
TEST(Model, ParametersAndGradientsLiveInFlatBuffers) {
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  ModelConfig cfg = tiny_config();
  Model model(cfg, self);
  model.init(9);
  const float* p0 = model.param_buffer().f32();
  const float* g0 = model.grad_buffer().f32();
  const int64_t total = model.param_buffer().numel(), dense = model.dense_grads().numel();
  EXPECT_EQ(model.grad_buffer().numel(), total);
  EXPECT_EQ(model.expert_grads().numel(), total - dense);
  EXPECT_EQ(model.expert_grads().f32(), g0 + dense);
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const NamedParam& p : model.params()) {
    const int64_t off = p.value->f32() - p0;
    EXPECT_EQ(p.grad->f32() - g0, off) << p.name;
    EXPECT_EQ(off % 16, 0) << p.name;
    if (p.is_expert)
      EXPECT_GE(off, dense) << p.name;
    else
      EXPECT_LE(off + p.value->numel(), dense) << p.name;
    EXPECT_LE(off + p.value->numel(), total) << p.name;
    ranges.emplace_back(off, off + p.value->numel());
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
  // Writes through a parameter reach the buffer, and a step's gradients land in the other one.
  model.params()[0].value->f32()[3] = 42.0f;
  EXPECT_EQ(p0[3], 42.0f);
  Rng rng(4);
  const std::vector<int32_t> tokens = random_ids(2 * cfg.seq_len, cfg.vocab, rng);
  forward_backward(model, tokens, tokens, 2);
  double sq = 0.0;
  for (float v : model.grad_buffer().span<float>()) sq += static_cast<double>(v) * v;
  EXPECT_GT(sq, 0.0);
  model.zero_grad();
  for (float v : model.grad_buffer().span<float>()) ASSERT_EQ(v, 0.0f);
}

// Forward and backward are two calls: forward alone leaves the gradients alone, backward uses
// the last forward's saved activations, and dropped activations make backward fail loudly.
TEST(Model, BackwardUsesTheLastForward) {
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  ModelConfig cfg = tiny_config();
  cfg.init_std = 0.3f;
  Model model(cfg, self);
  model.init(13);
  Rng rng(14);
  const int64_t n_seq = 2, N = n_seq * cfg.seq_len;
  const std::vector<int32_t> a = random_ids(N, cfg.vocab, rng), b = random_ids(N, cfg.vocab, rng);
  model.zero_grad();
  forward_backward(model, a, a, n_seq);
  const std::vector<float> want(model.grad_buffer().f32(),
                                model.grad_buffer().f32() + model.grad_buffer().numel());
  model.zero_grad();
  forward_loss(model, b, b, n_seq);
  for (float v : model.grad_buffer().span<float>()) ASSERT_EQ(v, 0.0f);
  forward_loss(model, a, a, n_seq);
  model.backward();
  const auto got = model.grad_buffer().span<float>();
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << i;
  model.drop_saved();
  EXPECT_THROW(model.backward(), Error);
}

TEST(Model, InitIsDeterministicAndDrawsNormWeightsAsOne) {
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  ModelConfig cfg = tiny_config();
  Model a(cfg, self), b(cfg, self);
  const TestSeed seed(5);
  a.init(seed);
  b.init(seed);
  std::vector<NamedParam> pa = a.params(), pb = b.params();
  for (size_t i = 0; i < pa.size(); ++i) {
    const auto va = pa[i].value->span<float>(), vb = pb[i].value->span<float>();
    EXPECT_TRUE(std::equal(va.begin(), va.end(), vb.begin())) << pa[i].name;
    if (!pa[i].is_matrix) {
      for (float v : va) EXPECT_EQ(v, 1.0f) << pa[i].name;
    } else {
      double sq = 0.0;
      for (float v : va) sq += static_cast<double>(v) * v;
      const double rms = std::sqrt(sq / static_cast<double>(va.size()));
      EXPECT_GT(rms, 0.5 * cfg.init_std) << pa[i].name;
      EXPECT_LT(rms, 1.5 * cfg.init_std) << pa[i].name;
    }
  }
  // Different tensors draw from different streams.
  EXPECT_NE(a.params()[0].value->f32()[0], a.params().back().value->f32()[0]);
}

TEST(Model, BadConfigsThrowNamingTheOption) {
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  struct Bad {
    std::string option;
    void (*mutate)(ModelConfig&);
  };
  const std::vector<Bad> bad = {
      {"--vocab", [](ModelConfig& c) { c.vocab = 0; }},
      {"--hidden", [](ModelConfig& c) { c.hidden = 0; }},
      {"--layers", [](ModelConfig& c) { c.layers = 0; }},
      {"--heads", [](ModelConfig& c) { c.heads = 0; }},
      {"--heads", [](ModelConfig& c) { c.heads = 3; }},  // 8 % 3 != 0
      {"--heads", [](ModelConfig& c) { c.heads = 8; }},  // head dim 1, odd
      {"--seq-len", [](ModelConfig& c) { c.seq_len = 0; }},
      {"--first-k-dense", [](ModelConfig& c) { c.first_k_dense = 3; }},
      {"--first-k-dense", [](ModelConfig& c) { c.first_k_dense = -1; }},
      {"--dense-ffn", [](ModelConfig& c) { c.dense_ffn = 0; }},
      {"--hidden", [](ModelConfig& c) { c.moe.hidden = 16; }},
      {"--top-k", [](ModelConfig& c) { c.moe.top_k = 5; }},  // from MoEConfig
  };
  for (const Bad& b : bad) {
    ModelConfig cfg = tiny_config();
    b.mutate(cfg);
    try {
      Model m(cfg, self);
      ADD_FAILURE() << "no error for a bad " << b.option;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(b.option), std::string::npos)
          << "message '" << e.what() << "' does not name " << b.option;
    }
  }
  // All-dense models need no MoE options; --dense-ffn is unused without dense blocks.
  ModelConfig dense = tiny_config();
  dense.first_k_dense = dense.layers;
  dense.moe = MoEConfig{};
  EXPECT_NO_THROW(dense.validate(1));
  ModelConfig moe_only = tiny_config();
  moe_only.first_k_dense = 0;
  moe_only.dense_ffn = 0;
  EXPECT_NO_THROW(moe_only.validate(1));
}

}  // namespace
}  // namespace moerun
