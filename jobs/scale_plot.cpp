// gnuplot script and data files for the scaling plots, written to a temporary directory and run
// by gnuplot (posix_spawnp: no shell, so paths need no quoting beyond gnuplot's own).
#include "jobs/scale_plot.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "runtime/check.h"

extern char** environ;

namespace moerun {

namespace fs = std::filesystem;

namespace {

// A temporary directory removed on scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "moerun-scale.XXXXXX").string();
    MOERUN_REQUIRE(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp({}): {}", tmpl,
                   std::strerror(errno));
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// gnuplot strings are double-quoted: keep the text free of quotes and backslashes.
std::string gp_text(std::string s) {
  std::replace(s.begin(), s.end(), '"', '\'');
  std::replace(s.begin(), s.end(), '\\', '/');
  return s;
}

bool on_path(const std::string& exe) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string d;
  while (std::getline(dirs, d, ':'))
    if (!d.empty() && ::access((fs::path(d) / exe).c_str(), X_OK) == 0) return true;
  return false;
}

// Runs `gnuplot SCRIPT` with stdout and stderr into LOG; returns the exit status (-1: no start).
int run_gnuplot(const fs::path& script, const fs::path& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::string prog = "gnuplot", arg = script.string();
  char* argv[] = {prog.data(), arg.data(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "gnuplot", &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct Series {
  std::string name;
  fs::path data;  // ranks tokens_per_s efficiency "NxR"
};

// One panel: the series of one kind, or a note when the study has none.
void panel(std::ostream& gp, const std::vector<Series>& series, const std::string& title,
           const std::string& ylabel, int column, bool ideal, const std::set<int64_t>& ranks) {
  gp << "set title \"" << gp_text(title) << "\"\n";
  gp << "set ylabel \"" << ylabel << "\"\n";
  if (series.empty()) {
    gp << "unset logscale x\nset xrange [0:1]\nset yrange [0:1]\nset offsets 0, 0, 0, 0\n"
          "set xtics autofreq\n"
          "set label 1 \"no runs of this kind\" at graph 0.5,0.5 center\n"
          "plot 2 notitle\nunset label 1\n";
    return;
  }
  gp << "set logscale x 2\n";
  gp << fmt::format("set xrange [{}:{}]\n", static_cast<double>(*ranks.begin()) / 1.5,
                    static_cast<double>(*ranks.rbegin()) * 1.5);
  gp << fmt::format("set xtics ({})\n", fmt::join(ranks, ", "));
  gp << "set yrange [0:*]\nset offsets 0, 0, graph 0.15, 0\n";
  std::vector<std::string> terms;
  for (size_t i = 0; i < series.size(); ++i) {
    const std::string f = gp_text(series[i].data.string());
    terms.push_back(
        fmt::format("\"{0}\" using 1:{1} with linespoints lw 1.5 pt 7 ps 1.2 lc {3} title \"{2}\"",
                    f, column, gp_text(series[i].name), i + 1));
    terms.push_back(
        fmt::format("\"{0}\" using 1:{1}:4 with labels offset 0,0.9 font \",8\" tc lt {2} notitle",
                    f, column, i + 1));
  }
  if (ideal) terms.push_back("1 with lines dt 2 lw 1 lc rgb \"gray40\" title \"ideal\"");
  gp << "plot " << fmt::format("{}", fmt::join(terms, ", ")) << "\n";
}

}  // namespace

std::vector<std::string> plot_scaling(const std::vector<ScalePoint>& points,
                                      const std::string& out_dir, const std::string& title) {
  MOERUN_CONFIG_REQUIRE(on_path("gnuplot"),
                        "gnuplot not found (install the Debian package gnuplot-nox) or pass "
                        "--no-plots");
  TempDir tmp;
  // One data file per (kind, series), rows in ranks order (the points come sorted).
  std::map<ScaleKind, std::vector<Series>> by_kind;
  std::map<ScaleKind, std::set<int64_t>> ranks;
  std::map<std::pair<ScaleKind, std::string>, std::ofstream> files;
  for (const ScalePoint& p : points) {
    if (p.kind == ScaleKind::kOther || !p.efficiency) continue;
    auto key = std::make_pair(p.kind, p.series);
    if (!files.count(key)) {
      const fs::path f = tmp.path / fmt::format("{}-{}.dat", to_string(p.kind), files.size());
      files.emplace(key, std::ofstream(f));
      by_kind[p.kind].push_back({p.series, f});
    }
    ranks[p.kind].insert(p.ranks);
    files.at(key) << fmt::format("{} {:.6g} {:.6g} \"{}x{}\"\n", p.ranks, p.tokens_per_s,
                                 *p.efficiency, p.nodes, p.ranks_per_node);
  }
  for (auto& [k, f] : files) f.close();

  const fs::path out(out_dir);
  const fs::path thr = out / "scaling_throughput.png", eff = out / "scaling_efficiency.png";
  const fs::path script = tmp.path / "scaling.gp";
  {
    std::ofstream gp(script);
    gp << "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
          "  set terminal pngcairo size 1300,560 noenhanced font \",10\"\n"
          "} else {\n"
          "  set terminal png size 1300,560 noenhanced\n"
          "}\n"
          "set grid\nset key outside bottom center horizontal\nset xlabel \"ranks (labels: nodes x "
          "ranks per node)\"\n";
    const std::string weak = "weak scaling (tokens per rank fixed)";
    const std::string strong = "strong scaling (global batch fixed)";
    for (const auto& [path, ylabel, column, ideal] :
         {std::tuple{thr, "tokens/s (all ranks)", 2, false},
          std::tuple{eff, "efficiency vs the smallest run", 3, true}}) {
      gp << "set output \"" << gp_text(path.string()) << "\"\n";
      gp << "set multiplot layout 1,2 title \"" << gp_text(title) << "\"\n";
      panel(gp, by_kind[ScaleKind::kWeak], weak, ylabel, column, ideal, ranks[ScaleKind::kWeak]);
      panel(gp, by_kind[ScaleKind::kStrong], strong, ylabel, column, ideal,
            ranks[ScaleKind::kStrong]);
      gp << "unset multiplot\nunset output\n";
    }
  }
  const fs::path log = tmp.path / "gnuplot.log";
  const int rc = run_gnuplot(script, log);
  std::ifstream in(log);
  const std::string errors((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  MOERUN_REQUIRE(rc == 0, "gnuplot failed (exit {}): {}", rc, errors);
  for (const fs::path& f : {thr, eff})
    MOERUN_REQUIRE(fs::is_regular_file(f) && fs::file_size(f) > 0, "gnuplot wrote no {}: {}",
                   f.string(), errors);
  return {thr.string(), eff.string()};
}

}  // namespace moerun
