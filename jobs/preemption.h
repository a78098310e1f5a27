// Preemption: what ends a training run early and what happens after its checkpoint.
//
// Stop signals (USR1, TERM, INT, HUP: runtime/signals.h) only set a flag, and --exit-before-limit
// turns the Slurm job's end time into a deadline. At each step boundary the ranks agree (one
// all-reduce MAX) whether to stop; the loop then saves, and after_stop() decides the rest:
//   under Slurm: rank 0 requeues the job (scontrol requeue, array-aware) while
//                SLURM_RESTART_COUNT < --max-requeues; every rank exits 0 and the requeued job
//                resumes itself with --resume auto (not requeued: exit 75, EX_TEMPFAIL, so that
//                Slurm's job state says the work did not finish);
//   otherwise:   exit 128 + the signal (130 for SIGINT, 143 for SIGTERM), the shell's convention.
#pragma once

#include <optional>
#include <string>

#include "comm/topology.h"
#include "jobs/train_options.h"

namespace moerun {

// The stop code of the time limit (LoopOutcome::signal holds a signal number or this).
inline constexpr int kStopTimeLimit = -1;

class Preemption {
 public:
  // Collective: with --exit-before-limit, rank 0 asks Slurm for the job's end time and every
  // rank gets it. Refuses --exit-before-limit outside a Slurm job (ConfigError, every rank).
  Preemption(const TrainConfig& cfg, const Topology& topo);

  // Collective, at a step boundary: 0 (go on), the signal every rank agreed on, or
  // kStopTimeLimit when fewer than --exit-before-limit minutes are left.
  int agreed_stop() const;

  // "SIGUSR1", or "the time limit (--exit-before-limit 5)".
  std::string describe(int stop) const;

  // Collective, after the stop's checkpoint is committed: requeues under Slurm (rank 0) and
  // returns the process exit status.
  int after_stop(int stop) const;

  std::optional<double> deadline() const { return deadline_; }  // Unix seconds

 private:
  const TrainConfig& cfg_;
  const Topology& topo_;
  std::optional<double> deadline_;  // the job's end time minus --exit-before-limit
};

}  // namespace moerun
