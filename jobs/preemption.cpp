// Agreed stops, the Slurm time limit and the requeue; see preemption.h.
#include "jobs/preemption.h"

#include <fmt/format.h>

#include <span>

#include "comm/agree.h"
#include "runtime/check.h"
#include "runtime/log.h"
#include "runtime/signals.h"
#include "runtime/slurm.h"
#include "runtime/watchdog.h"

namespace moerun {

Preemption::Preemption(const TrainConfig& cfg, const Topology& topo) : cfg_(cfg), topo_(topo) {
  if (cfg.exit_before_limit <= 0) return;
  const Comm& world = topo.world;
  MOERUN_CONFIG_REQUIRE(topo.launch.slurm_job.has_value(),
                        "--exit-before-limit {} needs a Slurm job (SLURM_JOB_ID is not set); "
                        "without a scheduler there is no time limit to leave before",
                        cfg.exit_before_limit);
  double end = 0;  // 0: unknown
  if (world.rank() == 0) {
    std::string why;
    const auto t = slurm_job_end_time(*topo.launch.slurm_job, why);
    if (t) {
      end = *t;
    } else {
      log::warn(
          "moerun train: WARNING: --exit-before-limit is off: {}; the job still saves on the "
          "SIGTERM Slurm sends at the limit if the step and save fit in its KillWait",
          why);
    }
  }
  world.broadcast(std::as_writable_bytes(std::span<double>(&end, 1)), 0);
  if (end <= 0) return;
  deadline_ = end - cfg.exit_before_limit * 60.0;
  log::info(
      "moerun train: Slurm job {} ends in {:.1f} min; saving and requeueing {} min before that",
      *topo.launch.slurm_job, (end - unix_seconds()) / 60.0, cfg.exit_before_limit);
}

int Preemption::agreed_stop() const {
  // Both conditions in one all-reduce: [signal, time limit reached].
  double v[2] = {static_cast<double>(stop_signal()),
                 deadline_ && unix_seconds() >= *deadline_ ? 1.0 : 0.0};
  topo_.world.allreduce_max(std::span<double>(v, 2));
  if (v[0] > 0) return static_cast<int>(v[0]);
  return v[1] > 0 ? kStopTimeLimit : 0;
}

std::string Preemption::describe(int stop) const {
  if (stop == kStopTimeLimit)
    return fmt::format("the time limit (--exit-before-limit {})", cfg_.exit_before_limit);
  return signal_name(stop);
}

int Preemption::after_stop(int stop) const {
  const LaunchInfo& l = topo_.launch;
  if (!l.slurm_job) return stop > 0 ? 128 + stop : 1;
  ignore_stop_signals();  // the requeue SIGTERMs the whole job, this process included
  // Every rank has finished the save before the job is requeued: scontrol requeue ends the
  // job's processes.
  topo_.world.barrier();
  int64_t status = 0;
  if (topo_.world.rank() == 0) {
    std::string why;
    if (l.slurm_restart_count >= cfg_.max_requeues) {
      log::warn(
          "moerun train: WARNING: not requeueing Slurm job {}: it has restarted {} time(s), "
          "--max-requeues is {}; resubmit it to continue (it resumes with --resume auto)",
          *l.slurm_job, l.slurm_restart_count, cfg_.max_requeues);
      status = kWatchdogExitCode;
    } else if (slurm_requeue(*l.slurm_job, why)) {
      log::info("moerun train: requeued Slurm job {} (restart {} of at most {})", *l.slurm_job,
                l.slurm_restart_count + 1, cfg_.max_requeues);
    } else {
      log::warn("moerun train: WARNING: {}; resubmit the job to continue", why);
      status = kWatchdogExitCode;
    }
  }
  // Requeued: 0 (the job is not over, it waits in the queue). Not requeued: EX_TEMPFAIL, so that
  // the job's state says it did not finish.
  topo_.world.broadcast(std::as_writable_bytes(std::span<int64_t>(&status, 1)), 0);
  return static_cast<int>(status);
}

}  // namespace moerun
