// Reading the runs of a scaling study (`moerun scale collect`): one run directory (metrics.jsonl,
// config.ini, optional study.ini) -> one ScalePoint of throughput, step-time, traffic and balance
// figures, and the efficiency of every point against the smallest run of its kind and series.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moerun {

// Weak: tokens per rank fixed (global batch grows with the ranks). Strong: global batch fixed.
enum class ScaleKind { kWeak, kStrong, kOther };

std::string to_string(ScaleKind k);

// Where the MaxVio column comes from.
enum class MaxVioSource { kNone, kEvalGlobal, kBatchMean };

std::string to_string(MaxVioSource s);

// One collected run: its layout (from the metrics' run record) and figures over the train steps
// after the warm-up. Optional figures are absent when the metrics do not carry them.
struct ScalePoint {
  std::string run;  // the run directory's name
  ScaleKind kind = ScaleKind::kOther;
  std::string series;  // one plotted line: study.ini's `series`, else "ep=<EP>"
  int64_t nodes = 0, ranks = 0, ranks_per_node = 0, ep = 0, expert_dp = 0;
  int64_t global_batch = 0, seq_len = 0;
  int64_t steps = 0;                 // config.ini's steps (all of them were found)
  int64_t steps_used = 0;            // after the warm-up
  double tokens_per_s = 0;           // tokens_per_step / median step time, all ranks
  double tokens_per_s_per_rank = 0;  // tokens_per_s / ranks
  double step_s_median = 0, step_s_p5 = 0, step_s_p95 = 0;
  std::optional<double> alltoall_share;  // median of time.alltoall / step_seconds
  std::optional<double> inter_node_bytes, intra_node_bytes;  // mean a2a bytes per step
  std::optional<double> maxvio;
  MaxVioSource maxvio_source = MaxVioSource::kNone;
  // Filled by add_efficiency (absent for kind kOther).
  std::optional<double> speedup, efficiency;
  std::string base_run;
};

// A run directory that cannot be collected: the reason, in words, for the warning line.
struct SkippedRun {
  std::string run;
  std::string reason;
};

// Reads one run directory. Returns the reason it cannot be used (missing or unreadable files, no
// run record, a truncated or unreadable line, fewer train steps than config.ini's steps, no step
// after the warm-up) instead of a point.
struct ReadResult {
  std::optional<ScalePoint> point;
  std::string problem;
};
ReadResult read_scale_run(const std::string& dir, int64_t warmup);

// Speedup and efficiency of every point of kind weak or strong against the base of its (kind,
// series): the run with the fewest ranks (then fewest nodes, then name). Weak: efficiency =
// tokens/s per rank / the base's. Strong: speedup = tokens/s / the base's, efficiency = speedup /
// (ranks / base ranks). Sorts the points by kind, series, ranks, nodes and name.
void add_efficiency(std::vector<ScalePoint>& points);

// Percentile p in [0, 100] of values with linear interpolation between order statistics
// (numpy's default); values must not be empty.
double percentile(std::vector<double> values, double p);

}  // namespace moerun
