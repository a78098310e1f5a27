// Trainer: a tiny model on a small generated dataset, at whatever world size mpiexec gives
// (1, 2, 4): the same seed gives the same losses bit for bit; the loss does not depend on the
// EP size (with MHA and with the tiny-mla / tiny-mla-v3 presets' attention and routing), nor
// the parameters after a step on how the global batch is split over ranks and micro-batches
// (down to one rank on its own); the loss falls below the unigram entropy of the data; bad input
// is a ConfigError naming the option on every rank before training starts.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "comm/topology.h"
#include "io/prepare.h"
#include "io/token_loader.h"
#include "jobs/train_options.h"
#include "jobs/trainer.h"
#include "runtime/check.h"
#include "tests/common/expect_close.h"
#include "tests/common/mpi_test.h"
#include "tests/common/trainer_fixture.h"

namespace moerun::testing {
namespace {

namespace fs = std::filesystem;

// A world of this rank alone (every rank runs its own): the single-rank reference of a run.
Topology self_topology() {
  Topology t;
  const Comm world = Comm::world();
  t.world = world.split(world.rank(), 0);
  t.ep = t.world.dup();
  t.edp = t.world.dup();
  t.node = t.world.dup();
  t.ep_size = 1;
  t.edp_size = 1;
  return t;
}

class TrainerTest : public SuiteDatasetTest<TrainerTest> {
 public:
  static constexpr const char* kSuite = "trainer-test";
};

TEST_F(TrainerTest, SameSeedGivesBitwiseIdenticalLosses) {
  TrainConfig ca = parse(tiny_args(data_, run_dir("a")));
  TrainConfig cb = parse(tiny_args(data_, run_dir("b")));
  Topology ta = world_topology(ca), tb = world_topology(cb);
  Trainer a(ca, ta), b(cb, tb);
  // Interleaved, so that the two trainers could not pass for one through hidden shared state.
  bool same = true;
  for (int s = 0; s < 3; ++s) {
    const StepResult ra = a.step(), rb = b.step();
    if (ra.loss != rb.loss || ra.grad_norm != rb.grad_norm) {
      ADD_FAILURE() << "step " << s << ": loss " << ra.loss << " vs " << rb.loss << ", grad norm "
                    << ra.grad_norm << " vs " << rb.grad_norm;
      same = false;
    }
    if (!std::isfinite(ra.loss)) {
      ADD_FAILURE() << "step " << s << ": loss " << ra.loss;
      same = false;
    }
  }
  MOERUN_EXPECT_ALL(Comm::world(), same);
  // A different seed is a different run.
  TrainConfig cc = parse(with(tiny_args(data_, run_dir("c")), {"--seed", "2"}));
  Topology tc = world_topology(cc);
  Trainer c(cc, tc);
  const StepResult r = c.step();
  TrainConfig cd = parse(tiny_args(data_, run_dir("d")));
  Topology td = world_topology(cd);
  Trainer d(cd, td);
  EXPECT_NE(r.loss, d.step().loss);
}

// The EP-invariance of the whole model, for MHA and for the MLA presets' attention and routing.
class TrainerAttentionTest : public TrainerTest,
                             public ::testing::WithParamInterface<TinyAttention> {};

TEST_P(TrainerAttentionTest, LossDoesNotDependOnEpSize) {
  const int W = world_size();
  if (W == 1) GTEST_SKIP() << "needs 2 or 4 ranks: at one rank EP is 1 only";
  // Per EP size: the loss of 5 steps, then the validation loss; and the load imbalance
  // (MaxVio_batch of each step, MaxVio_global of the evaluation) from the world's counts.
  std::vector<double> ref_loss, ref_vio;
  for (int ep : {1, 2, 4}) {
    if (W % ep != 0) continue;
    TrainConfig cfg = parse(with(tiny_args(data_, run_dir("ep" + std::to_string(ep))),
                                 {"--ep-size", std::to_string(ep)}) +
                            GetParam().args);
    Topology topo = world_topology(cfg);
    ASSERT_EQ(topo.ep_size, ep);
    Trainer t(cfg, topo);
    std::vector<double> loss, vio;
    for (int s = 0; s < 5; ++s) {
      const StepResult r = t.step();
      loss.push_back(r.loss);
      vio.insert(vio.end(), r.maxvio_batch.begin(), r.maxvio_batch.end());
    }
    const EvalResult ev = t.evaluate();
    loss.push_back(ev.val_loss);
    vio.insert(vio.end(), ev.maxvio_global.begin(), ev.maxvio_global.end());
    if (ep == 1) {
      ref_loss = loss;
      ref_vio = vio;
      continue;
    }
    bool ok = vio.size() == ref_vio.size() && !vio.empty();
    // The same sums in another order differ by ~1e-10 relative; the room above that is for a
    // routing near-tie that rounding flips in a later step (see MaxVio below).
    ok = expect_close(loss, ref_loss, 0.0, 1e-4,
                      "losses of 5 steps, then the validation loss, at EP " + std::to_string(ep) +
                          " (reference: EP 1)") &&
         ok;
    // The first step routes the same tokens with the same weights: the same counts. Later steps
    // may flip a near-tie after the weights moved apart by rounding: one (token, expert) pair
    // moves MaxVio by E / (tokens x K) = 1/64 here.
    for (size_t i = 0; ok && i < vio.size(); ++i) {
      const double tol = i == 0 ? 0.0 : 2.0 / 64;
      if (!(std::abs(vio[i] - ref_vio[i]) <= tol)) {
        ADD_FAILURE() << "MaxVio #" << i << " at EP " << ep << ": " << vio[i]
                      << ", EP 1: " << ref_vio[i];
        ok = false;
      }
    }
    MOERUN_EXPECT_ALL(Comm::world(), ok) << " (EP " << ep << " vs EP 1)";
  }
}

INSTANTIATE_TEST_SUITE_P(Attention, TrainerAttentionTest, ::testing::ValuesIn(tiny_attentions()),
                         tiny_attention_name);

// Parameters (dense ones whole, experts as this rank's slice) and LFB biases of a trainer.
struct Snapshot {
  std::vector<std::string> names;
  std::vector<std::vector<float>> values, grads;  // grads: the mean over the global batch
  std::vector<std::vector<float>> biases;         // per MoE layer, all E experts
};

// With `full_experts` false the expert tensors are this rank's E_local experts; with it true
// (a single-rank trainer) they are cut to the slice [e0, e0 + e_local) of the experts.
Snapshot snapshot(Trainer& t, int64_t e0, int64_t e_local, bool full_experts) {
  Snapshot s;
  const int64_t n_micro = t.config().global_batch / t.config().micro_batch;  // world x micro
  const int64_t E = t.config().model.moe.routed_experts;
  for (const NamedParam& p : t.model().params()) {
    std::span<const float> v = p.value->span<float>(), g = p.grad->span<float>();
    if (p.is_expert && full_experts) {
      const size_t per = v.size() / static_cast<size_t>(E);
      v = v.subspan(static_cast<size_t>(e0) * per, static_cast<size_t>(e_local) * per);
      g = g.subspan(static_cast<size_t>(e0) * per, static_cast<size_t>(e_local) * per);
    }
    s.names.push_back(p.name);
    s.values.emplace_back(v.begin(), v.end());
    std::vector<float> mean(g.begin(), g.end());
    for (float& x : mean) x /= static_cast<float>(n_micro);
    s.grads.push_back(std::move(mean));
  }
  for (MoELayer* l : t.model().moe_layers()) {
    std::span<const float> b = l->params().bias.span<float>();
    s.biases.emplace_back(b.begin(), b.end());
  }
  return s;
}

// Compares b against the reference a; reports the worst element of each tensor that fails.
bool same_params(const Snapshot& a, const Snapshot& b, const std::string& what) {
  if (a.names != b.names || a.biases.size() != b.biases.size()) {
    ADD_FAILURE() << what << ": different parameter lists";
    return false;
  }
  bool ok = true;
  for (size_t i = 0; i < a.names.size(); ++i) {
    // Gradients: the same sums in another order (micro-batches, ranks, the all-reduce), a few
    // fp32 ulps of the summands: at most 3e-8 off over worlds 1, 2 and 4 (rtol alone covers all
    // but the entries near 0), under a fifth of the allowance.
    // Parameters: one AdamW step of ~lr from the same start; the floor covers elements whose
    // gradient is at the rounding level (the first Adam step divides it by itself).
    ok = expect_close(b.grads[i], a.grads[i], 2e-8, 1e-4, what + ": gradient of " + a.names[i]) &&
         ok;
    ok = expect_close(b.values[i], a.values[i], 1e-6, 1e-5, what + ": " + a.names[i]) && ok;
  }
  for (size_t l = 0; l < a.biases.size(); ++l)
    if (a.biases[l] != b.biases[l]) {
      ADD_FAILURE() << what << ": the loss-free balancing bias of MoE layer " << l << " differs";
      ok = false;
    }
  return ok;
}

TEST_F(TrainerTest, ParametersAfterAStepDoNotDependOnTheBatchSplit) {
  // G = 8 sequences per step: at world W, one micro-batch of G/W per rank, or two of G/(2W)
  // (gradient accumulation); and one rank on its own with two micro-batches of G/2. Each at
  // EP 1 (experts replicated) and at EP = W (experts sharded).
  const int W = world_size(), me = world_rank();
  const int64_t G = 8;
  for (int ep : W == 1 ? std::vector<int>{1} : std::vector<int>{1, W}) {
    const std::string tag = "ep" + std::to_string(ep);
    auto cfg_for = [&](const std::string& name, int64_t micro, int ep_size) {
      return parse(
          with(tiny_args(data_, run_dir(name + "-" + tag)),
               {"--global-batch", std::to_string(G), "--micro-batch", std::to_string(micro),
                "--ep-size", std::to_string(ep_size), "--steps", "1", "--warmup-steps", "0"}));
    };
    TrainConfig c1 = cfg_for("one-micro", G / W, ep);
    Topology t1 = world_topology(c1);
    Trainer one(c1, t1);
    const int64_t e_local = c1.model.moe.routed_experts / ep, e0 = (me % ep) * e_local;
    const double loss_one = one.step().loss;
    const Snapshot s_one = snapshot(one, e0, e_local, false);

    TrainConfig c2 = cfg_for("two-micro", G / (2 * W), ep);
    Topology t2 = world_topology(c2);
    Trainer two(c2, t2);
    const double loss_two = two.step().loss;
    bool ok = same_params(s_one, snapshot(two, e0, e_local, false),
                          "world " + std::to_string(W) + " " + tag + ": 2 micro-batches per rank");
    ok = ok && std::abs(loss_two - loss_one) <= 1e-5 * std::abs(loss_one);
    MOERUN_EXPECT_ALL(Comm::world(), ok) << " (" << tag << ": one vs two micro-batches per rank, "
                                         << "losses " << loss_one << ", " << loss_two << ")";

    // The same step on one rank alone (every rank runs its own copy: no communication).
    TrainConfig c3 = cfg_for("single-rank-" + std::to_string(me), G / 2, 1);
    Topology t3 = self_topology();
    Trainer single(c3, t3);
    const double loss_single = single.step().loss;
    ok = same_params(snapshot(single, e0, e_local, true), s_one,
                     "world 1 vs world " + std::to_string(W) + " " + tag);
    ok = ok && std::abs(loss_single - loss_one) <= 1e-5 * std::abs(loss_single);
    MOERUN_EXPECT_ALL(Comm::world(), ok)
        << " (" << tag << ": world " << W << " vs one rank, losses " << loss_one << ", "
        << loss_single << ")";
  }
}

// Unigram entropy (nats) of the train split's tokens.
double unigram_entropy(const fs::path& data) {
  auto src = io::open_token_source(data.string(), io::Split::kTrain, 257);
  std::vector<int32_t> tokens(static_cast<size_t>(src->num_tokens()));
  src->read(0, tokens);
  std::vector<double> count(257, 0.0);
  for (int32_t t : tokens) count[static_cast<size_t>(t)] += 1.0;
  double h = 0.0;
  const double n = static_cast<double>(tokens.size());
  for (double c : count)
    if (c > 0) h -= c / n * std::log(c / n);
  return h;
}

TEST_F(TrainerTest, LossFallsBelowTheUnigramEntropy) {
  // 60 steps reach only ~3.7 nats against a unigram entropy of ~3.4 here, 100 ~3.1, 200 ~2.4
  // (the same at every world size); 200 steps of this model take ~2 s at 4 ranks on 2 cores.
  const int64_t kSteps = 200;
  const double h = unigram_entropy(data_);
  TrainConfig cfg =
      parse(with(tiny_args(data_, run_dir("run")),
                 {"--steps", std::to_string(kSteps), "--global-batch", "16", "--micro-batch",
                  std::to_string(16 / world_size()), "--warmup-steps", "5", "--lr", "3e-3"}));
  Topology topo = world_topology(cfg);
  Trainer t(cfg, topo);
  const double val0 = t.evaluate().val_loss;
  std::vector<double> loss;
  for (int64_t s = 0; s < kSteps; ++s) loss.push_back(t.step().loss);
  const double val1 = t.evaluate().val_loss;
  double last = 0.0;  // the mean of the last 5 steps: one step's batch is noisy
  for (size_t s = loss.size() - 5; s < loss.size(); ++s) last += loss[s] / 5.0;
  if (world_rank() == 0)
    std::printf(
        "[ info ] unigram entropy %.3f nats; train loss %.3f -> %.3f (last 5 mean); val "
        "loss %.3f -> %.3f\n",
        h, loss.front(), last, val0, val1);
  EXPECT_GT(loss.front(), h) << "the untrained model should be worse than unigram statistics";
  EXPECT_LT(last, h - 0.5) << "train loss " << loss.front() << " -> " << last << " after " << kSteps
                           << " steps; unigram entropy " << h;
  EXPECT_LT(val1, h - 0.5) << "validation loss " << val0 << " -> " << val1;
}

TEST_F(TrainerTest, BadInputIsAConfigErrorOnEveryRankBeforeTraining) {
  const int W = world_size();
  auto train = [](std::vector<std::string> extra) {
    return [extra] {
      TrainConfig cfg = parse(with(tiny_args(data_, run_dir("bad")), extra));
      Topology topo = world_topology(cfg);
      Trainer t(cfg, topo);
      t.step();  // not reached
    };
  };
  // A missing file, and a text file that is not a dataset.
  expect_config_error_everywhere(train({"--data", (root_ / "no-such.h5").string()}), "--data");
  if (world_rank() == 0) std::ofstream(root_ / "x.h5") << "this is not an HDF5 file\n";
  Comm::world().barrier();
  expect_config_error_everywhere(train({"--data", (root_ / "x.h5").string()}), "--data");
  expect_config_error_everywhere(train({"--data", (root_ / "x.h5").string()}), "x.h5");
  // The byte dataset holds ids up to 256: a vocabulary of 100 cannot hold them.
  expect_config_error_everywhere(train({"--vocab", "100"}), "vocab");
  expect_config_error_everywhere(train({"--vocab", "100"}), "100");
  // A sequence longer than the split.
  expect_config_error_everywhere(train({"--seq-len", "1000000"}), "--seq-len");
  // A global batch that ranks x micro-batch does not divide.
  if (W == 1)
    expect_config_error_everywhere(train({"--global-batch", "8", "--micro-batch", "3"}),
                                   "--global-batch");
  else
    expect_config_error_everywhere(
        train({"--global-batch", std::to_string(W + 1), "--micro-batch", "1"}), "--global-batch");
  // A --config file that does not exist.
  expect_config_error_everywhere(
      [] {
        std::vector<std::string> args = {"train", "--config", (root_ / "nonexistent.ini").string()};
        std::vector<char*> argv;
        for (std::string& a : args) argv.push_back(a.data());
        TrainConfig cfg;
        parse_train_config(static_cast<int>(argv.size()), argv.data(), cfg, false);
      },
      "--config");
  // None of them started a run: no metrics were written.
  EXPECT_FALSE(fs::exists(run_dir("bad") / "metrics.jsonl"));
}

}  // namespace
}  // namespace moerun::testing
