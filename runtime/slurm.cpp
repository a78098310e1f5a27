// squeue / scontrol calls; see slurm.h.
#include "runtime/slurm.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <vector>

namespace moerun {

namespace {

constexpr int kCommandTimeoutMs = 30000;  // slurmctld down or busy: give up, never hang a job
constexpr size_t kMaxOutput = 64 * 1024;

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

}  // namespace

CommandResult run_command(const std::initializer_list<std::string>& argv) {
  CommandResult r;
  int fd[2];
  if (::pipe(fd) != 0) return r;
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fd[0]);
    ::close(fd[1]);
    return r;
  }
  if (pid == 0) {  // the child: only async-signal-safe calls until exec
    // `scontrol requeue` of our own job makes Slurm SIGTERM every process of the job, this child
    // too, possibly before it has reported success: the command finishes regardless (SIG_IGN
    // survives exec; SIGKILL after KillWait still ends it).
    ::signal(SIGTERM, SIG_IGN);
    ::dup2(fd[1], STDOUT_FILENO);
    ::dup2(fd[1], STDERR_FILENO);
    ::close(fd[0]);
    ::close(fd[1]);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  ::close(fd[1]);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kCommandTimeoutMs);
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) {
      ::kill(pid, SIGKILL);
      r.output += "\n(timed out)";
      break;
    }
    pollfd p{fd[0], POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    const ssize_t got = ::read(fd[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (r.output.size() < kMaxOutput) r.output.append(buf, static_cast<size_t>(got));
  }
  ::close(fd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (r.status == 127 && r.output.empty()) r.output = *argv.begin() + ": command not found";
  r.output = trim(r.output);
  return r;
}

std::optional<double> parse_slurm_time(const std::string& text) {
  const std::string s = trim(text);
  std::tm tm{};
  const char* end = ::strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  tm.tm_isdst = -1;  // Slurm prints local time; let mktime decide daylight saving
  const std::time_t t = std::mktime(&tm);
  if (t == static_cast<std::time_t>(-1)) return std::nullopt;
  return static_cast<double>(t);
}

std::optional<double> slurm_job_end_time(const std::string& job, std::string& why) {
  const CommandResult r = run_command({"squeue", "-h", "-j", job, "-o", "%e"});
  if (r.status != 0) {
    why = "squeue -h -j " + job + " -o %e failed: " + r.output;
    return std::nullopt;
  }
  const auto t = parse_slurm_time(r.output);
  if (!t) why = "the job has no end time (squeue -o %e printed '" + r.output + "')";
  return t;
}

bool slurm_requeue(const std::string& job, std::string& why) {
  const CommandResult r = run_command({"scontrol", "requeue", job});
  if (r.status == 0) return true;
  why = "scontrol requeue " + job + " failed: " + (r.output.empty() ? "no output" : r.output);
  return false;
}

}  // namespace moerun
