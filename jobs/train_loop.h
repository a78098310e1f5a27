// The training loop, and nothing else: it decides when to step, log, evaluate, save and stop,
// and calls the hooks that do it. Saves and evaluations at the schedule's steps and at the end;
// a stop (a signal the ranks agreed on) saves and ends early.
#pragma once

#include <cstdint>
#include <functional>

#include "jobs/step_runner.h"

namespace moerun {

struct LoopSchedule {
  int64_t steps = 0;       // run until the state's step reaches this
  int64_t eval_every = 0;  // 0 = only at the end
  int64_t save_every = 0;  // 0 = only at the end
};

struct LoopHooks {
  std::function<StepResult()> step;                 // one optimizer step (advances the step)
  std::function<void(const StepResult&)> log;       // after every step
  std::function<void()> eval;                       // validation
  std::function<void()> save;                       // a checkpoint of the current step
  std::function<int()> stop;                        // collective: != 0 (the signal) ends the run
  std::function<void(const char* phase)> on_phase;  // "step", "eval", "save": watchdogs etc.
};

enum class LoopEnd { kDone, kStopped };

struct LoopOutcome {
  LoopEnd end = LoopEnd::kDone;
  int signal = 0;  // kStopped: the signal the ranks agreed on
};

// `step` is the state's step counter (read only; the step hook advances it).
LoopOutcome run_loop(const int64_t& step, const LoopSchedule& schedule, const LoopHooks& hooks);

}  // namespace moerun
