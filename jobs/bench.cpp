// `moerun bench moe-layer` and `moerun bench gemm`: measurements side by side in one run,
// printed as a table (rank 0) and one JSON line. Never used by tests for timing.
#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "comm/topology.h"
#include "jobs/jobs.h"
#include "jobs/moe_options.h"
#include "layers/moe.h"
#include "runtime/blas.h"
#include "runtime/metrics.h"
#include "runtime/rng.h"
#include "runtime/timer.h"

namespace moerun {

namespace po = boost::program_options;

namespace {

// Parses the command line; false after printing --help (rank 0).
bool parse_or_help(int argc, char** argv, const po::options_description& desc, const Comm& world,
                   po::variables_map& vm) {
  po::store(po::parse_command_line(argc, argv, desc), vm);
  po::notify(vm);
  if (vm.count("help") == 0) return true;
  if (world.rank() == 0) std::cout << desc << "\n";
  return false;
}

double max_over(const Comm& c, double v) {
  c.allreduce_max(std::span<double>(&v, 1));
  return v;
}
double sum_over(const Comm& c, double v) {
  c.allreduce_sum(std::span<double>(&v, 1));
  return v;
}

int bench_gemm(int argc, char** argv, const Comm& world) {
  po::options_description desc(
      "moerun bench gemm: plain sgemm GFLOP/s per rank (all ranks at once)");
  desc.add_options()("help,h", "show this help")("m", po::value<int64_t>()->default_value(2048),
                                                 "rows M")(
      "n", po::value<int64_t>()->default_value(2048), "columns N")(
      "k", po::value<int64_t>()->default_value(2048), "inner dimension K")(
      "reps", po::value<int>()->default_value(5), "repetitions (best is reported)")(
      "threads", po::value<int>()->default_value(0),
      "BLAS threads per rank (0 = cores / ranks on the node)")("json", "print only the JSON line");
  po::variables_map vm;
  if (!parse_or_help(argc, argv, desc, world, vm)) return 0;
  Topology topo = Topology::create(1);
  const int threads = vm["threads"].as<int>() > 0 ? vm["threads"].as<int>()
                                                  : default_blas_threads(topo.local_size());
  set_blas_threads(threads);
  const int64_t M = vm["m"].as<int64_t>(), N = vm["n"].as<int64_t>(), K = vm["k"].as<int64_t>();
  MOERUN_CONFIG_REQUIRE(M > 0 && N > 0 && K > 0, "--m, --n, --k must be > 0");
  world.barrier();
  const double t = max_over(world, time_sgemm(M, N, K, vm["reps"].as<int>()));
  const double gflops = 2.0 * M * N * K / t / 1e9;
  if (world.rank() == 0) {
    if (!vm.count("json"))
      std::printf(
          "sgemm %ldx%ldx%ld  %d rank(s) x %d thread(s): %.1f GFLOP/s per rank, %.1f total\n",
          static_cast<long>(M), static_cast<long>(N), static_cast<long>(K), world.size(), threads,
          gflops, gflops * world.size());
    std::printf(
        "{\"bench\": \"gemm\", \"ranks\": %d, \"threads\": %d, \"gflops_per_rank\": %.2f, "
        "\"gflops_total\": %.2f}\n",
        world.size(), threads, gflops, gflops * world.size());
  }
  return 0;
}

int bench_moe_layer(int argc, char** argv, const Comm& world) {
  MoEConfig d;
  d.hidden = 1024;
  d.expert_width = 256;
  d.routed_experts = 64;
  d.shared_experts = 2;
  d.top_k = 6;
  po::options_description desc(
      "moerun bench moe-layer: forward+backward of one expert-parallel DeepSeekMoE layer");
  desc.add_options()("help,h", "show this help")(
      "tokens", po::value<int64_t>()->default_value(4096), "tokens per rank T")(
      "ep-size", po::value<int>()->default_value(0), "expert-parallel size (0 = all ranks)")(
      "iters", po::value<int>()->default_value(5), "timed iterations")(
      "warmup", po::value<int>()->default_value(1), "untimed iterations first")(
      "threads", po::value<int>()->default_value(0),
      "BLAS threads per rank (0 = cores / ranks on the node)")(
      "seed", po::value<uint64_t>()->default_value(1), "weights and inputs seed")(
      "json", "print only the JSON line");
  add_moe_options(desc, d);
  po::variables_map vm;
  if (!parse_or_help(argc, argv, desc, world, vm)) return 0;
  MoEConfig cfg = moe_config_from(vm);
  const int ep_size = vm["ep-size"].as<int>() > 0 ? vm["ep-size"].as<int>() : world.size();
  const int64_t T = vm["tokens"].as<int64_t>();
  const int iters = vm["iters"].as<int>(), warmup = vm["warmup"].as<int>();
  MOERUN_CONFIG_REQUIRE(T > 0, "--tokens must be > 0 (got {})", T);
  MOERUN_CONFIG_REQUIRE(iters >= 1 && warmup >= 0, "--iters must be >= 1 and --warmup >= 0");
  cfg.validate(ep_size);
  Topology topo = Topology::create(ep_size);
  set_node_map(cfg, topo);  // the node of each EP rank, for --max-nodes-per-token
  const int threads = vm["threads"].as<int>() > 0 ? vm["threads"].as<int>()
                                                  : default_blas_threads(topo.local_size());
  set_blas_threads(threads);
  const bool quiet = vm.count("json") > 0;
  const bool root = world.rank() == 0;

  MoELayer layer(cfg, topo.ep);
  const uint64_t seed = vm["seed"].as<uint64_t>();
  layer.init(seed, 0.02f);
  Tensor x = Tensor::empty({T, cfg.hidden}), dy = Tensor::empty({T, cfg.hidden});
  Rng rng(seed + 1, static_cast<uint64_t>(world.rank()));
  for (float& v : x.span<float>()) v = static_cast<float>(rng.normal());
  for (float& v : dy.span<float>()) v = static_cast<float>(rng.normal() * 1e-3);

  double step_time = 1e30;
  ProgressLine progress(root && !quiet);
  for (int it = 0; it < warmup + iters; ++it) {
    if (it == warmup) {
      layer.times() = MoETimes{};
      layer.dispatcher().times() = DispatchTimes{};
    }
    world.barrier();
    const double t0 = now_seconds();
    Tensor y = layer.forward(x);
    Tensor dx = layer.backward(dy);
    const double t = max_over(world, now_seconds() - t0);
    if (it >= warmup) step_time = std::min(step_time, t);
    if (!quiet)
      progress.update(fmt::format("  iteration {}/{}: {:.3f} s{}", it + 1, warmup + iters, t,
                                  it < warmup ? " (warm-up)" : ""));
  }
  progress.finish();

  // Per-iteration averages of the timed part.
  const MoETimes mt = layer.times();
  const DispatchTimes dt = layer.dispatcher().times();
  const double expert_s = mt.experts / iters;
  const double rows = static_cast<double>(mt.expert_rows) / iters;
  const double H = static_cast<double>(cfg.hidden), F = static_cast<double>(cfg.expert_width);
  const double expert_flops = 18.0 * rows * H * F;  // fwd 6nHF + bwd 12nHF
  const double expert_gflops = expert_flops / expert_s / 1e9;
  // A plain sgemm of the same FLOPs, on this rank's permuted rows: (rows x 2F x H) repeated.
  const int64_t M = std::max<int64_t>(1, static_cast<int64_t>(rows));
  const double plain_t = time_sgemm(M, 2 * cfg.expert_width, cfg.hidden, 5);
  const double plain_gflops = 2.0 * M * 2 * F * H / plain_t / 1e9;
  const double dc_in_step = (dt.local + dt.exchange) / iters;

  // The dispatcher alone, on the same routing: dispatch, combine, combine_backward,
  // dispatch_backward back to back (no rank waits for another's GEMMs), best of iters + 1.
  Dispatcher& disp = layer.dispatcher();
  const RouterOutput& routing = layer.routing();
  double dc_s = 1e30;
  DispatchResult r;
  for (int rep = 0; rep < iters + 1; ++rep) {
    world.barrier();
    const double t0 = now_seconds();
    r = disp.dispatch(x, routing.dispatch_idx, routing.topk_weight);
    Tensor y = disp.combine(r.recv_x, r.handle);
    Tensor g = disp.combine_backward(dy, r.handle);
    Tensor dw = Tensor::zeros({r.handle.recv_pairs()});
    DispatchBackward b = disp.dispatch_backward(g, dw, r.handle);
    dc_s = std::min(dc_s, now_seconds() - t0);
  }

  // Raw MPI_Alltoallv of the same row bytes (4 calls: dispatch, combine and their backward),
  // and of the bytes a dispatcher without per-rank dedup would move (one row per routed pair).
  const size_t row_bytes = static_cast<size_t>(cfg.hidden) * sizeof(float);
  auto raw_alltoallv = [&](const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
    int64_t ns = 0, nr = 0;
    for (int64_t v : send) ns += v;
    for (int64_t v : recv) nr += v;
    Tensor a = Tensor::zeros({std::max<int64_t>(ns, 1), cfg.hidden});
    Tensor b = Tensor::zeros({std::max<int64_t>(nr, 1), cfg.hidden});
    double best = 1e30;
    for (int rep = 0; rep < iters + 1; ++rep) {
      world.barrier();
      const double t0 = now_seconds();
      for (int k = 0; k < 2; ++k) {
        topo.ep.alltoallv_records(a.f32(), send, b.f32(), recv, row_bytes);
        topo.ep.alltoallv_records(b.f32(), recv, a.f32(), send, row_bytes);
      }
      best = std::min(best, now_seconds() - t0);
    }
    return best;
  };
  const double raw_s =
      raw_alltoallv(r.handle.layout.tokens_per_rank, r.handle.recv_tokens_per_rank);
  const double raw_pairs_s =
      max_over(world, raw_alltoallv(r.handle.layout.pairs_per_rank, r.handle.recv_pairs_per_rank));
  int64_t rows_sent = 0, pairs_sent = 0;
  for (int64_t v : r.handle.layout.tokens_per_rank) rows_sent += v;
  for (int64_t v : r.handle.layout.pairs_per_rank) pairs_sent += v;
  // Rows sent to ranks on other nodes, all ranks: the traffic --max-nodes-per-token bounds.
  std::vector<int64_t> rows_all = {rows_sent, 0};
  const int me = topo.world_rank(), first = me - me % ep_size;
  for (size_t q = 0; q < r.handle.layout.tokens_per_rank.size(); ++q)
    if (!topo.same_host(me, first + static_cast<int>(q)))
      rows_all[1] += r.handle.layout.tokens_per_rank[q];
  world.allreduce_sum(std::span<int64_t>(rows_all));
  const double dc_max = max_over(world, dc_s), raw_max = max_over(world, raw_s);
  const double tokens_per_s = static_cast<double>(T) * world.size() / step_time;
  const double expert_gflops_avg = sum_over(world, expert_gflops) / world.size();
  const double plain_gflops_avg = sum_over(world, plain_gflops) / world.size();
  double rss = static_cast<double>(peak_rss_bytes());
  rss = max_over(world, rss);
  if (root) {
    if (!quiet) {
      std::printf(
          "moe-layer fwd+bwd: %d rank(s) (EP %d) x %d BLAS thread(s) (OpenBLAS %s), T=%ld/rank "
          "H=%ld F=%ld E=%ld K=%ld S=%ld\n",
          world.size(), ep_size, threads, blas_core(), static_cast<long>(T),
          static_cast<long>(cfg.hidden), static_cast<long>(cfg.expert_width),
          static_cast<long>(cfg.routed_experts), static_cast<long>(cfg.top_k),
          static_cast<long>(cfg.shared_experts));
      std::printf("  %-34s %12s %12s %8s\n", "measure", "moerun", "reference", "ratio");
      std::printf("  %-34s %12.0f %12s %8s\n", "tokens/s (all ranks)", tokens_per_s, "", "");
      std::printf("  %-34s %12.3f %12s %8s\n", "step fwd+bwd (s)", step_time, "", "");
      std::printf("  %-34s %12.1f %12.1f %7.0f%%\n", "expert GEMMs GFLOP/s vs sgemm",
                  expert_gflops_avg, plain_gflops_avg,
                  100.0 * expert_gflops_avg / plain_gflops_avg);
      std::printf("  %-34s %12.4f %12.4f %7.2fx\n", "dispatch+combine vs raw a2a (s)", dc_max,
                  raw_max, dc_max / raw_max);
      std::printf("  %-34s %12.4f %12.4f %7.2fx\n", "  vs raw a2a of one row per pair (s)", dc_max,
                  raw_pairs_s, dc_max / raw_pairs_s);
      std::printf("  %-34s %12ld %12ld %7.2fx\n", "  rows sent (rank 0) vs pairs",
                  static_cast<long>(rows_sent), static_cast<long>(pairs_sent),
                  static_cast<double>(rows_sent) / static_cast<double>(pairs_sent));
      std::printf("  %-34s %12ld %12ld %7.2fx\n", "  rows sent off-node vs all (all ranks)",
                  static_cast<long>(rows_all[1]), static_cast<long>(rows_all[0]),
                  static_cast<double>(rows_all[1]) / static_cast<double>(rows_all[0]));
      std::printf("  %-34s %12.1f %12s %8s\n", "peak RSS per rank (MiB)", rss / 1048576.0, "", "");
      std::printf(
          "  time split per step (rank 0): router %.3f s, experts %.3f s, shared %.3f s, "
          "dispatch+combine %.3f s (local %.3f s + exchange %.3f s)\n",
          mt.router / iters, expert_s, mt.shared / iters, dc_in_step, dt.local / iters,
          dt.exchange / iters);
    }
    std::printf(
        "{\"bench\": \"moe-layer\", \"ranks\": %d, \"ep\": %d, \"threads\": %d, \"blas_core\": "
        "\"%s\", "
        "\"tokens\": %ld, "
        "\"hidden\": %ld, \"ffn\": %ld, \"experts\": %ld, \"topk\": %ld, \"shared\": %ld, "
        "\"fwd_bwd_s\": %.5f, \"tokens_per_s\": %.1f, \"expert_gflops\": %.2f, "
        "\"sgemm_gflops\": %.2f, \"expert_vs_sgemm\": %.4f, \"dispatch_combine_s\": %.5f, "
        "\"raw_alltoallv_s\": %.5f, \"dispatch_vs_raw\": %.4f, \"raw_alltoallv_pairs_s\": %.5f, "
        "\"rows_sent\": %ld, \"rows_off_node\": %ld, \"max_nodes_per_token\": %ld, "
        "\"max_devices_per_token\": %ld, \"peak_rss_mib\": %.1f}\n",
        world.size(), ep_size, threads, blas_core(), static_cast<long>(T),
        static_cast<long>(cfg.hidden), static_cast<long>(cfg.expert_width),
        static_cast<long>(cfg.routed_experts), static_cast<long>(cfg.top_k),
        static_cast<long>(cfg.shared_experts), step_time, tokens_per_s, expert_gflops_avg,
        plain_gflops_avg, expert_gflops_avg / plain_gflops_avg, dc_max, raw_max, dc_max / raw_max,
        raw_pairs_s, static_cast<long>(rows_all[0]), static_cast<long>(rows_all[1]),
        static_cast<long>(cfg.max_nodes_per_token), static_cast<long>(cfg.max_devices_per_token),
        rss / 1048576.0);
  }
  return 0;
}

}  // namespace

int run_bench(int argc, char** argv) {
  Comm world = Comm::world();
  const std::string what = argc >= 2 ? argv[1] : "";
  if (what == "moe-layer") return bench_moe_layer(argc - 1, argv + 1, world);
  if (what == "gemm") return bench_gemm(argc - 1, argv + 1, world);
  if (what == "train") return run_bench_train(argc - 1, argv + 1);
  if (what == "checkpoint") return run_bench_checkpoint(argc - 1, argv + 1);
  MOERUN_CONFIG_REQUIRE(
      false, "moerun bench needs one of: moe-layer, gemm, train, checkpoint (got '{}')", what);
  return 2;
}

}  // namespace moerun
