// ZeRO-1 (--zero 1): a tiny model on a small generated dataset, at whatever world size mpiexec
// gives (1, 2, 4), at every EP size that divides it (so that the expert moments are sharded over
// expert-DP groups of 1 to W ranks).
//   - The losses and gradient norms of 10 steps equal the unsharded optimizer's to 1e-6 relative,
//     and so do the checkpoints they save (parameters and moments, 1e-4 of each tensor's largest
//     value). Not bitwise: the reduce-scatter sums the ranks' gradients in another order than
//     the all-reduce (and the norm adds the squares shard by shard); at 2 ranks they happen to be
//     bitwise equal (a + b in either order).
//   - The AdamW moments a rank holds: exactly the even shards of the model's flat dense region
//     (over the world) and expert region (over the expert-DP group); over the world they add up
//     to one copy of each region; so each rank holds ~1/DP of what --zero 0 holds.
//   - Checkpoints: the same tensors whatever --zero and the layout. Saved with ZeRO-1 at world W
//     (EP < W, experts sharded too), resumed with ZeRO-1 and without on groups of W/2 ranks; saved
//     without ZeRO on a group, resumed with ZeRO-1 by the whole world. Every tensor survives bit
//     for bit (the resumed trainer saves again and the CRC32s match) and the losses of the
//     continued run agree with an uninterrupted one to 1e-5 relative.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "comm/grad_sync.h"
#include "comm/topology.h"
#include "io/checkpoint.h"
#include "io/checkpoint_stream.h"
#include "io/prepare.h"
#include "jobs/checkpoint_schema.h"
#include "jobs/train_options.h"
#include "jobs/trainer.h"
#include "layers/model_plan.h"
#include "runtime/check.h"
#include "tests/common/mpi_test.h"
#include "tests/common/trainer_fixture.h"

namespace moerun::testing {
namespace {

namespace fs = std::filesystem;

// The world cut into groups of `size` consecutive ranks, each a world of its own with EP `ep`
// inside it (expert-DP groups of size / ep ranks), as Topology::create would build it.
Topology group_topology(int size, int ep, TrainConfig& cfg) {
  const Comm world = Comm::world();
  Topology t;
  t.world = world.split(world.rank() / size, world.rank());
  const int r = t.world.rank();
  t.ep = t.world.split(r / ep, r);
  t.edp = t.world.split(r % ep, r);
  t.node = t.world.dup();
  t.ep_size = ep;
  t.edp_size = size / ep;
  t.hosts.assign(static_cast<size_t>(size), "localhost");
  cfg.ep_size = ep;
  return t;
}

std::vector<int> ep_sizes(int W) {
  std::vector<int> out;
  for (int ep = 1; ep <= W; ep *= 2)
    if (W % ep == 0 && 4 % ep == 0) out.push_back(ep);  // the tiny model has 4 experts
  return out;
}

bool close(double a, double b, double rtol) {
  return std::isfinite(a) && std::isfinite(b) && std::abs(a - b) <= rtol * std::abs(b);
}

// The same tensors (names, shapes, dtypes, kinds, CRC32s) and step / optimizer steps / loader.
bool same_checkpoint_contents(const std::string& a_dir, const std::string& b_dir, int64_t step,
                              const std::string& what) {
  io::Manifest a, b;
  try {
    a = io::read_manifest(a_dir, step);
    b = io::read_manifest(b_dir, step);
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": " << e.what();
    return false;
  }
  std::map<std::string, const io::ManifestTensor*> by_name;
  for (const auto& t : b.tensors) by_name[t.name] = &t;
  bool ok = a.tensors.size() == b.tensors.size();
  if (!ok) ADD_FAILURE() << what << ": " << a.tensors.size() << " tensors vs " << b.tensors.size();
  int optim = 0;
  for (const auto& t : a.tensors) {
    auto it = by_name.find(t.name);
    if (it == by_name.end()) {
      ADD_FAILURE() << what << ": \"" << t.name << "\" is missing after the resume";
      ok = false;
      continue;
    }
    const io::ManifestTensor& u = *it->second;
    if (u.shape != t.shape || u.dtype != t.dtype || u.kind != t.kind || u.crc32 != t.crc32) {
      ADD_FAILURE() << what << ": \"" << t.name << "\" differs after the resume";
      ok = false;
    }
    optim += is_optimizer_state(t.name);
  }
  if (optim == 0) {
    ADD_FAILURE() << what << ": the checkpoint lacks optimizer moments";
    ok = false;
  }
  const TrainMeta ma = TrainMeta::from_json(a.meta, what), mb = TrainMeta::from_json(b.meta, what);
  if (ma.step != mb.step || ma.adamw_steps != mb.adamw_steps || !(ma.loader == mb.loader)) {
    ADD_FAILURE() << what << ": meta differs";
    ok = false;
  }
  return ok;
}

class ZeroTest : public SuiteDatasetTest<ZeroTest> {
 public:
  static constexpr const char* kSuite = "zero-test";
};

TEST_F(ZeroTest, LossesEqualTheUnshardedOptimizer) {
  const int W = world_size();
  constexpr int kSteps = 10;
  constexpr double kRtol = 1e-6;
  for (int ep : ep_sizes(W)) {
    const std::string tag = "ep" + std::to_string(ep);
    TrainConfig cp = parse(
        with(tiny_args(data_, run_dir("plain-" + tag), kSteps), {"--ep-size", std::to_string(ep)}));
    TrainConfig cz = parse(with(tiny_args(data_, run_dir("zero-" + tag), kSteps),
                                {"--ep-size", std::to_string(ep), "--zero", "1"}));
    ASSERT_EQ(cp.zero, 0);
    ASSERT_EQ(cz.zero, 1);
    Topology tp = world_topology(cp), tz = world_topology(cz);
    Trainer plain(cp, tp), zero(cz, tz);
    ASSERT_FALSE(plain.state().optimizer->zero());
    ASSERT_TRUE(zero.state().optimizer->zero());
    bool ok = true;
    double worst = 0;
    for (int s = 0; s < kSteps; ++s) {
      const StepResult a = plain.step(), b = zero.step();
      worst = std::max(worst, std::abs(a.loss - b.loss) / std::abs(a.loss));
      if (!close(b.loss, a.loss, kRtol) || !close(b.grad_norm, a.grad_norm, 1e-5)) {
        ADD_FAILURE() << "EP " << ep << " step " << s + 1 << ": loss " << b.loss << " vs " << a.loss
                      << ", grad norm " << b.grad_norm << " vs " << a.grad_norm;
        ok = false;
      }
    }
    // The parameters are all-gathered: every rank holds the whole updated model, as unsharded.
    const std::vector<NamedParam> pa = plain.model().params(), pb = zero.model().params();
    for (size_t i = 0; ok && i < pa.size(); ++i) {
      const auto x = pa[i].value->span<float>(), y = pb[i].value->span<float>();
      for (size_t j = 0; j < x.size(); ++j)
        if (std::abs(x[j] - y[j]) > 1e-6f + 1e-4f * std::abs(x[j])) {
          ADD_FAILURE() << "EP " << ep << ": " << pa[i].name << "[" << j << "] " << y[j] << " vs "
                        << x[j];
          ok = false;
          break;
        }
    }
    if (world_rank() == 0)
      std::printf("zero_test: world %d EP %d: worst relative loss difference over %d steps %.3g\n",
                  W, ep, kSteps, worst);
    // The checkpoints hold the same tensors: the sharded moments sit where the whole ones do.
    plain.save();
    zero.save();
    if (world_rank() == 0) {
      const io::CheckpointReader a = io::CheckpointReader::open(cp.ckpt_dir, kSteps);
      const io::CheckpointReader b = io::CheckpointReader::open(cz.ckpt_dir, kSteps);
      ok = ok && a.manifest().tensors.size() == b.manifest().tensors.size();
      for (const io::ManifestTensor& t : a.manifest().tensors) {
        if (!ok) break;
        const Tensor x = a.read(t.name), y = b.read(t.name);
        const auto xs = x.span<float>(), ys = y.span<float>();
        float scale = 0;
        for (float v : xs) scale = std::max(scale, std::abs(v));
        for (size_t j = 0; ok && j < xs.size(); ++j)
          if (!(std::abs(xs[j] - ys[j]) <= 1e-4f * scale)) {
            ADD_FAILURE() << "EP " << ep << ": checkpoint tensor " << t.name << "[" << j << "] is "
                          << ys[j] << " with ZeRO-1, " << xs[j] << " without";
            ok = false;
          }
      }
    }
    MOERUN_EXPECT_ALL(Comm::world(), ok);
  }
}

TEST_F(ZeroTest, OptimizerStateFallsByTheDataParallelDegree) {
  const int W = world_size();
  const Comm world = Comm::world();
  for (int ep : ep_sizes(W)) {
    TrainConfig cp =
        parse(with(tiny_args(data_, run_dir("plain"), 1), {"--ep-size", std::to_string(ep)}));
    TrainConfig cz = parse(with(tiny_args(data_, run_dir("zero"), 1),
                                {"--ep-size", std::to_string(ep), "--zero", "1"}));
    Topology tp = world_topology(cp), tz = world_topology(cz);
    Trainer plain(cp, tp), zero(cz, tz);
    // Unsharded: m and v of every parameter this rank holds.
    int64_t dense_params = 0, expert_params = 0;
    for (const NamedParam& p : plain.model().params())
      (p.is_expert ? expert_params : dense_params) += p.value->numel();
    const int64_t plain_bytes = plain.state().optimizer->state_bytes();
    // ZeRO-1: this rank's even shard of each flat region (alignment gaps included).
    Model& m = zero.model();
    const int64_t dense = m.dense_grads().numel(), expert = m.expert_grads().numel();
    const int edp = W / ep;
    const int64_t dense_shard = flat_shard(dense, W, world.rank()).size;
    const int64_t expert_shard = flat_shard(expert, edp, tz.edp.rank()).size;
    const int64_t zero_bytes = zero.state().optimizer->state_bytes();
    bool ok = plain_bytes == 8 * (dense_params + expert_params) &&
              zero_bytes == 8 * (dense_shard + expert_shard);
    // Over the world the shards hold each region once: the dense region once, every EP rank's
    // expert region once.
    int64_t sum = zero_bytes;
    world.allreduce_sum(std::span<int64_t>(&sum, 1));
    ok = ok && sum == 8 * (dense + expert * ep);
    // ~1/DP of the unsharded state per part: at most the exact split, less only by the alignment
    // gaps and the last shard's rounding.
    const double ratio = static_cast<double>(plain_bytes) / static_cast<double>(zero_bytes);
    const double exact =
        static_cast<double>(dense_params + expert_params) /
        (static_cast<double>(dense_params) / W + static_cast<double>(expert_params) / edp);
    ok = ok && ratio <= exact * (1 + 1e-9) && ratio >= 0.85 * exact;
    // The memory estimate (check_train_memory, moerun plan): the unsharded state exactly, the
    // shards to within their alignment gaps.
    const MemoryEstimate e0 = estimate_memory(cp.model, ep, W, cp.micro_batch, 0);
    const MemoryEstimate e1 = estimate_memory(cz.model, ep, W, cz.micro_batch, 1);
    double worst_zero = static_cast<double>(zero_bytes);  // rank 0's: the shards are ceil(n / DP)
    world.allreduce_max(std::span<double>(&worst_zero, 1));
    ok = ok && e0.optimizer_bytes == plain_bytes &&
         static_cast<double>(e1.optimizer_bytes) <= worst_zero &&
         static_cast<double>(e1.optimizer_bytes) >= 0.95 * worst_zero;
    if (world.rank() == 0)
      std::printf(
          "zero_test: world %d EP %d: AdamW m+v bytes per rank %lld (--zero 0) vs %lld "
          "(--zero 1): %.2fx less (exact split %.2fx)\n",
          W, ep, static_cast<long long>(plain_bytes), static_cast<long long>(zero_bytes), ratio,
          exact);
    if (!ok)
      ADD_FAILURE() << "EP " << ep << ": plain " << plain_bytes << " (params " << dense_params
                    << " + " << expert_params << "), zero " << zero_bytes << " (shards "
                    << dense_shard << " + " << expert_shard << "), world sum " << sum
                    << "; estimated " << e0.optimizer_bytes << " and " << e1.optimizer_bytes;
    MOERUN_EXPECT_ALL(world, ok);
  }
}

TEST_F(ZeroTest, CheckpointsReshardWithAndWithoutZero) {
  const int W = world_size(), me = world_rank();
  const Comm world = Comm::world();
  constexpr int64_t kSteps = 6, kHalf = 3;
  constexpr double kRtol = 1e-5;
  const int g = std::max(1, W / 2);  // the groups that resume
  const int ep_w = std::max(1, W / 2), ep_g = std::max(1, g / 2);
  auto args = [&](const std::string& what) { return tiny_args(data_, run_dir(what), kSteps); };
  // The uninterrupted run: world W, no ZeRO.
  std::vector<double> ref;
  {
    TrainConfig c = parse(args("straight"));
    Topology t = world_topology(c);
    Trainer a(c, t);
    for (int64_t s = 0; s < kSteps; ++s) ref.push_back(a.step().loss);
  }
  auto continue_and_check = [&](Trainer& r, const std::string& src, const std::string& ckpt,
                                const std::string& what) {
    bool ok = r.steps_done() == kHalf;
    if (!ok) ADD_FAILURE() << what << ": resumed at step " << r.steps_done();
    r.save();
    ok = same_checkpoint_contents(src, ckpt, kHalf, what) && ok;
    for (int64_t s = kHalf; s < kSteps; ++s) {
      const double loss = r.step().loss;
      if (!close(loss, ref[static_cast<size_t>(s)], kRtol)) {
        ADD_FAILURE() << what << ": loss of step " << s + 1 << " is " << loss << ", uninterrupted "
                      << ref[static_cast<size_t>(s)];
        ok = false;
      }
    }
    return ok;
  };

  // Saved with ZeRO-1 at world W, EP W/2 (experts sharded over expert-DP pairs).
  TrainConfig cw =
      parse(with(args("zero-at-world"), {"--zero", "1", "--ep-size", std::to_string(ep_w)}));
  {
    Topology t = world_topology(cw);
    Trainer b(cw, t);
    bool ok = true;
    for (int64_t s = 0; s < kHalf; ++s)
      ok = close(b.step().loss, ref[static_cast<size_t>(s)], kRtol) && ok;
    b.save();
    MOERUN_EXPECT_ALL(world, ok);
  }
  // -> groups of g ranks, with ZeRO-1 (EP g/2) and without (EP g).
  for (int zero : {1, 0}) {
    const std::string tag = "z" + std::to_string(zero) + "-group" + std::to_string(me / g);
    TrainConfig c = parse(
        with(args("resumed-" + tag), {"--resume", cw.ckpt_dir, "--zero", std::to_string(zero)}));
    Topology t = group_topology(g, zero ? ep_g : g, c);
    Trainer r(c, t);
    const bool ok =
        continue_and_check(r, cw.ckpt_dir, c.ckpt_dir,
                           "ZeRO-1 world " + std::to_string(W) + " -> " +
                               (zero ? "ZeRO-1" : "plain") + " world " + std::to_string(g));
    MOERUN_EXPECT_ALL(world, ok);
  }
  // Saved without ZeRO by the first group (world g, EP g) -> ZeRO-1 at world W, EP W/2.
  const std::string written = run_dir("plain-at-group").string();
  {
    TrainConfig c = parse(tiny_args(data_, written, kSteps));
    Topology t = group_topology(g, g, c);
    if (me < g) {
      Trainer b(c, t);
      for (int64_t s = 0; s < kHalf; ++s) b.step();
      b.save();
    }
    world.barrier();
  }
  TrainConfig c = parse(with(args("zero-from-group"), {"--resume", written + "/ckpt", "--zero", "1",
                                                       "--ep-size", std::to_string(ep_w)}));
  Topology t = world_topology(c);
  Trainer r(c, t);
  const bool ok = continue_and_check(
      r, written + "/ckpt", c.ckpt_dir,
      "plain world " + std::to_string(g) + " -> ZeRO-1 world " + std::to_string(W));
  MOERUN_EXPECT_ALL(world, ok);
}

}  // namespace
}  // namespace moerun::testing
