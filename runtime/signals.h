// Stop signals (SIGTERM, SIGINT, SIGHUP, SIGUSR1: mpirun forwards USR1 to the ranks at once): the
// handler only records the signal and says so on stderr (async-signal-safe); the training loop
// polls stop_signal() at each step boundary, where the ranks agree to save and stop together.
#pragma once

namespace moerun {

// Installs the handlers (idempotent). A second signal of the same kind restores the default
// action first, so pressing Ctrl-C twice still ends a run that is stuck.
void install_stop_signal_handlers();
int stop_signal();  // the first stop signal received (0 = none)
void clear_stop_signal();
// After the stop's checkpoint, while the job ends (a Slurm requeue sends SIGTERM to every process
// of the job, this one and its `scontrol` included): further stop signals are ignored, so that the
// last log lines and the exit status are this process's own.
void ignore_stop_signals();
const char* signal_name(int sig);  // "SIGTERM"

}  // namespace moerun
