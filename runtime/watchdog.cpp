// Watchdog threads and heartbeat files; see watchdog.h.
#include "runtime/watchdog.h"

#include <fmt/format.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <system_error>
#include <utility>

#include "runtime/check.h"

namespace moerun {

namespace fs = std::filesystem;

namespace {

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "?";
  return buf;
}

// "1, 2, 5 (+3 more)": rank lists stay one line at any scale.
std::string rank_list(const std::vector<int>& ranks, size_t max_shown = 32) {
  std::string s;
  for (size_t i = 0; i < ranks.size() && i < max_shown; ++i)
    s += fmt::format("{}{}", i ? ", " : "", ranks[i]);
  if (ranks.size() > max_shown) s += fmt::format(" (+{} more)", ranks.size() - max_shown);
  return s;
}

// Writes all of `text` to stderr without stdio (no FILE lock or buffer another thread may hold).
void write_stderr(const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(STDERR_FILENO, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string heartbeat_path(const std::string& dir, int rank) {
  return (fs::path(dir) / fmt::format("rank-{}", rank)).string();
}

void write_heartbeat(const std::string& dir, const Heartbeat& hb) {
  const nlohmann::json j = {{"rank", hb.rank},           {"world", hb.world},
                            {"host", hb.host},           {"pid", hb.pid},
                            {"step", hb.step},           {"phase", hb.phase},
                            {"beat_unix", hb.beat_unix}, {"alive_unix", hb.alive_unix}};
  const std::string path = heartbeat_path(dir, hb.rank);
  const std::string tmp = path + ".tmp";
  const std::string line = j.dump() + "\n";
  FILE* f = std::fopen(tmp.c_str(), "w");
  MOERUN_REQUIRE(f != nullptr, "cannot write {}: {}", tmp, std::strerror(errno));
  const bool written = std::fwrite(line.data(), 1, line.size(), f) == line.size();
  const bool closed = std::fclose(f) == 0;
  MOERUN_REQUIRE(written && closed, "cannot write {}: {}", tmp, std::strerror(errno));
  MOERUN_REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename {} to {}: {}", tmp,
                 path, std::strerror(errno));
}

std::optional<Heartbeat> read_heartbeat(const std::string& dir, int rank) {
  std::ifstream in(heartbeat_path(dir, rank));
  if (!in) return std::nullopt;
  std::string line;
  std::getline(in, line);
  try {
    const nlohmann::json j = nlohmann::json::parse(line);
    Heartbeat hb;
    hb.rank = j.at("rank").get<int>();
    hb.world = j.at("world").get<int>();
    hb.host = j.at("host").get<std::string>();
    hb.pid = j.at("pid").get<int64_t>();
    hb.step = j.at("step").get<int64_t>();
    hb.phase = j.at("phase").get<std::string>();
    hb.beat_unix = j.at("beat_unix").get<double>();
    hb.alive_unix = j.at("alive_unix").get<double>();
    if (hb.rank != rank) return std::nullopt;
    return hb;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

namespace {

std::string self_line(const Heartbeat& self, double now_unix) {
  return fmt::format(
      "moerun watchdog: rank {} (host {}, pid {}): no progress for {:.0f} s (its last beat: step "
      "{}, phase '{}')\n",
      self.rank, self.host, self.pid, std::max(0.0, now_unix - self.beat_unix), self.step,
      self.phase);
}

std::string abort_line(int exit_code) {
  return fmt::format(
      "moerun watchdog: aborting (exit {}) so the scheduler can requeue; a checkpoint being "
      "written is not committed, a resume takes the last committed step\n",
      exit_code);
}

}  // namespace

StallReport describe_stall(const std::string& dir, int world, const Heartbeat& self,
                           double now_unix, double silent_after_s, int exit_code) {
  StallReport r;
  std::ostringstream o;
  const auto ago = [&](double t) { return std::max(0.0, now_unix - t); };
  o << self_line(self, now_unix);
  if (dir.empty()) {
    o << "moerun watchdog: no heartbeat directory: the other ranks cannot be named\n";
  } else {
    std::vector<Heartbeat> alive = {self};  // ranks whose process still runs, self included
    std::string details;
    size_t shown = 0;
    for (int k = 0; k < world; ++k) {
      if (k == self.rank) continue;
      const std::optional<Heartbeat> hb = read_heartbeat(dir, k);
      if (!hb || hb->world != world) {  // none, or one left by a run at another rank count
        r.missing.push_back(k);
      } else if (ago(hb->alive_unix) > silent_after_s) {
        r.silent.push_back(k);
        if (shown++ < 8)
          details += fmt::format(
              "{}{} (host {}, pid {}, last beat step {} '{}' {:.0f} s ago, silent {:.0f} s)",
              details.empty() ? "" : "; ", k, hb->host, hb->pid, hb->step, hb->phase,
              ago(hb->beat_unix), ago(hb->alive_unix));
      } else {
        alive.push_back(*hb);
      }
    }
    if (!r.silent.empty()) {
      if (r.silent.size() > 8)
        details += fmt::format("; and {}", rank_list({r.silent.begin() + 8, r.silent.end()}));
      o << "moerun watchdog: ranks not answering: " << details << "\n";
    }
    if (!r.missing.empty())
      o << fmt::format(
          "moerun watchdog: ranks without a heartbeat file in {}: {} (not started yet, or the "
          "directory is not shared by all nodes)\n",
          dir, rank_list(r.missing));
    if (r.silent.empty() && r.missing.empty()) {
      // Every process runs but none made progress: name the ranks behind the others, if any.
      int64_t lo = self.step, hi = self.step;
      for (const Heartbeat& hb : alive) lo = std::min(lo, hb.step), hi = std::max(hi, hb.step);
      std::vector<int> behind;
      std::string phase;
      for (const Heartbeat& hb : alive)
        if (hb.step == lo) behind.push_back(hb.rank), phase = hb.phase;
      std::sort(behind.begin(), behind.end());
      if (lo < hi)
        o << fmt::format(
            "moerun watchdog: every rank's process is alive; behind the others (step {}, phase "
            "'{}'): ranks {}\n",
            lo, phase, rank_list(behind));
      else
        o << fmt::format(
            "moerun watchdog: every rank's process is alive and at step {}: a deadlock, a stall "
            "inside a rank (I/O?) or a phase slower than the timeout\n",
            lo);
    }
  }
  o << abort_line(exit_code);
  r.text = o.str();
  return r;
}

Watchdog::Watchdog(Options opts) : opts_(std::move(opts)) {
  if (!enabled()) return;
  if (opts_.period_s <= 0) opts_.period_s = std::clamp(opts_.timeout_s / 10, 0.05, 10.0);
  silent_after_ = std::min(3 * opts_.period_s + 1.0, opts_.timeout_s / 2);
  host_ = host_name();
  pid_ = static_cast<int64_t>(getpid());
  beat_unix_ = unix_seconds();
  if (!opts_.dir.empty()) {
    std::error_code ec;  // every rank creates it; a race between them is fine
    fs::create_directories(opts_.dir, ec);
    MOERUN_REQUIRE(fs::is_directory(opts_.dir), "cannot create the heartbeat directory {}: {}",
                   opts_.dir, ec.message());
    writer_ = std::thread([this] { writer_loop(); });
  }
  timer_ = std::thread([this] { timer_loop(); });
}

Watchdog::Watchdog(std::string dir, int rank, int world, double timeout_s)
    : Watchdog([&] {
        Options o;
        o.dir = std::move(dir);
        o.rank = rank;
        o.world = world;
        o.timeout_s = timeout_s;
        return o;
      }()) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  writer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
  if (writer_.joinable()) writer_.join();
}

void Watchdog::beat(int64_t step, std::string_view phase) {
  if (!enabled()) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++beats_;
    step_ = step;
    phase_.assign(phase);
    beat_unix_ = unix_seconds();
  }
  cv_.notify_all();
}

void Watchdog::timer_loop() {
  // Counts only the time this process ran: the timer ticks every period, and a gap much longer
  // than a tick means the whole process was stopped (SIGSTOP, Slurm's job suspend, a paused VM).
  // So a suspended and resumed job does not abort, and a stopped rank that mpirun continues (to
  // deliver SIGTERM) does not report itself; the ranks still running do the reporting.
  using clock = std::chrono::steady_clock;
  const double tick = opts_.period_s;
  const double frozen_gap = 2 * tick + 1.0;
  double awake = 0.0;  // seconds of running time since the last beat
  std::unique_lock<std::mutex> lk(mu_);
  int64_t seen = beats_;
  auto last = clock::now();
  while (!stop_) {
    const double wait = std::min(tick, opts_.timeout_s - awake);
    cv_.wait_for(lk, std::chrono::duration<double>(wait), [&] { return stop_ || beats_ != seen; });
    if (stop_) return;
    const auto now = clock::now();
    const double gap = std::chrono::duration<double>(now - last).count();
    last = now;
    if (beats_ != seen) {
      seen = beats_;
      awake = 0.0;
      continue;
    }
    awake += gap > frozen_gap ? tick : gap;
    if (awake < opts_.timeout_s) continue;
    const Heartbeat self{opts_.rank, opts_.world, host_, pid_, step_, phase_, beat_unix_, 0.0};
    lk.unlock();
    fire(self);
    return;
  }
}

void Watchdog::writer_loop() {
  const auto period = std::chrono::duration<double>(opts_.period_s);
  bool reported = false;
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    const Heartbeat hb{opts_.rank, opts_.world, host_,      pid_,
                       step_,      phase_,      beat_unix_, unix_seconds()};
    lk.unlock();
    try {
      write_heartbeat(opts_.dir, hb);
    } catch (const std::exception& e) {  // training goes on; the timeout still works
      if (!reported) write_stderr(fmt::format("moerun watchdog: {}\n", e.what()));
      reported = true;
    }
    lk.lock();
    writer_cv_.wait_for(lk, period, [&] { return stop_; });
  }
}

void Watchdog::fire(const Heartbeat& self) {
  // Reading the other ranks' files may block on a stalled file system: it runs on its own thread
  // and the abort waits for it only so long.
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    StallReport report;
  };
  auto shared = std::make_shared<Shared>();
  const double now = unix_seconds();
  std::thread([shared, dir = opts_.dir, world = opts_.world, self, now,
               silent_after = silent_after_, code = opts_.exit_code] {
    StallReport r = describe_stall(dir, world, self, now, silent_after, code);
    std::lock_guard<std::mutex> lk(shared->mu);
    shared->report = std::move(r);
    shared->done = true;
    shared->cv.notify_all();
  }).detach();
  StallReport report;
  const double wait_s = std::clamp(opts_.timeout_s / 2, 1.0, 10.0);
  {
    std::unique_lock<std::mutex> lk(shared->mu);
    if (shared->cv.wait_for(lk, std::chrono::duration<double>(wait_s),
                            [&] { return shared->done; })) {
      report = shared->report;
    } else {
      report.text = self_line(self, now) +
                    fmt::format(
                        "moerun watchdog: could not read the heartbeat files in {} within "
                        "{:.0f} s (a stalled file system?)\n",
                        opts_.dir, wait_s) +
                    abort_line(opts_.exit_code);
    }
  }
  if (opts_.on_timeout) {
    opts_.on_timeout(report);
    return;
  }
  write_stderr(report.text);
  _exit(opts_.exit_code);
}

}  // namespace moerun
