// `moerun train`: options -> topology -> Trainer::run.
#include "comm/topology.h"
#include "jobs/jobs.h"
#include "jobs/train_options.h"
#include "jobs/trainer.h"

namespace moerun {

int run_train(int argc, char** argv) {
  const Comm world = Comm::world();
  TrainConfig cfg;
  if (!parse_train_config(argc, argv, cfg, world.rank() == 0)) return 0;  // --help
  Topology topo = Topology::create(cfg.ep_size > 0 ? cfg.ep_size : world.size());
  cfg.ep_size = topo.ep_size;
  Trainer trainer(cfg, topo);
  // Stopped after saving: 128 + the signal outside Slurm (130 for SIGINT, 143 for SIGTERM), so
  // that scripts see the run did not finish; under Slurm 0 once requeued (preemption.h).
  return trainer.run().exit_status;
}

}  // namespace moerun
