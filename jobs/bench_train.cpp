// `moerun bench train`: training throughput and MFU of a preset on however many ranks it is
// launched with. MFU = model FLOPs per token (DeepSeek LLM's M, fwd + bwd, attention included)
// x tokens/s per rank / the sgemm peak per rank measured in the same run. Weak scaling: run it at
// 1 and at 2 ranks with the same per-rank batch (tests/perf/bench_train.sh does both).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "comm/topology.h"
#include "jobs/jobs.h"
#include "jobs/train_options.h"
#include "jobs/trainer.h"
#include "layers/model_plan.h"
#include "runtime/blas.h"
#include "runtime/check.h"

namespace moerun {

namespace {

// The same run with each --recompute mode, steps interleaved (none, moe, full, none, ...) so that
// a busy machine slows all three alike. Memory is not compared here: the three trainers share the
// process; run them one at a time for peak RSS and tensor bytes.
int compare_recompute(const TrainConfig& base, Topology& topo, int warmup, int measure) {
  const bool root = topo.world.rank() == 0;
  const Recompute modes[] = {Recompute::kNone, Recompute::kMoE, Recompute::kFull};
  std::vector<TrainConfig> cfgs;
  std::vector<std::unique_ptr<Trainer>> trainers;
  for (Recompute m : modes) {
    TrainConfig c = base;
    c.model.recompute = m;
    c.out = base.out + "/" + to_string(m);
    c.ckpt_dir = c.out + "/ckpt";
    cfgs.push_back(c);
  }
  for (TrainConfig& c : cfgs) trainers.push_back(std::make_unique<Trainer>(c, topo));
  std::vector<std::vector<double>> seconds(3), a2a(3);
  std::vector<double> loss(3);
  for (int s = 0; s < warmup + measure; ++s)
    for (size_t i = 0; i < 3; ++i) {
      const StepResult r = trainers[i]->step();
      loss[i] = r.loss;
      if (s < warmup) continue;
      seconds[i].push_back(r.seconds);
      a2a[i].push_back(r.t_alltoall);
    }
  if (root) {
    std::printf("bench train --compare-recompute: %s, %d rank(s), OpenBLAS %s, %d steps each\n",
                base.config_file.empty() ? "defaults" : base.config_file.c_str(), topo.world.size(),
                blas_core(), measure);
    std::printf(
        "| --recompute | step s (min) | step s (median) | extra vs none (min) | "
        "all-to-all s (median) | last loss |\n|---|---|---|---|---|---|\n");
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    const double none_min = *std::min_element(seconds[0].begin(), seconds[0].end());
    for (size_t i = 0; i < 3; ++i) {
      const double mn = *std::min_element(seconds[i].begin(), seconds[i].end());
      std::printf("| %s | %.3f | %.3f | %+.1f%% | %.3f | %.6f |\n", to_string(modes[i]).c_str(), mn,
                  median(seconds[i]), 100.0 * (mn / none_min - 1.0), median(a2a[i]), loss[i]);
    }
  }
  return 0;
}

}  // namespace

int run_bench_train(int argc, char** argv) {
  const Comm world = Comm::world();
  const bool root = world.rank() == 0;
  // Our own two options first; everything else is `moerun train`'s.
  int measure = 5, warmup = 1;
  bool weak = false, compare = false;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--measure-steps" || a == "--warmup-steps-bench") && i + 1 < argc) {
      int v = 0;
      try {
        v = std::stoi(argv[i + 1]);
      } catch (const std::exception&) {
        v = -1;
      }
      MOERUN_CONFIG_REQUIRE(v >= (a == "--measure-steps" ? 1 : 0), "{} needs a count (got '{}')", a,
                            argv[i + 1]);
      (a == "--measure-steps" ? measure : warmup) = v;
      ++i;
    } else if (a == "--weak-scaling") {
      weak = true;
    } else if (a == "--compare-recompute") {
      compare = true;
    } else {
      rest.push_back(argv[i]);
    }
  }
  TrainConfig cfg;
  if (!parse_train_config(static_cast<int>(rest.size()), rest.data(), cfg, root)) {
    if (root)
      std::printf(
          "bench train also takes: --measure-steps N (5) timed steps, --warmup-steps-bench N (1)\n"
          "untimed steps first, --weak-scaling (global batch = the preset's x ranks, so each\n"
          "rank keeps the per-rank batch of a 1-rank run), --compare-recompute (the time per\n"
          "step of --recompute none, moe and full side by side: three trainers in this process,\n"
          "their steps interleaved). Metrics go to --out as in train.\n");
    return 0;
  }
  if (weak) cfg.global_batch *= world.size();
  cfg.steps = warmup + measure;
  cfg.schedule.warmup_steps = std::min<int64_t>(cfg.schedule.warmup_steps, cfg.steps);
  cfg.eval_every = 0;
  Topology topo = Topology::create(cfg.ep_size > 0 ? cfg.ep_size : world.size());
  cfg.ep_size = topo.ep_size;
  if (compare) return compare_recompute(cfg, topo, warmup, measure);
  Trainer trainer(cfg, topo);
  double seconds = 0.0, compute = 0.0, a2a = 0.0, ar = 0.0, opt = 0.0;
  int64_t peak_rss = -1, peak_tensor = 0;  // max over ranks and measured steps
  ProgressLine progress(root);
  for (int s = 0; s < warmup + measure; ++s) {
    const StepResult r = trainer.step();
    progress.update(fmt::format("  step {}/{}: {:.3f} s, loss {:.4f}", s + 1, warmup + measure,
                                r.seconds, r.loss));
    if (s < warmup) continue;
    seconds += r.seconds;
    compute += r.t_compute;
    a2a += r.t_alltoall;
    ar += r.t_allreduce;
    opt += r.t_optimizer;
    peak_rss = std::max(peak_rss, trainer.step_memory().peak_rss_bytes);
    peak_tensor = std::max(peak_tensor, trainer.step_memory().peak_tensor_bytes);
  }
  progress.finish();
  const double tokens = static_cast<double>(cfg.global_batch * cfg.model.seq_len) * measure;
  const double tps = tokens / seconds;
  const double fpt = flops_per_token(cfg.model);
  const double peak = trainer.sgemm_peak_gflops();
  const double mfu = fpt * tps / world.size() / (peak * 1e9);
  const ParamCounts pc = count_params(cfg.model);
  if (root) {
    std::printf(
        "bench train: %s, %d rank(s) (EP %d), OpenBLAS %s, %.1fM params (%.1fM activated), "
        "%ld x %ld tokens per step\n"
        "  tokens/s %.0f (%.0f per rank) | model %.1f MFLOP/token | MFU %.1f%% of sgemm peak "
        "%.1f GFLOP/s per rank\n"
        "  time per step: compute %.3f s, all-to-all %.3f s, all-reduce %.3f s, optimizer %.3f s\n"
        "  memory per rank (max over ranks and steps): peak RSS %.1f MiB, peak tensors %.1f MiB "
        "(--recompute %s)\n",
        cfg.config_file.empty() ? "defaults" : cfg.config_file.c_str(), world.size(), topo.ep_size,
        blas_core(), pc.total / 1e6, pc.activated_per_token / 1e6,
        static_cast<long>(cfg.global_batch), static_cast<long>(cfg.model.seq_len), tps,
        tps / world.size(), fpt / 1e6, 100.0 * mfu, peak, compute / measure, a2a / measure,
        ar / measure, opt / measure, static_cast<double>(peak_rss) / (1 << 20),
        static_cast<double>(peak_tensor) / (1 << 20), to_string(cfg.model.recompute).c_str());
    std::printf(
        "{\"bench\": \"train\", \"config\": \"%s\", \"ranks\": %d, \"ep\": %d, \"global_batch\": "
        "%ld, "
        "\"seq_len\": %ld, \"tokens_per_s\": %.1f, \"tokens_per_s_per_rank\": %.1f, "
        "\"flops_per_token\": %.4g, \"sgemm_peak_gflops\": %.2f, \"mfu\": %.4f, "
        "\"step_s\": %.4f, \"recompute\": \"%s\", \"peak_rss_bytes\": %ld, "
        "\"peak_tensor_bytes\": %ld}\n",
        cfg.config_file.c_str(), world.size(), topo.ep_size, static_cast<long>(cfg.global_batch),
        static_cast<long>(cfg.model.seq_len), tps, tps / world.size(), fpt, peak, mfu,
        seconds / measure, to_string(cfg.model.recompute).c_str(), static_cast<long>(peak_rss),
        static_cast<long>(peak_tensor));
  }
  return 0;
}

}  // namespace moerun
