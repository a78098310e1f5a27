// Trainer::save / --resume: a tiny model on a small generated dataset, at whatever world size
// mpiexec gives (1, 2, 4).
//   - Same layout: N steps straight vs N/2, save, a new Trainer with --resume, N/2 more: the
//     resumed steps' losses and the final parameters and biases are bitwise identical.
//   - Another layout: a checkpoint written at world W / EP W resumes at world W / EP 1, and on
//     sub-worlds of W/2 ranks (EP W/2) and of one rank (EP 1), every group on its own; and the
//     reverse (written by the first sub-world, resumed by the whole world at EP W). Every tensor
//     (parameters, AdamW moments, router biases) survives the reshard bit for bit (the resumed
//     trainer saves again and the CRC32s match), and the losses agree with the uninterrupted run
//     to 1e-5 relative.
//   - Bad --resume: an empty or missing directory, a checkpoint of another model shape (or
//     attention, or MLA size), a checkpoint at or past --steps: a ConfigError naming the problem
//     on every rank.
//   - A checkpoint written before MLA (meta.model without the attention keys) resumes as MHA;
//     an MLA run refuses it, naming --attention.
// Each for MHA and for the attention (and routing) of the tiny-mla and tiny-mla-v3 presets.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "comm/topology.h"
#include "io/checkpoint.h"
#include "io/prepare.h"
#include "jobs/checkpoint_schema.h"
#include "jobs/train_options.h"
#include "jobs/trainer.h"
#include "runtime/check.h"
#include "tests/common/mpi_test.h"
#include "tests/common/trainer_fixture.h"

namespace moerun::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kSteps = 6;  // the uninterrupted run; the interrupted one saves at kSteps / 2
constexpr int64_t kHalf = kSteps / 2;

class TrainerResumeTest : public SuiteDatasetTest<TrainerResumeTest>,
                          public ::testing::WithParamInterface<TinyAttention> {
 public:
  static constexpr const char* kSuite = "trainer-resume-test";

  // The tiny model of trainer_fixture.h with this test's attention, trained for kSteps.
  static std::vector<std::string> tiny_args_k(const fs::path& data, const fs::path& out) {
    return tiny_args(data, out, kSteps) + GetParam().args;
  }
};

// The world cut into groups of `size` consecutive ranks; each group is a world of its own with
// EP = size (its ranks share no expert: the EDP groups are single ranks). size 1: every rank
// alone.
Topology group_topology(int size, TrainConfig& cfg) {
  const Comm world = Comm::world();
  Topology t;
  t.world = world.split(world.rank() / size, world.rank());
  t.ep = t.world.dup();
  t.edp = t.world.split(t.world.rank(), 0);
  t.node = t.world.dup();
  t.ep_size = size;
  t.edp_size = 1;
  cfg.ep_size = size;
  return t;
}

// Parameters (experts as this trainer's local slice) and router biases.
struct Snapshot {
  std::vector<std::string> names;
  std::vector<std::vector<float>> values;
  std::vector<std::vector<float>> biases;
};
Snapshot snapshot(Trainer& t) {
  Snapshot s;
  for (const NamedParam& p : t.model().params()) {
    std::span<const float> v = p.value->span<float>();
    s.names.push_back(p.name);
    s.values.emplace_back(v.begin(), v.end());
  }
  for (MoELayer* l : t.model().moe_layers()) {
    std::span<const float> b = l->params().bias.span<float>();
    s.biases.emplace_back(b.begin(), b.end());
  }
  return s;
}

// Losses of `n` more steps.
std::vector<double> run_steps(Trainer& t, int64_t n) {
  std::vector<double> loss;
  for (int64_t s = 0; s < n; ++s) loss.push_back(t.step().loss);
  return loss;
}

// `got` (steps first .. first + got.size() - 1, 0-based) against the uninterrupted `ref`.
bool losses_agree(const std::vector<double>& got, const std::vector<double>& ref, size_t first,
                  double rtol, const std::string& what) {
  bool ok = true;
  for (size_t s = 0; s < got.size(); ++s) {
    const double r = ref.at(first + s);
    const bool pass =
        rtol == 0.0 ? got[s] == r : std::abs(got[s] - r) <= rtol * std::abs(r) && std::isfinite(r);
    if (!pass) {
      ADD_FAILURE() << what << ": loss of step " << first + s + 1 << " is "
                    << ::testing::PrintToString(got[s]) << ", uninterrupted "
                    << ::testing::PrintToString(r) << " (relative difference "
                    << std::abs(got[s] - r) / std::abs(r) << ", allowed " << rtol << ")";
      ok = false;
    }
  }
  return ok;
}

// Two committed steps hold the same tensors bit for bit (names, dtypes, global shapes, kinds,
// CRC32s), and the same step, AdamW step count and loader position.
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
  int optim = 0, bias = 0;
  for (const auto& t : a.tensors) {
    auto it = by_name.find(t.name);
    if (it == by_name.end()) {
      ADD_FAILURE() << what << ": \"" << t.name << "\" is missing after the resume";
      ok = false;
      continue;
    }
    const io::ManifestTensor& u = *it->second;
    if (u.shape != t.shape || u.dtype != t.dtype || u.kind != t.kind || u.crc32 != t.crc32) {
      ADD_FAILURE() << what << ": \"" << t.name << "\" differs after the resume (crc32 " << std::hex
                    << t.crc32 << " vs " << u.crc32 << std::dec << ")";
      ok = false;
    }
    optim += is_optimizer_state(t.name);
    bias += is_router_bias(t.name);
  }
  if (optim == 0 || bias == 0) {
    ADD_FAILURE() << what << ": the checkpoint lacks optimizer moments or router biases";
    ok = false;
  }
  // The resume-relevant part of the schema (checkpoint_schema.h): step, optimizer steps, loader.
  const TrainMeta ma = TrainMeta::from_json(a.meta, what), mb = TrainMeta::from_json(b.meta, what);
  if (ma.step != mb.step || ma.adamw_steps != mb.adamw_steps || !(ma.loader == mb.loader)) {
    ADD_FAILURE() << what << ": meta step/adamw_steps/loader " << ma.to_json().dump() << " vs "
                  << mb.to_json().dump();
    ok = false;
  }
  return ok;
}

TEST_P(TrainerResumeTest, SameLayoutResumeIsBitwiseIdentical) {
  // The uninterrupted run.
  TrainConfig ca = parse(tiny_args_k(data_, run_dir("straight")));
  Topology ta = world_topology(ca);
  std::vector<double> ref;
  Snapshot s_ref;
  {
    Trainer a(ca, ta);
    ref = run_steps(a, kSteps);
    s_ref = snapshot(a);
  }
  // Half of it, saved; then a new trainer resumes and runs the other half.
  TrainConfig cb = parse(tiny_args_k(data_, run_dir("first-half")));
  Topology tb = world_topology(cb);
  {
    Trainer b(cb, tb);
    bool ok = losses_agree(run_steps(b, kHalf), ref, 0, 0.0, "before the save");
    b.save();
    MOERUN_EXPECT_ALL(Comm::world(), ok);
  }
  TrainConfig cc =
      parse(with(tiny_args_k(data_, run_dir("second-half")), {"--resume", cb.ckpt_dir}));
  Topology tc = world_topology(cc);
  Trainer c(cc, tc);
  ASSERT_EQ(c.steps_done(), kHalf);
  bool ok = losses_agree(run_steps(c, kSteps - kHalf), ref, kHalf, 0.0, "resumed");
  const Snapshot s = snapshot(c);
  ok = ok && s.names == s_ref.names;
  for (size_t i = 0; ok && i < s.names.size(); ++i)
    if (s.values[i] != s_ref.values[i]) {
      ADD_FAILURE() << "after the resumed run, " << s.names[i] << " differs from the straight run";
      ok = false;
    }
  if (ok && s.biases != s_ref.biases) {
    ADD_FAILURE() << "after the resumed run, the router biases differ from the straight run";
    ok = false;
  }
  MOERUN_EXPECT_ALL(Comm::world(), ok);
}

TEST_P(TrainerResumeTest, ResumesAtAnotherLayout) {
  const int W = world_size(), me = world_rank();
  const Comm world = Comm::world();
  constexpr double kRtol = 1e-5;
  // The uninterrupted run at world W, EP W.
  std::vector<double> ref;
  {
    TrainConfig c = parse(tiny_args_k(data_, run_dir("straight")));
    Topology t = world_topology(c);
    Trainer a(c, t);
    ref = run_steps(a, kSteps);
  }
  // The first half at world W, EP W, saved.
  TrainConfig cw = parse(tiny_args_k(data_, run_dir("written-at-world")));
  {
    Topology t = world_topology(cw);
    Trainer b(cw, t);
    b.save();  // step 0 as well: the newest step must be the one resumed
    run_steps(b, kHalf);
    b.save();
  }

  // Resumes `src` at `topo` (a group of ranks, or the world): the tensors re-saved at the new
  // layout match `src` bit for bit, and the second half's losses match the uninterrupted run.
  auto resume_and_check = [&](const std::string& src, TrainConfig cfg, Topology& topo,
                              const std::string& what) {
    Trainer r(cfg, topo);
    bool ok = r.steps_done() == kHalf;
    if (!ok) ADD_FAILURE() << what << ": resumed at step " << r.steps_done() << ", not " << kHalf;
    r.save();
    ok = same_checkpoint_contents(src, cfg.ckpt_dir, kHalf, what) && ok;
    ok = losses_agree(run_steps(r, kSteps - kHalf), ref, kHalf, kRtol, what) && ok;
    return ok;
  };

  // World W -> world W, EP 1 (experts replicated on every rank).
  if (W > 1) {
    TrainConfig c = parse(with(tiny_args_k(data_, run_dir("resumed-ep1")),
                               {"--resume", cw.ckpt_dir, "--ep-size", "1"}));
    Topology t = world_topology(c);
    const bool ok = resume_and_check(
        cw.ckpt_dir, c, t, "world " + std::to_string(W) + " EP " + std::to_string(W) + " -> EP 1");
    MOERUN_EXPECT_ALL(world, ok);
  }
  // World W -> groups of g < W ranks at EP g (every group resumes on its own), and back. At
  // W = 1 the one group is the world: a plain resume at tolerance.
  for (int g = std::max(1, W / 2); g >= 1 && (g < W || W == 1); g /= 2) {
    const std::string tag = std::to_string(g) + "-group" + std::to_string(me / g);
    const std::string from = "world " + std::to_string(W) + " EP " + std::to_string(W);
    const std::string to = "world " + std::to_string(g) + " EP " + std::to_string(g);
    {
      TrainConfig c =
          parse(with(tiny_args_k(data_, run_dir("resumed-at-" + tag)), {"--resume", cw.ckpt_dir}));
      Topology t = group_topology(g, c);
      const bool ok = resume_and_check(cw.ckpt_dir, c, t, from + " -> " + to);
      MOERUN_EXPECT_ALL(world, ok);
    }
    // The reverse: the first group writes at world g, EP g; the whole world resumes at EP W.
    const std::string written = run_dir("written-at-" + std::to_string(g)).string();
    {
      TrainConfig c = parse(tiny_args_k(data_, written));
      Topology t = group_topology(g, c);
      bool ok = true;
      if (me < g) {
        Trainer b(c, t);
        ok = losses_agree(run_steps(b, kHalf), ref, 0, kRtol, to + " (first half)");
        b.save();
      }
      MOERUN_EXPECT_ALL(world, ok);  // also the barrier: the checkpoint is committed
    }
    TrainConfig c = parse(with(tiny_args_k(data_, run_dir("resumed-from-" + std::to_string(g))),
                               {"--resume", written + "/ckpt"}));
    Topology t = world_topology(c);
    const bool ok = resume_and_check(written + "/ckpt", c, t, to + " -> " + from);
    MOERUN_EXPECT_ALL(world, ok);
  }
}

TEST_P(TrainerResumeTest, BadResumeIsAConfigErrorOnEveryRank) {
  const Comm world = Comm::world();
  auto train = [](const std::string& what, std::vector<std::string> extra) {
    return [what, extra] {
      TrainConfig cfg = parse(with(tiny_args_k(data_, run_dir(what)), extra));
      Topology topo = world_topology(cfg);
      Trainer t(cfg, topo);
      t.step();  // not reached
    };
  };
  // An empty directory, and one that does not exist.
  const fs::path empty = run_dir("empty-ckpt");
  if (world.rank() == 0) fs::create_directories(empty);
  world.barrier();
  expect_config_error_everywhere(train("a", {"--resume", empty.string()}),
                                 {"--resume", empty.string(), "holds no committed checkpoint"});
  const fs::path missing = run_dir("no-such-dir");
  expect_config_error_everywhere(train("b", {"--resume", missing.string()}),
                                 {"--resume", missing.string(), "does not exist"});

  // A checkpoint of the tiny model at step 2.
  TrainConfig cw = parse(with(tiny_args_k(data_, run_dir("written")), {"--steps", "2"}));
  {
    Topology t = world_topology(cw);
    Trainer b(cw, t);
    run_steps(b, 2);
    b.save();
  }
  // Another model shape: named by the option, with both values, before any tensor is read.
  expect_config_error_everywhere(train("c", {"--resume", cw.ckpt_dir, "--hidden", "32"}),
                                 {cw.ckpt_dir, "--hidden 16", "not 32"});
  expect_config_error_everywhere(train("d", {"--resume", cw.ckpt_dir, "--experts", "8"}),
                                 {"--experts", "not 8"});
  expect_config_error_everywhere(train("e", {"--resume", cw.ckpt_dir, "--layers", "3"}),
                                 {"--layers 2", "not 3"});
  // A checkpoint that is not before --steps.
  expect_config_error_everywhere(train("f", {"--resume", cw.ckpt_dir, "--steps", "2"}),
                                 {"--resume", "step 2", "--steps 2"});
  // Another attention, or another MLA size: named the same way.
  if (GetParam().args.empty()) {
    expect_config_error_everywhere(train("g", {"--resume", cw.ckpt_dir, "--attention", "mla"}),
                                   {cw.ckpt_dir, "--attention mha", "not mla"});
  } else {
    expect_config_error_everywhere(train("g", {"--resume", cw.ckpt_dir, "--kv-lora-rank", "32"}),
                                   {cw.ckpt_dir, "--kv-lora-rank 64", "not 32"});
    expect_config_error_everywhere(train("h", {"--resume", cw.ckpt_dir, "--qk-rope-head-dim", "8"}),
                                   {"--qk-rope-head-dim 16", "not 8"});
  }
}

// A checkpoint written before MLA: meta.model without the attention keys. It resumes as the MHA
// model it is; an MLA run refuses it, naming --attention.
TEST_P(TrainerResumeTest, CheckpointWithoutAttentionKeysIsMha) {
  const Comm world = Comm::world();
  TrainConfig cw = parse(with(tiny_args_k(data_, run_dir("written")), {"--steps", "2"}));
  {
    Topology t = world_topology(cw);
    Trainer b(cw, t);
    run_steps(b, 2);
    b.save();
  }
  bool ok = true;
  if (world.rank() == 0) {
    io::Manifest m = io::read_manifest(cw.ckpt_dir, 2);
    nlohmann::json& model = m.meta["model"];
    for (const ModelKey& k : model_keys())
      if (!k.required) model.erase(k.key);
    ok = model.contains("hidden") && !model.contains("attention") && !model.contains("rope_theta");
    std::ofstream(fs::path(io::step_dir(cw.ckpt_dir, 2)) / io::kManifestName)
        << io::manifest_to_json(m);
  }
  MOERUN_EXPECT_ALL(world, ok);  // also the barrier: the manifest is rewritten
  TrainConfig cr = parse(
      with(tiny_args_k(data_, run_dir("resumed")), {"--resume", cw.ckpt_dir, "--steps", "3"}));
  if (cr.model.attention == AttentionKind::kMHA) {
    Topology t = world_topology(cr);
    Trainer r(cr, t);
    ok = r.steps_done() == 2 && std::isfinite(r.step().loss);
    MOERUN_EXPECT_ALL(world, ok) << " the pre-MLA checkpoint did not resume at step 2";
  } else {
    expect_config_error_everywhere(
        [&] {
          Topology t = world_topology(cr);
          Trainer r(cr, t);
        },
        {cw.ckpt_dir, "--attention mha", "not mla"});
  }
}

INSTANTIATE_TEST_SUITE_P(Attention, TrainerResumeTest, ::testing::ValuesIn(tiny_attentions()),
                         tiny_attention_name);

}  // namespace
}  // namespace moerun::testing
