// Evaluator; see evaluator.h.
#include "jobs/evaluator.h"

#include <algorithm>
#include <limits>

#include "comm/ep/load_counters.h"

namespace moerun {

Evaluator::Evaluator(const TrainConfig& cfg, std::shared_ptr<io::TokenSource> validation)
    : cfg_(cfg), val_src_(std::move(validation)) {
  tokens_.resize(static_cast<size_t>(cfg.model.seq_len));
  targets_.resize(static_cast<size_t>(cfg.model.seq_len));
}

EvalResult Evaluator::run(TrainState& state) {
  const Comm& world = state.topo.world;
  const ModelConfig& mc = cfg_.model;
  Model& model = *state.model;
  const int64_t T = mc.seq_len, E = std::max<int64_t>(1, mc.moe.routed_experts);
  io::LoaderOptions vo = state.loader->options();
  vo.global_batch = static_cast<int64_t>(world.size()) * cfg_.micro_batch;
  // Shuffled with the run's seed from a fresh state: the same windows at every evaluation, drawn
  // from the whole split (every domain), not just its first documents.
  io::TokenLoader vl(val_src_, vo);
  const int64_t n_batches = std::min(cfg_.eval_batches, vl.steps_per_epoch());
  const std::vector<MoELayer*> moe = model.moe_layers();
  EvalResult res;
  res.domains = val_src_->domain_names();
  const size_t D = res.domains.size(), L = moe.size();
  std::vector<double> sums(2 * D, 0.0);  // loss sum, sequences per domain
  std::vector<int64_t> counts(static_cast<size_t>(E) * L * (D + 1), 0);  // [all | d] x L x E
  for (int64_t b = 0; b < n_batches; ++b) {
    io::TokenBatch batch = vl.next_batch();
    const int32_t* w = batch.tokens.data<int32_t>();
    for (int64_t s = 0; s < cfg_.micro_batch; ++s) {
      for (int64_t t = 0; t < T; ++t) {
        tokens_[static_cast<size_t>(t)] = w[s * (T + 1) + t];
        targets_[static_cast<size_t>(t)] = w[s * (T + 1) + t + 1];
      }
      double loss = model.forward(Tensor::from_host<int32_t>(tokens_, {1, T}),
                                  Tensor::from_host<int32_t>(targets_, {1, T}));
      const size_t d = static_cast<size_t>(batch.domain[static_cast<size_t>(s)]);
      for (size_t l = 0; l < L; ++l) {
        loss -= moe[l]->stats().aux_loss;  // validation loss is the cross-entropy alone
        const auto& tpe = moe[l]->stats().tokens_per_expert;
        for (int64_t e = 0; e < E; ++e) {
          counts[l * static_cast<size_t>(E) + static_cast<size_t>(e)] +=
              tpe[static_cast<size_t>(e)];
          counts[((d + 1) * L + l) * static_cast<size_t>(E) + static_cast<size_t>(e)] +=
              tpe[static_cast<size_t>(e)];
        }
      }
      sums[d] += loss;
      sums[D + d] += 1.0;
    }
  }
  world.allreduce_sum(std::span<double>(sums));
  world.allreduce_sum(std::span<int64_t>(counts));
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  double total = 0.0, n = 0.0;
  for (size_t d = 0; d < D; ++d) {
    total += sums[d];
    n += sums[D + d];
    res.domain_sequences.push_back(static_cast<int64_t>(sums[D + d]));
    res.domain_loss.push_back(sums[D + d] > 0 ? sums[d] / sums[D + d] : kNaN);
  }
  res.val_loss = n > 0 ? total / n : kNaN;
  auto vio = [&](size_t block, size_t l) {
    return max_violation(std::span<const int64_t>(
        counts.data() + (block * L + l) * static_cast<size_t>(E), static_cast<size_t>(E)));
  };
  for (size_t l = 0; l < L; ++l) res.maxvio_global.push_back(vio(0, l));
  res.domain_maxvio.resize(D);
  for (size_t d = 0; d < D; ++d) {
    if (res.domain_sequences[d] == 0) continue;  // no data: no balance to report (not 0)
    for (size_t l = 0; l < L; ++l) res.domain_maxvio[d].push_back(vio(d + 1, l));
  }
  return res;
}

}  // namespace moerun
