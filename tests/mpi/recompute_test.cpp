// Activation recomputation (--recompute moe|full): a few steps of a tiny model at whatever world
// size mpiexec gives (1, 2, 4) give bitwise the losses, gradients, parameters, load imbalance and
// drops of the same run without recomputation (loss-free bias and aux losses, with capacity
// drops), and the tensor bytes the allocator counts at the step's peak fall: none > moe > full.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "comm/topology.h"
#include "io/prepare.h"
#include "jobs/train_options.h"
#include "jobs/trainer.h"
#include "runtime/check.h"
#include "tests/common/mpi_test.h"
#include "tests/common/trainer_fixture.h"

namespace moerun::testing {
namespace {

namespace fs = std::filesystem;

class RecomputeTest : public SuiteDatasetTest<RecomputeTest> {
 public:
  static constexpr const char* kSuite = "recompute-test";
  static SuiteDatasetSpec spec() {
    return {.files = 4, .first_seed = 300, .words = 400, .arithmetic_docs = 0};
  }
};

// What one run leaves, step by step, on this rank.
struct Run {
  std::vector<double> loss, grad_norm;
  std::vector<std::vector<double>> maxvio;
  std::vector<int64_t> dropped;
  std::vector<std::vector<float>> grads, params;  // the flat buffers after each step
  int64_t peak_tensor_bytes = 0;                  // the last step's, max over ranks
  int64_t peak_rss_bytes = 0;
};

std::vector<float> copy_of(const Tensor& t) {
  const auto s = t.span<float>();
  return {s.begin(), s.end()};
}

// One run at a time, so that the allocator's counted peak is this run's alone.
Run train(std::vector<std::string> args, const std::string& recompute, const fs::path& out) {
  TrainConfig cfg = parse(with(args, {"--recompute", recompute, "--out", out.string()}));
  Topology topo = world_topology(cfg);
  Trainer t(cfg, topo);
  Run run;
  for (int s = 0; s < 3; ++s) {
    const StepResult r = t.step();
    run.loss.push_back(r.loss);
    run.grad_norm.push_back(r.grad_norm);
    run.maxvio.push_back(r.maxvio_batch);
    run.dropped.push_back(r.dropped);
    run.grads.push_back(copy_of(t.model().grad_buffer()));
    run.params.push_back(copy_of(t.model().param_buffer()));
    run.peak_tensor_bytes = t.step_memory().peak_tensor_bytes;
    run.peak_rss_bytes = t.step_memory().peak_rss_bytes;
  }
  return run;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Compares b with the reference a, step by step; says what differs.
bool same_run(const Run& a, const Run& b, const std::string& what) {
  bool ok = true;
  for (size_t s = 0; s < a.loss.size(); ++s) {
    if (a.loss[s] != b.loss[s] || a.grad_norm[s] != b.grad_norm[s]) {
      ADD_FAILURE() << what << " step " << s << ": loss " << b.loss[s] << " vs " << a.loss[s]
                    << ", grad norm " << b.grad_norm[s] << " vs " << a.grad_norm[s];
      ok = false;
    }
    if (a.maxvio[s] != b.maxvio[s] || a.dropped[s] != b.dropped[s]) {
      ADD_FAILURE() << what << " step " << s << ": load imbalance or drops differ (dropped "
                    << b.dropped[s] << " vs " << a.dropped[s] << ")";
      ok = false;
    }
    if (!bitwise_equal(a.grads[s], b.grads[s]) || !bitwise_equal(a.params[s], b.params[s])) {
      ADD_FAILURE() << what << " step " << s << ": gradients or parameters differ";
      ok = false;
    }
  }
  return ok;
}

void check_modes(const std::vector<std::string>& args, const fs::path& out, bool expect_drops) {
  const Run none = train(args, "none", out / "none");
  const Run moe = train(args, "moe", out / "moe");
  const Run full = train(args, "full", out / "full");
  bool ok = same_run(none, moe, "--recompute moe") && same_run(none, full, "--recompute full");
  if (expect_drops && none.dropped.back() == 0) {
    ADD_FAILURE() << "the capacity factor dropped nothing: the test would not see drops counted "
                     "twice";
    ok = false;
  }
  MOERUN_EXPECT_ALL(Comm::world(), ok);
  // Counted bytes, the same on every rank after the max.
  EXPECT_LT(moe.peak_tensor_bytes, none.peak_tensor_bytes);
  EXPECT_LT(full.peak_tensor_bytes, moe.peak_tensor_bytes);
  EXPECT_GT(none.peak_rss_bytes, 0) << "VmHWM was not read from /proc/self/status";
}

std::vector<std::string> three_blocks(const fs::path& data) {
  return with(tiny_args(data, "unused", 3), {"--layers", "3"});
}

TEST_F(RecomputeTest, LossFreeBalancingWithDropsIsBitwiseTheSame) {
  check_modes(with(three_blocks(data_), {"--capacity-factor", "0.8"}), root_ / "runs" / "lossfree",
              true);
}

TEST_F(RecomputeTest, AuxLossesAreBitwiseTheSame) {
  check_modes(with(three_blocks(data_),
                   {"--balance", "aux", "--aux-alpha1", "0.01", "--aux-seq-alpha", "0.01"}),
              root_ / "runs" / "aux", false);
}

TEST_F(RecomputeTest, UnknownModeIsAConfigErrorNamingTheOption) {
  std::vector<std::string> args = with(three_blocks(data_), {"--recompute", "some"});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  TrainConfig cfg;
  try {
    parse_train_config(static_cast<int>(argv.size()), argv.data(), cfg, false);
    ADD_FAILURE() << "--recompute some was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--recompute"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moerun::testing
