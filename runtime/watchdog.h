// Watchdog: ends a rank that stopped making progress (a stopped or frozen rank, a hung file
// system), so the job exits with kWatchdogExitCode for the scheduler to requeue instead of hanging.
// No MPI here: the ranks that wait for a stopped one sit inside a collective, so ranks learn about
// each other through small heartbeat files in a directory that all ranks share.
//
// Two threads per rank:
//   writer: rewrites <dir>/rank-<r> (tmp + rename) every period with the last beat (step, phase,
//           time) and the time of this write ("alive"). A stopped process stops refreshing it; a
//           process whose training thread waits in a collective keeps refreshing it.
//   timer:  if no beat() comes for timeout seconds of this process's running time, reads every
//           rank's file (bounded in time, so a stalled file system cannot keep it), prints which
//           ranks are silent, and _exit()s. Time while the whole process was stopped does not
//           count: a suspended and resumed job (scontrol suspend) goes on, and a stopped rank that
//           mpirun continues to deliver SIGTERM does not report itself.
// _exit, not exit: exit handlers would close HDF5 files and finalize MPI, collective calls that
// hang with a stopped peer. mpirun (or srun --kill-on-bad-exit=1) then ends the other ranks. A
// checkpoint being written at that moment is never committed: the commit protocol
// (io/checkpoint.h) writes manifest.json and `latest` last, so resume takes the previous step.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace moerun {

// EX_TEMPFAIL (sysexits.h): a temporary failure, worth a requeue.
inline constexpr int kWatchdogExitCode = 75;

// One rank's heartbeat file: one JSON line.
struct Heartbeat {
  int rank = 0, world = 0;
  std::string host;
  int64_t pid = 0;
  int64_t step = 0;         // the step number given to the last beat (moerun train: steps done)
  std::string phase;        // the phase given to the last beat ("start", "step", "eval", "save")
  double beat_unix = 0.0;   // wall-clock time of the last beat (Unix seconds)
  double alive_unix = 0.0;  // wall-clock time of this write
};

double unix_seconds();  // wall clock: files are compared across nodes (NTP keeps them close)
std::string heartbeat_path(const std::string& dir, int rank);  // <dir>/rank-<rank>
// Atomic replace (write <path>.tmp, rename), so a reader never sees half a file. Throws Error.
void write_heartbeat(const std::string& dir, const Heartbeat& hb);
// nullopt when the file is missing or not a heartbeat.
std::optional<Heartbeat> read_heartbeat(const std::string& dir, int rank);

struct StallReport {
  std::vector<int> silent;   // ranks whose file was not refreshed for silent_after_s: stopped
  std::vector<int> missing;  // ranks without a readable file (never started, or dir not shared)
  std::string text;          // a few lines for stderr, each starting with "moerun watchdog:"
};

// What a timed-out rank prints. `self` is this rank's own state (from memory, not from its file);
// the other ranks' files are read from `dir` ("" = none) and judged at `now_unix`.
StallReport describe_stall(const std::string& dir, int world, const Heartbeat& self,
                           double now_unix, double silent_after_s, int exit_code);

class Watchdog {
 public:
  struct Options {
    std::string dir;  // heartbeat directory shared by all ranks ("" = no files, timeout only)
    int rank = 0, world = 1;
    double timeout_s = 0.0;  // seconds without a beat before aborting; <= 0: off (beat is a no-op)
    double period_s = 0.0;   // heartbeat refresh; 0 = timeout / 10 within [0.05 s, 10 s]
    int exit_code = kWatchdogExitCode;
    // Tests: called on the timer thread instead of printing the report and _exit(exit_code); the
    // watchdog then stays quiet.
    std::function<void(const StallReport&)> on_timeout;
  };

  explicit Watchdog(Options opts);  // creates dir, starts the threads (first beat: step 0 "start")
  Watchdog(std::string dir, int rank, int world, double timeout_s);  // the other options default
  ~Watchdog();  // stops the threads; the heartbeat file stays (post-mortem)
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Progress: restarts the timeout. Cheap (a lock, no I/O); call it at every step boundary and
  // before long phases (eval, save), each of which must then finish within the timeout.
  void beat(int64_t step, std::string_view phase);

  bool enabled() const { return opts_.timeout_s > 0; }
  double period_s() const { return opts_.period_s; }
  // A rank whose file is older than this is reported silent: 3 periods + 1 s, at most timeout/2.
  double silent_after_s() const { return silent_after_; }

 private:
  void timer_loop();
  void writer_loop();
  void fire(const Heartbeat& self);

  Options opts_;
  double silent_after_ = 0.0;
  std::string host_;
  int64_t pid_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;         // beats and stop, for the timer
  std::condition_variable writer_cv_;  // stop, for the writer
  bool stop_ = false;
  int64_t beats_ = 0;  // counts beats, so the timer sees a beat that reuses step and phase
  int64_t step_ = 0;
  std::string phase_ = "start";
  double beat_unix_ = 0.0;
  std::thread timer_, writer_;
};

}  // namespace moerun
