// How this process was started and where it runs: under srun (Slurm), under mpirun, or alone
// (a singleton). Read from the environment only (no MPI here), the same way on every launcher,
// so that the topology table and the Slurm features (requeue, time limit) have one source.
#pragma once

#include <optional>
#include <string>

namespace moerun {

enum class Launcher { kSrun, kMpirun, kSingleton };
const char* to_string(Launcher l);  // "srun", "mpirun", "singleton"

struct LaunchInfo {
  Launcher launcher = Launcher::kSingleton;
  // The node this rank runs on: $SLURMD_NODENAME under Slurm (so that the fake nodes of a one-host
  // test cluster count as different nodes, as their traffic does), else the host name.
  std::string host;
  // Set inside a Slurm job (srun, or mpirun within an allocation): the job to requeue, in the
  // form scontrol takes ("123", or "120_3" for task 3 of array job 120).
  std::optional<std::string> slurm_job;
  int slurm_restart_count = 0;  // $SLURM_RESTART_COUNT: how often this job was requeued so far
};

LaunchInfo detect_launch();

}  // namespace moerun
