// Evaluator: the validation loss per domain and MaxVio_global per MoE layer over a fixed set of
// validation windows (the same ones at every evaluation).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "io/token_loader.h"
#include "jobs/train_options.h"
#include "jobs/train_state.h"

namespace moerun {

struct EvalResult {
  double val_loss = 0.0;              // NaN when the split had no sequence at all
  std::vector<double> maxvio_global;  // per MoE layer over the whole evaluation
  std::vector<std::string> domains;
  std::vector<int64_t> domain_sequences;           // sequences evaluated per domain
  std::vector<double> domain_loss;                 // per domain (NaN when it had no sequence)
  std::vector<std::vector<double>> domain_maxvio;  // per domain, per MoE layer (empty: none)
};

class Evaluator {
 public:
  Evaluator(const TrainConfig& cfg, std::shared_ptr<io::TokenSource> validation);
  EvalResult run(TrainState& state);  // collective over the world

 private:
  const TrainConfig& cfg_;
  std::shared_ptr<io::TokenSource> val_src_;
  std::vector<int32_t> tokens_, targets_;  // one sequence
};

}  // namespace moerun
