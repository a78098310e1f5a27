// The training loop; see train_loop.h.
#include "jobs/train_loop.h"

namespace moerun {

LoopOutcome run_loop(const int64_t& step, const LoopSchedule& s, const LoopHooks& h) {
  auto phase = [&](const char* name) {
    if (h.on_phase) h.on_phase(name);
  };
  LoopOutcome out;
  while (step < s.steps) {
    phase("step");
    const StepResult r = h.step();
    if (h.log) h.log(r);
    const bool last = step == s.steps;
    if (!last && s.eval_every > 0 && step % s.eval_every == 0) {
      phase("eval");
      h.eval();
    }
    const int sig = h.stop ? h.stop() : 0;
    if (sig != 0) {  // every rank agreed: save this step and end
      phase("save");
      h.save();
      out.end = LoopEnd::kStopped;
      out.signal = sig;
      return out;
    }
    if (!last && s.save_every > 0 && step % s.save_every == 0) {
      phase("save");
      h.save();
    }
  }
  phase("eval");
  h.eval();
  phase("save");
  h.save();
  return out;
}

}  // namespace moerun
