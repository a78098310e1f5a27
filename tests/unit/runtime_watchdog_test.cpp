// Watchdog: fires without beats, stays quiet with them, keeps a heartbeat file, and names the
// silent ranks from a heartbeat directory (fake ranks written by the test). No timing is asserted:
// waits for an event are bounded generously, and "quiet" means no report during beats.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "runtime/watchdog.h"
#include "tests/common/temp_dir.h"

namespace moerun {
namespace {

using std::chrono::duration;
using testing::TempDir;

constexpr double kBoundS = 60.0;  // the longest any event may take on a loaded machine

// Waits up to kBoundS for pred(); returns its last value.
template <class Pred>
bool eventually(Pred&& pred) {
  const auto end = std::chrono::steady_clock::now() + duration<double>(kBoundS);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

Heartbeat fake(int rank, int world, int64_t step, double beat, double alive) {
  return Heartbeat{rank, world, fmt::format("node{}", rank), 1000 + rank, step, "step",
                   beat, alive};
}

// A watchdog whose timeout hands the report to a future instead of ending the process.
struct Catcher {
  std::promise<StallReport> promise;
  std::future<StallReport> future = promise.get_future();
  std::atomic<int> fired{0};
  Watchdog::Options options(const std::string& dir, int rank, int world, double timeout_s) {
    Watchdog::Options o;
    o.dir = dir;
    o.rank = rank;
    o.world = world;
    o.timeout_s = timeout_s;
    o.on_timeout = [this](const StallReport& r) {
      if (fired++ == 0) promise.set_value(r);
    };
    return o;
  }
  bool wait() { return future.wait_for(duration<double>(kBoundS)) == std::future_status::ready; }
};

TEST(Watchdog, OffDoesNothing) {
  TempDir tmp("watchdog");
  const std::string dir = tmp.file("hb");
  Catcher c;
  {
    Watchdog w(c.options(dir, 0, 1, 0.0));
    EXPECT_FALSE(w.enabled());
    w.beat(3, "step");
  }
  EXPECT_FALSE(std::filesystem::exists(dir));
  EXPECT_EQ(c.fired.load(), 0);
}

TEST(Watchdog, FiresWithoutBeats) {
  TempDir tmp("watchdog");
  Catcher c;
  Watchdog w(c.options(tmp.file("hb"), 0, 1, 0.3));
  ASSERT_TRUE(c.wait()) << "no report within " << kBoundS << " s of a 0.3 s timeout";
  const StallReport r = c.future.get();
  EXPECT_NE(r.text.find("rank 0 (host "), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("its last beat: step 0, phase 'start'"), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("aborting (exit 75)"), std::string::npos) << r.text;
  EXPECT_TRUE(r.silent.empty());
  EXPECT_TRUE(r.missing.empty());
}

TEST(Watchdog, BeatsKeepItQuietThenItFires) {
  TempDir tmp("watchdog");
  Catcher c;
  Watchdog w(c.options(tmp.file("hb"), 0, 1, 2.0));
  int64_t step = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(6);  // 3 timeouts
  while (std::chrono::steady_clock::now() < end) {
    w.beat(++step, "step");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  w.beat(step, "save");
  EXPECT_EQ(c.fired.load(), 0) << "fired while beats came every 20 ms";
  ASSERT_TRUE(c.wait()) << "no report after the beats stopped";
  const StallReport r = c.future.get();
  EXPECT_NE(r.text.find(fmt::format("its last beat: step {}, phase 'save'", step)),
            std::string::npos)
      << r.text;
}

TEST(Watchdog, HeartbeatFileHoldsTheLastBeatAndStaysFresh) {
  TempDir tmp("watchdog");
  const std::string dir = tmp.file("hb");
  Catcher c;
  Watchdog::Options o = c.options(dir, 3, 4, 600.0);
  o.period_s = 0.05;
  Watchdog w(o);
  const double before = unix_seconds();
  w.beat(7, "eval");
  const double after = unix_seconds();
  std::optional<Heartbeat> hb;
  ASSERT_TRUE(eventually([&] {
    hb = read_heartbeat(dir, 3);
    return hb && hb->step == 7;
  })) << "the file never showed the beat";
  EXPECT_EQ(hb->rank, 3);
  EXPECT_EQ(hb->world, 4);
  EXPECT_EQ(hb->pid, static_cast<int64_t>(getpid()));
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(hb->host, host);
  EXPECT_EQ(hb->phase, "eval");
  EXPECT_GE(hb->beat_unix, before);
  EXPECT_LE(hb->beat_unix, after);
  EXPECT_GE(hb->alive_unix, hb->beat_unix);
  // Without beats the writer keeps refreshing "alive" (a live process), not the beat.
  const double first_alive = hb->alive_unix;
  ASSERT_TRUE(eventually([&] {
    hb = read_heartbeat(dir, 3);
    return hb && hb->alive_unix > first_alive;
  })) << "the file was not refreshed";
  EXPECT_EQ(hb->step, 7);
  EXPECT_LE(hb->beat_unix, after);
  EXPECT_FALSE(std::filesystem::exists(heartbeat_path(dir, 3) + ".tmp"));
  EXPECT_EQ(c.fired.load(), 0);
}

TEST(Watchdog, HeartbeatRoundTripAndBadFiles) {
  TempDir tmp("watchdog");
  const std::string dir = tmp.path.string();
  const Heartbeat hb{2, 5, "host-b", 4321, 12, "save", 1.7e9 + 0.25, 1.7e9 + 3.5};
  write_heartbeat(dir, hb);
  const std::optional<Heartbeat> back = read_heartbeat(dir, 2);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->rank, 2);
  EXPECT_EQ(back->world, 5);
  EXPECT_EQ(back->host, "host-b");
  EXPECT_EQ(back->pid, 4321);
  EXPECT_EQ(back->step, 12);
  EXPECT_EQ(back->phase, "save");
  EXPECT_DOUBLE_EQ(back->beat_unix, hb.beat_unix);
  EXPECT_DOUBLE_EQ(back->alive_unix, hb.alive_unix);
  EXPECT_FALSE(read_heartbeat(dir, 1).has_value());                    // no file
  std::ofstream(heartbeat_path(dir, 1)) << "{\"rank\": 1, \"world\"";  // truncated
  EXPECT_FALSE(read_heartbeat(dir, 1).has_value());
  std::filesystem::copy_file(heartbeat_path(dir, 2), heartbeat_path(dir, 4));  // rank 2's content
  EXPECT_FALSE(read_heartbeat(dir, 4).has_value());
}

TEST(Watchdog, ReportNamesTheSilentRank) {
  TempDir tmp("watchdog");
  const std::string dir = tmp.path.string();
  const double now = 1.75e9;
  for (int k : {1, 3}) write_heartbeat(dir, fake(k, 4, 7, now - 30.2, now - 0.5));
  write_heartbeat(dir, Heartbeat{2, 4, "nodeb", 1234, 7, "step", now - 41.0, now - 40.0});
  const Heartbeat self = fake(0, 4, 7, now - 30.0, 0.0);
  const StallReport r = describe_stall(dir, 4, self, now, 5.0, 75);
  EXPECT_EQ(r.silent, std::vector<int>{2});
  EXPECT_TRUE(r.missing.empty());
  EXPECT_NE(r.text.find("rank 0 (host node0, pid 1000): no progress for 30 s (its last beat: "
                        "step 7, phase 'step')"),
            std::string::npos)
      << r.text;
  EXPECT_NE(r.text.find("ranks not answering: 2 (host nodeb, pid 1234, last beat step 7 'step' "
                        "41 s ago, silent 40 s)\n"),
            std::string::npos)
      << r.text;
  EXPECT_EQ(r.text.find("node1"), std::string::npos) << r.text;
  EXPECT_EQ(r.text.find("node3"), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("aborting (exit 75)"), std::string::npos) << r.text;
  // A few lines, each one prefixed.
  size_t lines = 0;
  for (size_t p = 0; (p = r.text.find("moerun watchdog: ", p)) != std::string::npos; ++p) ++lines;
  EXPECT_EQ(lines, 3u) << r.text;
  EXPECT_EQ(static_cast<size_t>(std::count(r.text.begin(), r.text.end(), '\n')), lines);
}

TEST(Watchdog, ReportNamesMissingFilesAndOnesFromAnotherRun) {
  TempDir tmp("watchdog");
  const std::string dir = tmp.path.string();
  const double now = 1.75e9;
  write_heartbeat(dir, fake(1, 8, 7, now - 30.0, now - 0.2));  // a run at 8 ranks
  write_heartbeat(dir, fake(2, 4, 7, now - 30.0, now - 0.2));
  const StallReport r = describe_stall(dir, 4, fake(0, 4, 7, now - 30.0, 0.0), now, 5.0, 75);
  EXPECT_TRUE(r.silent.empty());
  EXPECT_EQ(r.missing, (std::vector<int>{1, 3}));
  EXPECT_NE(r.text.find(fmt::format("ranks without a heartbeat file in {}: 1, 3 ", dir)),
            std::string::npos)
      << r.text;
}

TEST(Watchdog, ReportWithEveryRankAliveNamesTheRanksBehind) {
  TempDir tmp("watchdog");
  const std::string dir = tmp.path.string();
  const double now = 1.75e9;
  const Heartbeat self = fake(0, 4, 7, now - 30.0, 0.0);
  for (int k : {1, 2, 3}) write_heartbeat(dir, fake(k, 4, 7, now - 30.0, now - 0.3));
  StallReport r = describe_stall(dir, 4, self, now, 5.0, 75);
  EXPECT_TRUE(r.silent.empty() && r.missing.empty());
  EXPECT_NE(r.text.find("every rank's process is alive and at step 7"), std::string::npos)
      << r.text;
  Heartbeat late = fake(2, 4, 6, now - 31.0, now - 0.3);
  late.phase = "save";
  write_heartbeat(dir, late);
  r = describe_stall(dir, 4, self, now, 5.0, 75);
  EXPECT_TRUE(r.silent.empty() && r.missing.empty());
  EXPECT_NE(r.text.find("behind the others (step 6, phase 'save'): ranks 2\n"), std::string::npos)
      << r.text;
}

TEST(Watchdog, FiredWatchdogNamesAStoppedPeer) {
  TempDir tmp("watchdog");
  const std::string dir = tmp.path.string();
  const double now = unix_seconds();
  write_heartbeat(dir, Heartbeat{1, 2, "nodeb", 999999, 4, "step", now - 100.0, now - 100.0});
  Catcher c;
  Watchdog w(c.options(dir, 0, 2, 0.5));
  w.beat(4, "step");
  ASSERT_TRUE(c.wait());
  const StallReport r = c.future.get();
  EXPECT_EQ(r.silent, std::vector<int>{1}) << r.text;
  EXPECT_NE(r.text.find("ranks not answering: 1 (host nodeb, pid 999999, last beat step 4"),
            std::string::npos)
      << r.text;
}

// The real ending: the report on stderr and _exit(75), in a child process.
TEST(WatchdogDeathTest, ExitsWithTheRequeueCode) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // No heartbeat directory: the child re-runs this test body and _exits, so a TempDir here
  // would never be removed.
  EXPECT_EXIT(
      {
        Watchdog::Options o;
        o.timeout_s = 0.2;
        Watchdog w(o);
        std::this_thread::sleep_for(duration<double>(kBoundS));
      },
      ::testing::ExitedWithCode(kWatchdogExitCode), "no progress for .*aborting \\(exit 75\\)");
}

// A process that is stopped and continued (Slurm's job suspend; mpirun continuing a stopped rank to
// deliver SIGTERM) does not count the stopped time: here 3 s stopped with a 1 s timeout, then it
// beats on and exits 0. Counting it would fire at the continue (exit 75).
TEST(WatchdogDeathTest, StoppedTimeDoesNotCount) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Watchdog::Options o;
        o.timeout_s = 1.0;
        Watchdog w(o);
        const pid_t self = getpid();
        const pid_t helper = fork();
        if (helper == 0) {  // async-signal-safe calls only
          usleep(200000);
          kill(self, SIGSTOP);
          sleep(3);
          kill(self, SIGCONT);
          _exit(0);
        }
        int64_t step = 0;
        int status = 0;
        while (waitpid(helper, &status, WNOHANG) == 0) {  // beats until the helper is done
          w.beat(++step, "step");
          usleep(20000);
        }
        for (int i = 0; i < 50; ++i) {
          w.beat(++step, "step");
          usleep(20000);
        }
        _exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace moerun
