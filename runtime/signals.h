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
const char* signal_name(int sig);  // "SIGTERM"

}  // namespace moerun
