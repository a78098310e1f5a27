// `moerun scale collect RESULTS_DIR`: the runs of a scaling study (slurm/scaling-study.sh) -> one
// CSV row per run and the scaling plots. Rank 0 does the work (one process is enough); a run that
// cannot be used is named with its reason in a warning line and skipped.
#include <fmt/format.h>

#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "comm/agree.h"
#include "comm/comm.h"
#include "jobs/jobs.h"
#include "jobs/scale_collect.h"
#include "jobs/scale_plot.h"
#include "runtime/check.h"
#include "runtime/log.h"

namespace moerun {

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

constexpr const char* kColumns =
    "run,kind,series,nodes,ranks,ranks_per_node,ep,expert_dp,global_batch,seq_len,steps,"
    "steps_used,tokens_per_s,tokens_per_s_per_rank,step_s_median,step_s_p5,step_s_p95,"
    "alltoall_share,inter_node_bytes_per_step,intra_node_bytes_per_step,maxvio,maxvio_source,"
    "speedup,efficiency,base_run";

// A CSV field: quoted when it holds a separator or a quote.
std::string field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string opt(const std::optional<double>& v, const char* f = "{:.6g}") {
  return v ? fmt::format(fmt::runtime(f), *v) : std::string();
}

void write_csv(const std::string& path, const std::vector<ScalePoint>& points) {
  std::ofstream out(path);
  MOERUN_CONFIG_REQUIRE(out.good(), "--out {}: cannot write the file", path);
  out << kColumns << "\n";
  for (const ScalePoint& p : points) {
    out << fmt::format(
        "{},{},{},{},{},{},{},{},{},{},{},{},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{},{},{},{},{},{},{"
        "},"
        "{}\n",
        field(p.run), to_string(p.kind), field(p.series), p.nodes, p.ranks, p.ranks_per_node, p.ep,
        p.expert_dp, p.global_batch, p.seq_len, p.steps, p.steps_used, p.tokens_per_s,
        p.tokens_per_s_per_rank, p.step_s_median, p.step_s_p5, p.step_s_p95,
        opt(p.alltoall_share, "{:.4f}"), opt(p.inter_node_bytes, "{:.0f}"),
        opt(p.intra_node_bytes, "{:.0f}"), opt(p.maxvio, "{:.4f}"), to_string(p.maxvio_source),
        opt(p.speedup, "{:.4f}"), opt(p.efficiency, "{:.4f}"), field(p.base_run));
  }
  out.close();
  MOERUN_CONFIG_REQUIRE(!out.fail(), "--out {}: writing the file failed", path);
}

// The whole collection; returns the exit status.
int collect(const std::string& dir, std::string csv, int64_t warmup, bool plots) {
  MOERUN_CONFIG_REQUIRE(fs::is_directory(dir), "'{}' is not a directory", dir);
  std::vector<fs::path> run_dirs;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && e.path().filename().string().rfind('.', 0) != 0)
      run_dirs.push_back(e.path());
  std::sort(run_dirs.begin(), run_dirs.end());
  MOERUN_CONFIG_REQUIRE(!run_dirs.empty(), "'{}' holds no run directories", dir);

  std::vector<ScalePoint> points;
  std::vector<SkippedRun> skipped;
  for (const fs::path& d : run_dirs) {
    ReadResult r = read_scale_run(d.string(), warmup);
    if (r.point)
      points.push_back(std::move(*r.point));
    else
      skipped.push_back({d.filename().string(), r.problem});
  }
  for (const SkippedRun& s : skipped)
    log::warn("moerun scale collect: WARNING: skipped run '{}': {}", s.run, s.reason);
  MOERUN_CONFIG_REQUIRE(!points.empty(),
                        "no run in '{}' could be collected ({} skipped, see the warnings above)",
                        dir, skipped.size());
  add_efficiency(points);

  if (csv.empty()) csv = (fs::path(dir) / "scaling.csv").string();
  const fs::path parent = fs::path(csv).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  write_csv(csv, points);
  std::printf("%s\n", csv.c_str());
  log::info(
      "moerun scale collect: {} run(s) collected, {} skipped; steps after the first {} "
      "(warm-up) -> {}",
      points.size(), skipped.size(), warmup, csv);
  if (plots) {
    const std::string title =
        fmt::format("{} ({} runs)", fs::path(dir).filename().string(), points.size());
    for (const std::string& png :
         plot_scaling(points, parent.empty() ? std::string(".") : parent.string(), title))
      std::printf("%s\n", png.c_str());
  }
  return 0;
}

}  // namespace

int run_scale(int argc, char** argv) {
  const Comm world = Comm::world();
  const std::string sub = argc > 1 ? argv[1] : "";
  po::options_description desc(
      "moerun scale collect RESULTS_DIR: every run directory under RESULTS_DIR (metrics.jsonl +\n"
      "config.ini from `moerun train --out`; slurm/scaling-study.sh makes them) -> one CSV row\n"
      "per run (layout, tokens/s, step time median/p5/p95 after the warm-up, all-to-all share,\n"
      "a2a bytes per step inside and between nodes, MaxVio, efficiency vs the smallest run of the\n"
      "same kind and series) and scaling_throughput.png + scaling_efficiency.png (weak | strong\n"
      "panels, one line per series) beside the CSV. A run that is missing or half-written is\n"
      "named in a warning and skipped; exit 1 when no run is left. One process does the work");
  auto add = desc.add_options();
  add("help,h", "show this help");
  add("results-dir", po::value<std::string>(),
      "the study's results directory (also the first positional argument)");
  add("out", po::value<std::string>()->default_value(""),
      "the CSV file (default RESULTS_DIR/scaling.csv); the PNGs go beside it");
  add("warmup", po::value<int64_t>()->default_value(2),
      "leave out the first N train steps (start-up, first touches) from the statistics");
  add("no-plots", "write the CSV only (no gnuplot)");
  if (sub == "--help" || sub == "-h" || sub.empty()) {
    if (world.rank() == 0)
      std::cout << "usage: moerun scale collect RESULTS_DIR [--out CSV] [--warmup N] "
                   "[--no-plots]\n"
                << desc << "\n";
    return sub.empty() ? 2 : 0;
  }
  MOERUN_CONFIG_REQUIRE(sub == "collect", "unknown scale job '{}' (expected: moerun scale collect)",
                        sub);
  po::positional_options_description pos;
  pos.add("results-dir", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(argc - 1, argv + 1).options(desc).positional(pos).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    if (world.rank() == 0)
      std::cout << "usage: moerun scale collect RESULTS_DIR [--out CSV] [--warmup N] "
                   "[--no-plots]\n"
                << desc << "\n";
    return 0;
  }
  MOERUN_CONFIG_REQUIRE(vm.count("results-dir"),
                        "a results directory is required: moerun scale collect RESULTS_DIR");
  const int64_t warmup = vm["warmup"].as<int64_t>();
  MOERUN_CONFIG_REQUIRE(warmup >= 0, "--warmup must be >= 0 (got {})", warmup);

  // Rank 0 only; the others learn its exit status, or its error (a clean exit everywhere).
  int64_t status = 0;
  on_rank0<ConfigError, ConfigError>(world, "scale collect", [&] {
    struct FlushStdout {
      ~FlushStdout() { std::fflush(stdout); }
    } flush;
    status = collect(vm["results-dir"].as<std::string>(), vm["out"].as<std::string>(), warmup,
                     vm.count("no-plots") == 0);
  });
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(&status, 1)), 0);
  return static_cast<int>(status);
}

}  // namespace moerun
