// The two questions moerun asks slurmctld, through its own commands (squeue, scontrol), so that
// no Slurm library is linked and the same binary runs where Slurm is absent:
//   when does this job's time limit end, and: put this job back in the queue.
// Called by one rank; the caller shares the answer with the others.
#pragma once

#include <optional>
#include <string>

namespace moerun {

// The job's end time (Unix seconds) from `squeue -h -j JOB -o %e`; nullopt with `why` set when
// squeue fails or the job has no time limit.
std::optional<double> slurm_job_end_time(const std::string& job, std::string& why);

// Parses squeue's %e ("2026-12-01T17:45:12", local time); nullopt for "N/A", "Unknown", junk.
std::optional<double> parse_slurm_time(const std::string& text);

// `scontrol requeue JOB`; false with `why` (scontrol's message) when it was refused.
bool slurm_requeue(const std::string& job, std::string& why);

// Runs argv[0] with arguments (no shell), returns its exit status and stdout+stderr (bounded).
struct CommandResult {
  int status = -1;  // the exit status; -1 when it could not be started or was killed
  std::string output;
};
CommandResult run_command(const std::initializer_list<std::string>& argv);

}  // namespace moerun
