// Reading one scaling-study run directory into a ScalePoint, and the efficiency of the points.
#include "jobs/scale_collect.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <tuple>

#include "runtime/check.h"

namespace moerun {

namespace fs = std::filesystem;
using nlohmann::json;

std::string to_string(ScaleKind k) {
  switch (k) {
    case ScaleKind::kWeak:
      return "weak";
    case ScaleKind::kStrong:
      return "strong";
    case ScaleKind::kOther:
      break;
  }
  return "other";
}

std::string to_string(MaxVioSource s) {
  switch (s) {
    case MaxVioSource::kEvalGlobal:
      return "eval_global";
    case MaxVioSource::kBatchMean:
      return "batch_mean";
    case MaxVioSource::kNone:
      break;
  }
  return "";
}

double percentile(std::vector<double> values, double p) {
  MOERUN_REQUIRE(!values.empty(), "percentile of no values");
  std::sort(values.begin(), values.end());
  const double pos = p / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (pos - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

namespace {

// "key = value" lines (config.ini, study.ini); '#' starts a comment line.
std::map<std::string, std::string> read_ini(const fs::path& path) {
  std::map<std::string, std::string> kv;
  std::ifstream in(path);
  std::string line;
  auto trim = [](std::string s) {
    const auto b = s.find_first_not_of(" \t\r");
    const auto e = s.find_last_not_of(" \t\r");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
  };
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    kv[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  return kv;
}

std::optional<int64_t> ini_int(const std::map<std::string, std::string>& kv, const char* key) {
  auto it = kv.find(key);
  if (it == kv.end()) return std::nullopt;
  try {
    size_t used = 0;
    const int64_t v = std::stoll(it->second, &used);
    if (used == it->second.size()) return v;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

std::optional<double> num(const json& obj, const char* key) {
  if (!obj.is_object() || !obj.contains(key) || !obj.at(key).is_number()) return std::nullopt;
  const double v = obj.at(key).get<double>();
  return std::isfinite(v) ? std::optional<double>(v) : std::nullopt;
}

std::optional<double> layer_mean(const json& obj, const char* key) {
  if (!obj.is_object() || !obj.contains(key) || !obj.at(key).is_array()) return std::nullopt;
  double sum = 0;
  int64_t n = 0;
  for (const json& v : obj.at(key))
    if (v.is_number() && std::isfinite(v.get<double>())) {
      sum += v.get<double>();
      ++n;
    }
  return n > 0 ? std::optional<double>(sum / static_cast<double>(n)) : std::nullopt;
}

double median(const std::vector<double>& v) {
  return percentile(v, 50);
}

double mean(const std::vector<double>& v) {
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

// The metrics file as records; a line that does not parse is a problem (a truncated last line
// means the run was killed while writing).
struct Records {
  std::vector<json> run, train, eval;
  std::string problem;
};

Records read_metrics(const fs::path& path) {
  Records r;
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  const bool ends_with_newline = [&] {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    const auto size = static_cast<std::streamoff>(f.tellg());
    if (size <= 0) return true;
    f.seekg(size - 1);
    return f.get() == '\n';
  }();
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t\r") == std::string::npos) continue;
    json rec = json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
    if (rec.is_discarded() || !rec.is_object()) {
      const bool last = i + 1 == lines.size();
      r.problem = last ? fmt::format(
                             "metrics.jsonl ends in a truncated line (line {}{}): the run "
                             "was killed while writing",
                             i + 1, ends_with_newline ? "" : ", no newline")
                       : fmt::format("metrics.jsonl line {} is not a JSON object", i + 1);
      return r;
    }
    const std::string type = rec.value("type", "");
    if (type == "run")
      r.run.push_back(std::move(rec));
    else if (type == "train")
      r.train.push_back(std::move(rec));
    else if (type == "eval")
      r.eval.push_back(std::move(rec));
  }
  return r;
}

}  // namespace

ReadResult read_scale_run(const std::string& dir, int64_t warmup) {
  const fs::path d(dir);
  ScalePoint p;
  p.run = d.filename().string();
  auto fail = [](std::string why) { return ReadResult{std::nullopt, std::move(why)}; };

  const fs::path metrics = d / "metrics.jsonl";
  if (!fs::is_regular_file(metrics)) return fail("no metrics.jsonl (the run did not start?)");
  const fs::path config = d / "config.ini";
  if (!fs::is_regular_file(config)) return fail("no config.ini (not a `moerun train --out` dir?)");
  const auto cfg = read_ini(config);
  const std::optional<int64_t> steps = ini_int(cfg, "steps");
  if (!steps || *steps <= 0) return fail("config.ini has no positive `steps`");
  p.steps = *steps;

  const Records rec = read_metrics(metrics);
  if (!rec.problem.empty()) return fail(rec.problem);
  if (rec.run.empty()) return fail("metrics.jsonl has no run record");

  // Layout: the last run record (a resumed run writes one per start; they must agree).
  const json& run = rec.run.back();
  const auto ranks = num(run, "ranks"), ep = num(run, "ep");
  if (!ranks || !ep || *ranks < 1 || *ep < 1) return fail("the run record has no ranks / ep");
  for (const json& r : rec.run)
    if (num(r, "ranks") != ranks || num(r, "ep") != ep)
      return fail("its run records disagree on ranks / EP (resumed with another layout)");
  p.ranks = static_cast<int64_t>(*ranks);
  p.ep = static_cast<int64_t>(*ep);
  p.expert_dp = static_cast<int64_t>(num(run, "expert_dp").value_or(*ranks / *ep));
  // Metrics from before the node fields: the hosts list, else one node.
  if (auto n = num(run, "nodes")) {
    p.nodes = static_cast<int64_t>(*n);
    p.ranks_per_node = static_cast<int64_t>(num(run, "ranks_per_node").value_or(0));
  } else if (run.contains("hosts") && run.at("hosts").is_array()) {
    std::map<std::string, int64_t> per_host;
    for (const json& h : run.at("hosts")) ++per_host[h.is_string() ? h.get<std::string>() : "?"];
    p.nodes = static_cast<int64_t>(per_host.size());
    for (const auto& [host, count] : per_host) p.ranks_per_node = std::max(p.ranks_per_node, count);
  } else {
    p.nodes = 1;
  }
  if (p.ranks_per_node <= 0)
    p.ranks_per_node = (p.ranks + p.nodes - 1) / std::max<int64_t>(1, p.nodes);
  p.global_batch = static_cast<int64_t>(
      num(run, "global_batch")
          .value_or(static_cast<double>(ini_int(cfg, "global-batch").value_or(0))));
  p.seq_len = static_cast<int64_t>(
      num(run, "seq_len").value_or(static_cast<double>(ini_int(cfg, "seq-len").value_or(0))));
  const double tokens_per_step =
      num(run, "tokens_per_step").value_or(static_cast<double>(p.global_batch * p.seq_len));
  if (tokens_per_step <= 0) return fail("the run record has no tokens_per_step / global batch");

  // Train lines by step; a step written twice (a resume repeats the steps after the newest
  // checkpoint) counts once, the later line wins.
  std::map<int64_t, const json*> by_step;
  for (const json& t : rec.train)
    if (auto s = num(t, "step")) by_step[static_cast<int64_t>(*s)] = &t;
  int64_t have = 0;
  for (int64_t s = 1; s <= p.steps; ++s) have += by_step.count(s);
  if (have < p.steps)
    return fail(fmt::format("half-written: {} of {} train steps in metrics.jsonl", have, p.steps));

  std::vector<double> step_s, share, inter, intra, mvb;
  for (const auto& [s, t] : by_step) {
    if (s <= warmup || s > p.steps) continue;
    std::optional<double> secs = num(*t, "step_seconds");
    if (!secs) {  // metrics from before step_seconds: the step time behind tokens_per_s
      const auto tps = num(*t, "tokens_per_s");
      if (tps && *tps > 0) secs = tokens_per_step / *tps;
    }
    if (!secs || *secs <= 0) return fail(fmt::format("train step {} has no step time", s));
    step_s.push_back(*secs);
    if (t->contains("time"))
      if (auto a2a = num(t->at("time"), "alltoall")) share.push_back(*a2a / *secs);
    if (t->contains("a2a_bytes")) {
      if (auto b = num(t->at("a2a_bytes"), "inter_node")) inter.push_back(*b);
      if (auto b = num(t->at("a2a_bytes"), "intra_node")) intra.push_back(*b);
    }
    if (auto m = layer_mean(*t, "maxvio_batch")) mvb.push_back(*m);
  }
  if (step_s.empty())
    return fail(fmt::format("no train step after the warm-up ({} of {} steps; lower --warmup)",
                            warmup, p.steps));
  p.steps_used = static_cast<int64_t>(step_s.size());
  p.step_s_median = median(step_s);
  p.step_s_p5 = percentile(step_s, 5);
  p.step_s_p95 = percentile(step_s, 95);
  p.tokens_per_s = tokens_per_step / p.step_s_median;
  p.tokens_per_s_per_rank = p.tokens_per_s / static_cast<double>(p.ranks);
  if (share.size() == step_s.size()) p.alltoall_share = median(share);
  if (inter.size() == step_s.size()) p.inter_node_bytes = mean(inter);
  if (intra.size() == step_s.size()) p.intra_node_bytes = mean(intra);

  // MaxVio: the last evaluation's global MaxVio (mean over MoE layers), else the batch MaxVio.
  for (auto it = rec.eval.rbegin(); it != rec.eval.rend() && !p.maxvio; ++it)
    if (auto m = layer_mean(*it, "maxvio_global")) {
      p.maxvio = m;
      p.maxvio_source = MaxVioSource::kEvalGlobal;
    }
  if (!p.maxvio && !mvb.empty()) {
    p.maxvio = mean(mvb);
    p.maxvio_source = MaxVioSource::kBatchMean;
  }

  // Kind and series: study.ini (slurm/scaling-study.sh writes it), else the directory name.
  const auto study = read_ini(d / "study.ini");
  std::string kind = study.count("kind") ? study.at("kind") : std::string();
  if (kind.empty()) {
    if (p.run.rfind("weak", 0) == 0) kind = "weak";
    if (p.run.rfind("strong", 0) == 0) kind = "strong";
  }
  p.kind = kind == "weak"     ? ScaleKind::kWeak
           : kind == "strong" ? ScaleKind::kStrong
                              : ScaleKind::kOther;
  p.series = study.count("series") && !study.at("series").empty() ? study.at("series")
                                                                  : fmt::format("ep={}", p.ep);
  return {p, ""};
}

void add_efficiency(std::vector<ScalePoint>& points) {
  auto order = [](const ScalePoint& a, const ScalePoint& b) {
    return std::tie(a.kind, a.series, a.ranks, a.nodes, a.run) <
           std::tie(b.kind, b.series, b.ranks, b.nodes, b.run);
  };
  std::sort(points.begin(), points.end(), order);
  // After the sort the first point of each (kind, series) is its base.
  const ScalePoint* base = nullptr;
  for (ScalePoint& p : points) {
    if (!base || base->kind != p.kind || base->series != p.series) base = &p;
    if (p.kind == ScaleKind::kOther) continue;
    p.base_run = base->run;
    p.speedup = p.tokens_per_s / base->tokens_per_s;
    if (p.kind == ScaleKind::kWeak)
      p.efficiency = p.tokens_per_s_per_rank / base->tokens_per_s_per_rank;
    else
      p.efficiency = *p.speedup / (static_cast<double>(p.ranks) / static_cast<double>(base->ranks));
  }
}

}  // namespace moerun
