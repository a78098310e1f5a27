// Stop-signal flags; see signals.h.
#include "runtime/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace moerun {

namespace {

std::atomic<int> g_signal{0};  // owned here: a signal handler can reach nothing else

void on_stop_signal(int sig) {
  int expected = 0;
  if (!g_signal.compare_exchange_strong(expected, sig)) {
    std::signal(sig, SIG_DFL);  // the second one: let it end the process
    ::raise(sig);
    return;
  }
  // One write(2), so that the lines of several ranks do not interleave.
  char line[160] = "moerun: received ";
  const char* parts[] = {signal_name(sig),
                         ": stopping at the next step boundary (after a checkpoint)\n"};
  size_t n = std::strlen(line);
  for (const char* p : parts)
    for (; *p != '\0' && n + 1 < sizeof line; ++p) line[n++] = *p;
  ssize_t ignored = ::write(STDERR_FILENO, line, n);
  (void)ignored;
}

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // MPI's and HDF5's system calls carry on
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) sigaction(sig, &sa, nullptr);
}

void ignore_stop_signals() {
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) std::signal(sig, SIG_IGN);
}

int stop_signal() {
  return g_signal.load();
}
void clear_stop_signal() {
  g_signal.store(0);
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGHUP:
      return "SIGHUP";
    case SIGUSR1:
      return "SIGUSR1";
    default:
      return "a signal";
  }
}

}  // namespace moerun
