// The whole model (one rank) against PyTorch float64 autograd: loss and every parameter
// gradient for given weights and tokens, from model_tiny.bin (written by make_model_golden.py).
// Logits are recomputed from Model::final_hidden() (the head is fused with the loss).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "layers/lm_head.h"
#include "layers/model.h"
#include "tests/common/expect_close.h"
#include "tests/common/golden_file.h"

namespace moerun::testing {
namespace {

constexpr const char* kFile = "model_tiny.bin";

// fp32 through two blocks (H = 16, 12 tokens) against float64: each value carries the rounding
// of a chain of sums of 16-64 terms, ~1e-7..1e-6 relative. Logits (|.| up to 3.5) are up to
// 1.7e-6 off, gradient entries (|.| up to ~1) up to 4e-7; atol covers entries near 0 whose terms
// cancel. Measured worst: 0.21 of the allowance (dembed).
constexpr double kAtol = 1e-6, kRtol = 1e-4;

ModelConfig config_of(const GoldenFile& g) {
  ModelConfig c;
  c.vocab = g.i64("config.vocab");
  c.hidden = g.i64("config.hidden");
  c.layers = g.i64("config.layers");
  c.heads = g.i64("config.heads");
  c.seq_len = g.i64("config.seq_len");
  c.first_k_dense = g.i64("config.first_k_dense");
  c.dense_ffn = g.i64("config.dense_ffn");
  c.norm_eps = static_cast<float>(g.f64("config.norm_eps"));
  c.rope_theta = g.f64("config.rope_theta");
  MoEConfig& m = c.moe;
  m.hidden = c.hidden;
  m.routed_experts = g.i64("config.E");
  m.top_k = g.i64("config.K");
  m.expert_width = g.i64("config.F");
  m.shared_experts = g.i64("config.S");
  m.score_fn = g.i64("config.score_fn") == 0 ? ScoreFn::kSoftmax : ScoreFn::kSigmoid;
  m.topk_norm = g.i64("config.topk_norm") == 0 ? TopkNorm::kNone : TopkNorm::kNormalize;
  m.n_group = g.i64("config.n_group");
  m.topk_group = g.i64("config.topk_group");
  m.group_score = g.i64("config.group_score") == 0 ? GroupScore::kMax : GroupScore::kTop2Sum;
  m.routed_scaling_factor = g.f64("config.routed_scaling_factor");
  m.balance = Balance::kLossFree;  // the reference has no auxiliary loss
  return c;
}

// Copies the file's entry into t, whose shape (the C++ layout) it must have.
void load(const GoldenFile& g, const std::string& name, Tensor& t) {
  const Tensor src = g.f32(name);
  ASSERT_EQ(src.shape(), t.shape())
      << name << ": file " << src.shape_str() << ", model " << t.shape_str();
  std::memcpy(t.f32(), src.f32(), t.nbytes());
}

// The shape as stored, then every element through expect_close.
void expect_golden(const std::string& what, const Tensor& got, const GoldenEntry& want, double atol,
                   double rtol) {
  ASSERT_EQ(got.shape(), want.shape) << what << ": shape " << got.shape_str();
  expect_close(got, want.values, atol, rtol, what);
}

TEST(ModelGolden, FileCoversEveryParameter) {
  const GoldenFile g(golden_path(kFile));
  EXPECT_EQ(g.version(), 1u);
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  Model model(config_of(g), self);
  for (const NamedParam& p : model.params()) {
    ASSERT_TRUE(g.has(p.name)) << "parameter " << p.name << " is missing from " << kFile;
    ASSERT_TRUE(g.has("d" + p.name)) << "gradient d" << p.name << " is missing from " << kFile;
    EXPECT_EQ(g.entry(p.name).shape, p.value->shape()) << p.name;
    EXPECT_EQ(g.entry("d" + p.name).shape, p.grad->shape()) << "d" << p.name;
  }
  for (size_t i = 0; i < model.moe_layers().size(); ++i) {
    const int64_t l = model.config().first_k_dense + static_cast<int64_t>(i);
    EXPECT_TRUE(g.has("layers." + std::to_string(l) + ".moe.bias")) << "MoE layer " << l;
  }
  for (const char* name : {"tokens", "targets", "logits", "loss"}) EXPECT_TRUE(g.has(name)) << name;
}

TEST(ModelGolden, LossAndGradientsMatchPyTorch) {
  const GoldenFile g(golden_path(kFile));
  const ModelConfig cfg = config_of(g);
  const int64_t n_seq = g.i64("config.n_seq");
  Comm self = Comm::world().split(Comm::world().rank(), 0);
  Model model(cfg, self);
  model.init(7);  // every value is overwritten below; init only makes a missed one visible
  for (const NamedParam& p : model.params()) {
    ASSERT_TRUE(g.has(p.name)) << p.name;
    load(g, p.name, *p.value);
  }
  const std::vector<MoELayer*> moe = model.moe_layers();
  for (size_t i = 0; i < moe.size(); ++i) {
    const int64_t l = cfg.first_k_dense + static_cast<int64_t>(i);
    load(g, "layers." + std::to_string(l) + ".moe.bias", moe[i]->params().bias);
  }
  const Tensor tokens = g.i32("tokens");
  const Tensor targets = g.i32("targets");
  ASSERT_EQ(tokens.shape(), (std::vector<int64_t>{n_seq, cfg.seq_len}));
  ASSERT_EQ(targets.shape(), tokens.shape());

  model.zero_grad();
  const double loss = model.forward(tokens, targets);
  model.backward();
  const double want = g.f64("loss");
  EXPECT_NEAR(loss, want, 1e-6 + 1e-5 * std::abs(want)) << "loss";
  {
    const Tensor& xf = model.final_hidden();
    const Tensor logits = lm_head_forward(xf, model.lm_head());
    expect_golden("logits", logits, g.entry("logits"), kAtol, kRtol);
  }
  for (const NamedParam& p : model.params())
    expect_golden("d" + p.name, *p.grad, g.entry("d" + p.name), kAtol, kRtol);
}

}  // namespace
}  // namespace moerun::testing
