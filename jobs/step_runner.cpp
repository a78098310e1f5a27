// StepRunner; see step_runner.h for the order of one step.
#include "jobs/step_runner.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "layers/balance.h"
#include "runtime/timer.h"

namespace moerun {

double dispatch_seconds(Model& m) {
  double s = 0.0;
  for (MoELayer* l : m.moe_layers())
    s += l->dispatcher().times().local + l->dispatcher().times().exchange;
  return s;
}

StepRunner::StepRunner(const TrainConfig& cfg, const Model& model)
    : cfg_(cfg),
      counters_(std::max<int64_t>(1, model.config().layers - model.config().first_k_dense),
                model.config().moe.routed_experts > 0 ? model.config().moe.routed_experts : 1) {
  const size_t n_tok = static_cast<size_t>(cfg.micro_batch * cfg.model.seq_len);
  tokens_.resize(n_tok);
  targets_.resize(n_tok);
}

StepResult StepRunner::run(TrainState& state) {
  const Topology& topo = state.topo;
  const Comm& world = topo.world;
  const int W = world.size();
  const ModelConfig& mc = cfg_.model;
  Model& model = *state.model;
  StepResult r;
  const double t0 = now_seconds();
  const double a2a0 = dispatch_seconds(model);
  const SyncBytes dense0 = dense_sync_.bytes(), expert0 = expert_sync_.bytes();
  model.zero_grad();
  counters_.reset();
  const int64_t n_micro = state.loader->micro_batches();
  const int64_t mb = cfg_.micro_batch, T = mc.seq_len;
  double loss_sum = 0.0;
  const std::vector<MoELayer*> moe = model.moe_layers();
  for (int64_t m = 0; m < n_micro; ++m) {
    io::TokenBatch batch = state.loader->next_batch();
    const int32_t* w = batch.tokens.data<int32_t>();
    for (int64_t s = 0; s < mb; ++s)
      for (int64_t t = 0; t < T; ++t) {
        tokens_[static_cast<size_t>(s * T + t)] = w[s * (T + 1) + t];
        targets_[static_cast<size_t>(s * T + t)] = w[s * (T + 1) + t + 1];
      }
    loss_sum += model.forward(Tensor::from_host<int32_t>(tokens_, {mb, T}),
                              Tensor::from_host<int32_t>(targets_, {mb, T}));
    model.backward();
    for (size_t l = 0; l < moe.size(); ++l)
      counters_.add(static_cast<int64_t>(l), moe[l]->stats().tokens_per_expert,
                    moe[l]->stats().dropped);
  }
  r.t_alltoall = dispatch_seconds(model) - a2a0;
  const double t1 = now_seconds();
  r.t_compute = t1 - t0 - r.t_alltoall;

  // Loss, gradients, load counts: summed over the world (experts: over the expert-DP group).
  double loss = loss_sum;
  world.allreduce_sum(std::span<double>(&loss, 1));
  r.loss = loss / static_cast<double>(W * n_micro);
  sync_gradients(state, r);
  if (!moe.empty()) counters_.allreduce(world);
  const double t2 = now_seconds();
  r.t_allreduce = t2 - t1;

  // Optimizer: the mean over every sequence of the global batch, clipped, in one pass.
  const double mean_scale = 1.0 / static_cast<double>(W * n_micro);
  r.grad_norm *= mean_scale;
  double clip = 1.0;
  if (cfg_.grad_clip > 0 && r.grad_norm > cfg_.grad_clip) clip = cfg_.grad_clip / r.grad_norm;
  r.lr = cfg_.schedule.at(state.step);
  state.optimizer->step(r.lr, mean_scale * clip);
  if (state.optimizer->zero()) gather_parameters(state);
  // Loss-free balancing: the router biases are state that the global counts update.
  for (size_t l = 0; l < moe.size(); ++l) {
    const auto counts = counters_.counts(static_cast<int64_t>(l));
    update_bias(mc.moe, counts, moe[l]->params().bias);
    r.maxvio_batch.push_back(max_violation(counts));
    r.dropped += counters_.dropped(static_cast<int64_t>(l));
  }
  r.t_optimizer = now_seconds() - t2;
  r.seconds = now_seconds() - t0;
  ++state.step;

  // Bookkeeping outside the timed step: this step's gradient-sync bytes, summed over the world.
  const SyncBytes d = dense_sync_.bytes() - dense0, e = expert_sync_.bytes() - expert0;
  std::array<int64_t, 6> sync = {d.allreduce, d.reduce_scatter, d.allgather,
                                 e.allreduce, e.reduce_scatter, e.allgather};
  world.allreduce_sum(std::span<int64_t>(sync));
  r.sync_dense = {sync[0], sync[1], sync[2]};
  r.sync_expert = {sync[3], sync[4], sync[5]};
  return r;
}

void StepRunner::sync_gradients(TrainState& state, StepResult& r) {
  if (state.optimizer->zero()) {
    sync_gradient_shards(state, r);
    return;
  }
  // In place over the model's two flat gradient regions (no packing copies).
  dense_sync_.allreduce_sum(state.topo.world, state.model->dense_grads());
  expert_sync_.allreduce_sum(state.topo.edp, state.model->expert_grads());
  std::vector<std::span<float>> dense, expert;
  for (const NamedParam& p : state.optimizer->params())
    (p.is_expert ? expert : dense).push_back(p.grad->span<float>());
  // Global norm, each parameter once: dense gradients are now identical on every rank; each EP
  // rank holds different experts (identical across expert-DP replicas), so sum over the EP group.
  double dense_sq = 0.0, expert_sq = 0.0;
  for (const auto& g : dense) dense_sq += sum_of_squares(g);
  for (const auto& g : expert) expert_sq += sum_of_squares(g);
  state.topo.ep.allreduce_sum(std::span<double>(&expert_sq, 1));
  r.grad_norm = std::sqrt(dense_sq + expert_sq);
}

void StepRunner::sync_gradient_shards(TrainState& state, StepResult& r) {
  // ZeRO-1: each rank keeps the sum of its shard of each region (the same sums as the
  // all-reduce, in MPI's reduce-scatter order, so equal to rounding, not bitwise).
  Optimizer& opt = *state.optimizer;
  dense_sync_.reduce_scatter_sum(state.topo.world, state.model->dense_grads(),
                                 opt.grad_shard(false));
  expert_sync_.reduce_scatter_sum(state.topo.edp, state.model->expert_grads(),
                                  opt.grad_shard(true));
  // Global norm, each parameter once: the dense shards tile the dense region over the world; the
  // expert shards tile each EP rank's experts over its expert-DP group, and the EP ranks hold
  // different experts, so every world rank's shards together hold every gradient once. The gaps
  // between parameters are zeros.
  double sq = sum_of_squares(opt.grad_shard(false).span<float>()) +
              sum_of_squares(opt.grad_shard(true).span<float>());
  state.topo.world.allreduce_sum(std::span<double>(&sq, 1));
  r.grad_norm = std::sqrt(sq);
}

void StepRunner::gather_parameters(TrainState& state) {
  Model& m = *state.model;
  const int64_t dense = m.dense_grads().numel();
  Tensor& params = m.param_buffer();
  dense_sync_.allgather(state.topo.world, params.view(0, {dense}));
  expert_sync_.allgather(state.topo.edp, params.view(dense, {params.numel() - dense}));
}

}  // namespace moerun
