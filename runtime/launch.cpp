// Launcher and node detection from the environment; see launch.h.
#include "runtime/launch.h"

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace moerun {

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

int to_int(const std::optional<std::string>& s) {
  if (!s) return 0;
  char* end = nullptr;
  const long v = std::strtol(s->c_str(), &end, 10);
  return end != nullptr && *end == '\0' && v >= 0 ? static_cast<int>(v) : 0;
}

}  // namespace

const char* to_string(Launcher l) {
  switch (l) {
    case Launcher::kSrun:
      return "srun";
    case Launcher::kMpirun:
      return "mpirun";
    case Launcher::kSingleton:
      return "singleton";
  }
  return "singleton";
}

LaunchInfo detect_launch() {
  LaunchInfo info;
  // Open MPI's launcher sets OMPI_COMM_WORLD_SIZE, also when it runs inside an allocation;
  // srun sets SLURM_STEP_ID for the tasks of a job step.
  if (env("OMPI_COMM_WORLD_SIZE"))
    info.launcher = Launcher::kMpirun;
  else if (env("SLURM_STEP_ID") && env("SLURM_PROCID"))
    info.launcher = Launcher::kSrun;
  info.host = env("SLURMD_NODENAME").value_or(host_name());
  if (const auto job = env("SLURM_JOB_ID")) {
    const auto array_job = env("SLURM_ARRAY_JOB_ID"), array_task = env("SLURM_ARRAY_TASK_ID");
    info.slurm_job = array_job && array_task ? *array_job + "_" + *array_task : *job;
    info.slurm_restart_count = to_int(env("SLURM_RESTART_COUNT"));
  }
  return info;
}

}  // namespace moerun
