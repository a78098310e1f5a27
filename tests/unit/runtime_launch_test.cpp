// Launcher detection from the environment, squeue's time format, and the command runner that the
// Slurm calls use (a missing command, a failing one, output capture). No Slurm needed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>
#include <optional>
#include <string>

#include "runtime/launch.h"
#include "runtime/slurm.h"

namespace moerun {
namespace {

// Sets (or unsets, value nullopt) environment variables for one test and restores them after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value->c_str(), 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(Launch, SrunTaskOfAnArrayJob) {
  ScopedEnv a("OMPI_COMM_WORLD_SIZE", std::nullopt), b("SLURM_STEP_ID", "0"),
      c("SLURM_PROCID", "3"), d("SLURM_JOB_ID", "125"), e("SLURM_ARRAY_JOB_ID", "120"),
      f("SLURM_ARRAY_TASK_ID", "5"), g("SLURM_RESTART_COUNT", "2"), h("SLURMD_NODENAME", "node7");
  const LaunchInfo l = detect_launch();
  EXPECT_EQ(l.launcher, Launcher::kSrun);
  EXPECT_EQ(l.host, "node7");
  ASSERT_TRUE(l.slurm_job.has_value());
  EXPECT_EQ(*l.slurm_job, "120_5");  // scontrol requeue takes the task, not the array
  EXPECT_EQ(l.slurm_restart_count, 2);
}

TEST(Launch, MpirunInsideAnAllocationIsStillASlurmJob) {
  ScopedEnv a("OMPI_COMM_WORLD_SIZE", "4"), b("SLURM_JOB_ID", "77"),
      c("SLURM_ARRAY_JOB_ID", std::nullopt), d("SLURM_RESTART_COUNT", "junk"),
      e("SLURMD_NODENAME", std::nullopt);
  const LaunchInfo l = detect_launch();
  EXPECT_EQ(l.launcher, Launcher::kMpirun);
  ASSERT_TRUE(l.slurm_job.has_value());
  EXPECT_EQ(*l.slurm_job, "77");
  EXPECT_EQ(l.slurm_restart_count, 0);  // junk counts as no restart, never as a crash
  EXPECT_FALSE(l.host.empty());         // the host name
}

TEST(Launch, SingletonOutsideSlurm) {
  ScopedEnv a("OMPI_COMM_WORLD_SIZE", std::nullopt), b("SLURM_STEP_ID", std::nullopt),
      c("SLURM_JOB_ID", std::nullopt);
  const LaunchInfo l = detect_launch();
  EXPECT_EQ(l.launcher, Launcher::kSingleton);
  EXPECT_FALSE(l.slurm_job.has_value());
  EXPECT_STREQ(to_string(l.launcher), "singleton");
}

TEST(SlurmTime, ParsesSqueueEndTimeAsLocalTime) {
  const auto t = parse_slurm_time("2026-12-01T17:45:12\n");
  ASSERT_TRUE(t.has_value());
  std::tm tm{};
  tm.tm_year = 126;
  tm.tm_mon = 11;
  tm.tm_mday = 1;
  tm.tm_hour = 17;
  tm.tm_min = 45;
  tm.tm_sec = 12;
  tm.tm_isdst = -1;
  EXPECT_EQ(*t, static_cast<double>(std::mktime(&tm)));
  const auto later = parse_slurm_time("2026-12-01T17:46:12");
  ASSERT_TRUE(later.has_value());
  EXPECT_EQ(*later - *t, 60.0);
}

TEST(SlurmTime, NoTimeLimitOrJunkIsNullopt) {
  for (const char* s : {"N/A", "Unknown", "", "2026-12-01", "2026-12-01T17:45:12junk", "NONE"})
    EXPECT_FALSE(parse_slurm_time(s).has_value()) << s;
}

TEST(RunCommand, CapturesOutputAndStatus) {
  const CommandResult ok = run_command({"sh", "-c", "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(ok.status, 3);
  EXPECT_NE(ok.output.find("out"), std::string::npos);
  EXPECT_NE(ok.output.find("err"), std::string::npos);
  const CommandResult missing = run_command({"moerun-no-such-command-xyz"});
  EXPECT_EQ(missing.status, 127);
  EXPECT_NE(missing.output.find("not found"), std::string::npos);
}

TEST(RunCommand, SlurmCallsFailWithAReasonWhenSlurmIsAbsentOrTheJobUnknown) {
  // With Slurm installed and up, job 0 does not exist; without it squeue is missing or cannot
  // reach slurmctld. Either way: no end time, a reason, no exception, no hang.
  std::string why;
  EXPECT_FALSE(slurm_job_end_time("0", why).has_value());
  EXPECT_FALSE(why.empty());
  std::string why2;
  EXPECT_FALSE(slurm_requeue("0", why2));
  EXPECT_NE(why2.find("scontrol requeue 0"), std::string::npos);
}

}  // namespace
}  // namespace moerun
