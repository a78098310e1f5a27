// The training loop; see trainer.h for the order of one step.
#include "jobs/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "io/checkpoint_manifest.h"
#include "layers/balance.h"
#include "layers/model_plan.h"
#include "runtime/blas.h"
#include "runtime/check.h"
#include "runtime/timer.h"

namespace moerun {

namespace fs = std::filesystem;

namespace {

// Runs fn on rank 0 only (file system work); every rank learns whether it worked, so a failure
// there ends the job on all ranks with rank 0's message instead of leaving them waiting.
template <class Fn>
void on_rank0(const Comm& world, const char* what, Fn&& fn) {
  std::string error;
  if (world.rank() == 0) {
    try {
      fn();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  if (!world.all_true(error.empty())) {
    if (world.rank() == 0) throw ConfigError(error);
    throw ConfigError(fmt::format("{} failed on rank 0", what));
  }
}

std::shared_ptr<io::TokenSource> open_split(const std::string& path, io::Split split,
                                            int64_t vocab) {
  MOERUN_CONFIG_REQUIRE(fs::exists(path) || fs::exists(path + ".idx"),
                        "--data {}: no such file (build the default dataset with "
                        "jobs/make_default_dataset.sh, or give a Megatron .bin/.idx prefix)",
                        path);
  try {
    return io::open_token_source(path, split, vocab);
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    if (what.find("vocab") != std::string::npos && what.find("--vocab") == std::string::npos)
      throw ConfigError(fmt::format("--data {} does not fit --vocab {}: {}", path, vocab, what));
    throw;
  } catch (const std::exception& e) {
    throw ConfigError(fmt::format("--data {}: {}", path, e.what()));
  }
}

double dispatch_seconds(Model& m) {
  double s = 0.0;
  for (MoELayer* l : m.moe_layers())
    s += l->dispatcher().times().local + l->dispatcher().times().exchange;
  return s;
}

std::string human(double v) {
  char buf[32];
  if (v >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

}  // namespace

Trainer::Trainer(const TrainConfig& cfg, Topology& topo) : cfg_(cfg), topo_(topo), counters_(1, 1) {
  const Comm& world = topo_.world;
  const int W = world.size();
  ModelConfig& mc = cfg_.model;
  mc.validate(topo_.ep_size);

  // Scaling-law choices (DeepSeek LLM): deterministic, the same on every rank.
  if (cfg_.batch_auto || cfg_.lr_auto) {
    int64_t batch = cfg_.batch_auto ? 1 : cfg_.global_batch;
    ScalingChoice choice;
    for (int it = 0; it < (cfg_.batch_auto ? 30 : 1); ++it) {  // B depends on C = M * steps * B
      choice = scaling_law_choice(mc, cfg_.steps * batch * mc.seq_len);
      if (cfg_.batch_auto) {
        // Round up to a multiple of ranks x micro-batch so that it shards evenly.
        const int64_t unit = static_cast<int64_t>(W) * cfg_.micro_batch;
        batch = std::max<int64_t>(unit, (choice.global_batch_seqs + unit - 1) / unit * unit);
      }
    }
    if (cfg_.batch_auto) cfg_.global_batch = batch;
    if (cfg_.lr_auto) cfg_.schedule.peak = choice.lr;
    const bool root_rank = world.rank() == 0;
    if (root_rank)
      std::fprintf(stderr, "moerun train: --lr %s, --global-batch %s from the scaling laws:\n%s\n",
                   cfg_.lr_auto ? fmt::format("{:.3g}", cfg_.schedule.peak).c_str() : "given",
                   cfg_.batch_auto ? std::to_string(cfg_.global_batch).c_str() : "given",
                   choice.explanation.c_str());
    if (root_rank && cfg_.batch_auto)
      std::fprintf(
          stderr,
          "  (the global batch is rounded up to a multiple of ranks x --micro-batch = %ld)\n",
          static_cast<long>(W) * static_cast<long>(cfg_.micro_batch));
  }
  cfg_.schedule.total_steps = cfg_.steps;
  if (cfg_.schedule.warmup_steps > cfg_.steps) {  // e.g. a preset's warmup with a short --steps
    if (world.rank() == 0)
      std::fprintf(stderr,
                   "moerun train: --warmup-steps %ld > --steps %ld; warming up over all %ld\n",
                   static_cast<long>(cfg_.schedule.warmup_steps), static_cast<long>(cfg_.steps),
                   static_cast<long>(cfg_.steps));
    cfg_.schedule.warmup_steps = cfg_.steps;
  }
  cfg_.schedule.validate();

  if (cfg_.check_memory) {
    const MemoryEstimate est = estimate_memory(mc, topo_.ep_size, W, cfg_.micro_batch);
    const int64_t avail = available_memory_bytes();
    const int64_t ranks_here = topo_.local_size();
    MOERUN_CONFIG_REQUIRE(avail == 0 || est.total_bytes * ranks_here <= avail,
                          "this model needs about {:.1f} GiB per rank x {} ranks on this node, "
                          "but only {:.1f} GiB is available (--no-memory-check to try anyway):\n{}",
                          static_cast<double>(est.total_bytes) / (1 << 30), ranks_here,
                          static_cast<double>(avail) / (1 << 30), est.breakdown);
  }

  // Data: both splits, checked against the model before anything is allocated.
  train_src_ = open_split(cfg_.data, io::Split::kTrain, mc.vocab);
  val_src_ = open_split(cfg_.data, io::Split::kValidation, mc.vocab);
  io::LoaderOptions lo;
  lo.seq_len = mc.seq_len;
  lo.global_batch = cfg_.global_batch;
  lo.micro_batch = cfg_.micro_batch;
  lo.dp_rank = world.rank();
  lo.dp_size = W;
  lo.seed = cfg_.seed;
  loader_ = std::make_unique<io::TokenLoader>(train_src_, lo);
  MOERUN_CONFIG_REQUIRE(loader_->steps_per_epoch() >= 1,
                        "--data {}: the train split has {} windows of --seq-len {} + 1 tokens, "
                        "fewer than one --global-batch of {}",
                        cfg_.data, loader_->windows_per_epoch(), mc.seq_len, cfg_.global_batch);
  {
    io::LoaderOptions vo = lo;
    vo.global_batch = static_cast<int64_t>(W) * cfg_.micro_batch;
    io::TokenLoader probe(val_src_, vo);
    MOERUN_CONFIG_REQUIRE(probe.steps_per_epoch() >= 1,
                          "--data {}: the validation split has {} windows of --seq-len {} + 1, "
                          "fewer than ranks x --micro-batch = {}",
                          cfg_.data, probe.windows_per_epoch(), mc.seq_len, vo.global_batch);
  }

  set_blas_threads(cfg_.threads > 0 ? cfg_.threads : default_blas_threads(topo_.local_size()));

  // Run directory (rank 0), before the model: a bad --out fails fast.
  on_rank0(world, "setting up the run directory", [&] {
    fs::create_directories(cfg_.out);
    const fs::path metrics = fs::path(cfg_.out) / "metrics.jsonl";
    if (fs::exists(metrics) && cfg_.resume.empty()) {  // keep an earlier run's metrics
      int n = 1;
      while (fs::exists(fs::path(cfg_.out) / fmt::format("metrics.{}.jsonl", n))) ++n;
      fs::rename(metrics, fs::path(cfg_.out) / fmt::format("metrics.{}.jsonl", n));
      std::fprintf(stderr, "moerun train: kept the previous metrics as metrics.%d.jsonl\n", n);
    }
    std::ofstream(fs::path(cfg_.out) / "config.ini") << to_ini(cfg_);
    metrics_ = MetricsWriter(metrics.string());
  });

  model_ = std::make_unique<Model>(mc, topo_.ep);
  model_->init(cfg_.seed);
  params_ = model_->params();
  for (const NamedParam& p : params_) {
    adam_m_.push_back(Tensor::zeros(p.value->shape()));
    adam_v_.push_back(Tensor::zeros(p.value->shape()));
  }
  AdamWConfig ac;
  ac.beta1 = cfg_.beta1;
  ac.beta2 = cfg_.beta2;
  ac.weight_decay = cfg_.weight_decay;
  adamw_ = std::make_unique<AdamW>(ac);
  n_moe_ = static_cast<int64_t>(model_->moe_layers().size());
  counters_ = LoadCounters(std::max<int64_t>(1, n_moe_),
                           mc.moe.routed_experts > 0 ? mc.moe.routed_experts : 1);
  flops_per_token_ = flops_per_token(mc);
  static const double peak = 2.0 * 1024 * 1024 * 1024 / time_sgemm(1024, 1024, 1024, 3) / 1e9;
  peak_gflops_ = peak;  // measured once per process (tests build many trainers)
  const size_t n_tok = static_cast<size_t>(cfg_.micro_batch * mc.seq_len);
  tokens_.resize(n_tok);
  targets_.resize(n_tok);
  if (!cfg_.resume.empty()) resume(cfg_.resume);
}

std::vector<io::CkptTensor> Trainer::checkpoint_tensors() {
  // Expert tensors are (E_local, ...) slices of (E, ...) at the EP rank's first expert; only the
  // first expert-data-parallel replica writes them. Everything else is replicated.
  const int64_t R = topo_.ep_size, r = topo_.ep_rank();
  const bool expert_writer = topo_.edp.rank() == 0;
  std::vector<io::CkptTensor> out;
  auto add = [&](const std::string& name, Tensor* t, bool expert) {
    io::CkptTensor c;
    c.name = name;
    c.local = t;
    c.global_shape = t->shape();
    if (expert) {
      c.kind = io::CkptTensor::Kind::kSharded;
      c.global_shape[0] = t->dim(0) * R;
      c.row_begin = t->dim(0) * r;
      c.write = expert_writer;
    }
    out.push_back(std::move(c));
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    const NamedParam& p = params_[i];
    add(p.name, p.value, p.is_expert);
    add("optim.m." + p.name, &adam_m_[i], p.is_expert);
    add("optim.v." + p.name, &adam_v_[i], p.is_expert);
  }
  const std::vector<MoELayer*> moe = model_->moe_layers();
  for (size_t l = 0; l < moe.size(); ++l)
    add(fmt::format("layers.{}.moe.bias", cfg_.model.first_k_dense + static_cast<int64_t>(l)),
        &moe[l]->params().bias, false);
  return out;
}

io::SaveStats Trainer::save() {
  const io::LoaderState ls = loader_->state();
  const ModelConfig& m = cfg_.model;
  const nlohmann::json meta = {
      {"step", step_},
      {"adamw_steps", adamw_->steps()},
      {"loader", {{"epoch", ls.epoch}, {"step", ls.step}, {"micro", ls.micro}, {"seed", ls.seed}}},
      {"layout", {{"world", topo_.world.size()}, {"ep", topo_.ep_size}}},
      {"model",
       {{"vocab", m.vocab},
        {"hidden", m.hidden},
        {"layers", m.layers},
        {"heads", m.heads},
        {"seq_len", m.seq_len},
        {"first_k_dense", m.first_k_dense},
        {"dense_ffn", m.dense_ffn},
        {"experts", m.moe.routed_experts},
        {"expert_width", m.moe.expert_width},
        {"shared_experts", m.moe.shared_experts},
        {"top_k", m.moe.top_k}}},
      // Weights are drawn once from --seed at init; training itself draws no random numbers,
      // so there is no RNG stream to save beyond the loader's (seed, epoch, step).
      {"rng", {{"seed", cfg_.seed}}},
      {"config_ini", to_ini(cfg_)}};
  const std::vector<io::CkptTensor> tensors = checkpoint_tensors();
  const io::SaveStats st =
      io::save_checkpoint(cfg_.ckpt_dir, step_, tensors, meta, topo_.world, cfg_.keep_last);
  double seconds = st.seconds;
  topo_.world.allreduce_max(std::span<double>(&seconds, 1));
  metrics_.write({{"type", "checkpoint"},
                  {"step", step_},
                  {"dir", cfg_.ckpt_dir},
                  {"seconds", seconds},
                  {"bytes", st.bytes},
                  {"gb_per_s", static_cast<double>(st.bytes) / seconds / 1e9}});
  if (topo_.world.rank() == 0)
    std::fprintf(stderr, "checkpoint step %ld: %.1f MB in %.2f s (%.2f GB/s) -> %s\n",
                 static_cast<long>(step_), static_cast<double>(st.bytes) / 1e6, seconds,
                 static_cast<double>(st.bytes) / seconds / 1e9, cfg_.ckpt_dir.c_str());
  return st;
}

void Trainer::resume(const std::string& dir) {
  const std::optional<int64_t> step = io::latest_step(dir, topo_.world);
  MOERUN_CONFIG_REQUIRE(step.has_value(), "--resume {}: no committed checkpoint there", dir);
  // Every rank reads the same manifest, so these checks agree before any collective.
  try {
    const nlohmann::json meta = io::read_manifest(dir, *step).meta;
    const ModelConfig& m = cfg_.model;
    const std::pair<const char*, int64_t> shape[] = {{"vocab", m.vocab},
                                                     {"hidden", m.hidden},
                                                     {"layers", m.layers},
                                                     {"heads", m.heads},
                                                     {"first_k_dense", m.first_k_dense},
                                                     {"dense_ffn", m.dense_ffn},
                                                     {"experts", m.moe.routed_experts},
                                                     {"expert_width", m.moe.expert_width},
                                                     {"shared_experts", m.moe.shared_experts}};
    for (const auto& [key, mine] : shape) {
      const int64_t theirs = meta.at("model").at(key).get<int64_t>();
      std::string option = std::string("--") + key;
      std::replace(option.begin(), option.end(), '_', '-');
      MOERUN_CONFIG_REQUIRE(theirs == mine, "--resume {}: step {} holds a model with {} {}, not {}",
                            dir, *step, option, theirs, mine);
    }
    const int64_t at = meta.at("step").get<int64_t>();
    MOERUN_CONFIG_REQUIRE(at < cfg_.steps,
                          "--resume {}: the checkpoint is at step {}, not before --steps {}", dir,
                          at, cfg_.steps);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(
        fmt::format("--resume {}: step {}: the checkpoint meta is not moerun train's ({})", dir,
                    *step, e.what()));
  }
  const std::vector<io::CkptTensor> tensors = checkpoint_tensors();
  const nlohmann::json meta = io::load_checkpoint(dir, *step, tensors, topo_.world);
  step_ = meta.at("step").get<int64_t>();
  adamw_->set_steps(meta.at("adamw_steps").get<int64_t>());
  io::LoaderState ls;
  ls.epoch = meta.at("loader").at("epoch").get<uint64_t>();
  ls.step = meta.at("loader").at("step").get<uint64_t>();
  ls.micro = meta.at("loader").at("micro").get<uint64_t>();
  ls.seed = meta.at("loader").at("seed").get<uint64_t>();
  loader_->restore(ls);
  if (topo_.world.rank() == 0)
    std::fprintf(stderr, "moerun train: resumed from %s step %ld (written by %d rank(s), EP %d)\n",
                 dir.c_str(), static_cast<long>(step_), meta.at("layout").at("world").get<int>(),
                 meta.at("layout").at("ep").get<int>());
}

StepResult Trainer::step() {
  const Comm& world = topo_.world;
  const int W = world.size();
  const ModelConfig& mc = cfg_.model;
  StepResult r;
  const double t0 = now_seconds();
  const double a2a0 = dispatch_seconds(*model_);
  model_->zero_grad();
  counters_.reset();
  const int64_t n_micro = loader_->micro_batches();
  const int64_t mb = cfg_.micro_batch, T = mc.seq_len;
  double loss_sum = 0.0;
  const std::vector<MoELayer*> moe = model_->moe_layers();
  for (int64_t m = 0; m < n_micro; ++m) {
    io::TokenBatch batch = loader_->next_batch();
    const int32_t* w = batch.tokens.data<int32_t>();
    for (int64_t s = 0; s < mb; ++s)
      for (int64_t t = 0; t < T; ++t) {
        tokens_[static_cast<size_t>(s * T + t)] = w[s * (T + 1) + t];
        targets_[static_cast<size_t>(s * T + t)] = w[s * (T + 1) + t + 1];
      }
    loss_sum += model_->forward(Tensor::from_host<int32_t>(tokens_, {mb, T}),
                                Tensor::from_host<int32_t>(targets_, {mb, T}));
    model_->backward();
    for (size_t l = 0; l < moe.size(); ++l)
      counters_.add(static_cast<int64_t>(l), moe[l]->stats().tokens_per_expert,
                    moe[l]->stats().dropped);
  }
  r.t_alltoall = dispatch_seconds(*model_) - a2a0;
  const double t1 = now_seconds();
  r.t_compute = t1 - t0 - r.t_alltoall;

  // Loss, gradients, load counts: summed over the world (experts: over the expert-DP group).
  double loss = loss_sum;
  world.allreduce_sum(std::span<double>(&loss, 1));
  r.loss = loss / static_cast<double>(W * n_micro);
  sync_gradients(r);
  if (n_moe_ > 0) counters_.allreduce(world);
  const double t2 = now_seconds();
  r.t_allreduce = t2 - t1;

  // Optimizer: the mean over every sequence of the global batch, clipped, in one pass.
  const double mean_scale = 1.0 / static_cast<double>(W * n_micro);
  r.grad_norm *= mean_scale;
  double clip = 1.0;
  if (cfg_.grad_clip > 0 && r.grad_norm > cfg_.grad_clip) clip = cfg_.grad_clip / r.grad_norm;
  r.lr = cfg_.schedule.at(step_);
  std::vector<AdamWParam> ap;
  ap.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const NamedParam& p = params_[i];
    ap.push_back(AdamWParam{p.value->span<float>(), p.grad->span<float>(), adam_m_[i].span<float>(),
                            adam_v_[i].span<float>(),
                            p.is_matrix ? WeightDecay::kApply : WeightDecay::kNone});
  }
  adamw_->step(ap, r.lr, mean_scale * clip);
  for (size_t l = 0; l < moe.size(); ++l) {
    const auto counts = counters_.counts(static_cast<int64_t>(l));
    update_bias(mc.moe, counts, moe[l]->params().bias);
    r.maxvio_batch.push_back(max_violation(counts));
    r.dropped += counters_.dropped(static_cast<int64_t>(l));
  }
  r.t_optimizer = now_seconds() - t2;
  r.seconds = now_seconds() - t0;
  ++step_;
  return r;
}

void Trainer::sync_gradients(StepResult& r) {
  grad_sync_.allreduce_sum(topo_.world, model_->dense_grads());
  grad_sync_.allreduce_sum(topo_.edp, model_->expert_grads());
  std::vector<std::span<float>> dense, expert;
  for (const NamedParam& p : params_)
    (p.is_expert ? expert : dense).push_back(p.grad->span<float>());
  // Global norm, each parameter once: dense gradients are now identical on every rank; each EP
  // rank holds different experts (identical across expert-DP replicas), so sum over the EP group.
  double dense_sq = 0.0, expert_sq = 0.0;
  for (const auto& g : dense) dense_sq += sum_of_squares(g);
  for (const auto& g : expert) expert_sq += sum_of_squares(g);
  topo_.ep.allreduce_sum(std::span<double>(&expert_sq, 1));
  r.grad_norm = std::sqrt(dense_sq + expert_sq);
}

EvalResult Trainer::evaluate() {
  const Comm& world = topo_.world;
  const ModelConfig& mc = cfg_.model;
  const int64_t T = mc.seq_len, E = std::max<int64_t>(1, mc.moe.routed_experts);
  io::LoaderOptions vo = loader_->options();
  vo.global_batch = static_cast<int64_t>(world.size()) * cfg_.micro_batch;
  // Shuffled with the run's seed from a fresh state: the same windows at every evaluation, drawn
  // from the whole split (every domain), not just its first documents.
  io::TokenLoader vl(val_src_, vo);
  const int64_t n_batches = std::min(cfg_.eval_batches, vl.steps_per_epoch());
  EvalResult res;
  res.domains = val_src_->domain_names();
  const size_t D = res.domains.size(), L = static_cast<size_t>(n_moe_);
  std::vector<double> sums(2 * D, 0.0);  // loss sum, sequences per domain
  std::vector<int64_t> counts(static_cast<size_t>(E) * L * (D + 1), 0);  // [all | d] x L x E
  const std::vector<MoELayer*> moe = model_->moe_layers();
  for (int64_t b = 0; b < n_batches; ++b) {
    io::TokenBatch batch = vl.next_batch();
    const int32_t* w = batch.tokens.data<int32_t>();
    for (int64_t s = 0; s < cfg_.micro_batch; ++s) {
      for (int64_t t = 0; t < T; ++t) {
        tokens_[static_cast<size_t>(t)] = w[s * (T + 1) + t];
        targets_[static_cast<size_t>(t)] = w[s * (T + 1) + t + 1];
      }
      double loss =
          model_->forward(Tensor::from_host(std::span<const int32_t>(tokens_).first(T), {1, T}),
                          Tensor::from_host(std::span<const int32_t>(targets_).first(T), {1, T}));
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
  double total = 0.0, n = 0.0;
  for (size_t d = 0; d < D; ++d) {
    total += sums[d];
    n += sums[D + d];
    res.domain_loss.push_back(sums[D + d] > 0 ? sums[d] / sums[D + d]
                                              : std::numeric_limits<double>::quiet_NaN());
  }
  res.val_loss = n > 0 ? total / n : std::numeric_limits<double>::quiet_NaN();
  auto vio = [&](size_t block, size_t l) {
    return max_violation(std::span<const int64_t>(
        counts.data() + (block * L + l) * static_cast<size_t>(E), static_cast<size_t>(E)));
  };
  for (size_t l = 0; l < L; ++l) res.maxvio_global.push_back(vio(0, l));
  res.domain_maxvio.resize(D);
  for (size_t d = 0; d < D; ++d)
    for (size_t l = 0; l < L; ++l) res.domain_maxvio[d].push_back(vio(d + 1, l));
  return res;
}

void Trainer::write_loads() {
  // Per-expert loads of the last step and the rank x rank dispatch bytes so far (world ranks).
  const Comm& world = topo_.world;
  const int W = world.size(), me = world.rank(), R = topo_.ep_size;
  std::vector<int64_t> bytes(static_cast<size_t>(W) * static_cast<size_t>(W), 0);
  for (MoELayer* l : model_->moe_layers()) {
    const auto& b = l->dispatcher().times().bytes_to_rank;
    for (size_t r = 0; r < b.size(); ++r)
      bytes[static_cast<size_t>(me) * static_cast<size_t>(W) + static_cast<size_t>(me - me % R) +
            r] += b[r];
  }
  world.allreduce_sum(std::span<int64_t>(bytes));
  if (!metrics_.enabled()) return;
  nlohmann::json loads = nlohmann::json::array(), matrix = nlohmann::json::array();
  for (int64_t l = 0; l < n_moe_; ++l) {
    const auto c = counters_.counts(l);
    loads.push_back(std::vector<int64_t>(c.begin(), c.end()));
  }
  for (int i = 0; i < W; ++i)
    matrix.push_back(std::vector<int64_t>(bytes.begin() + i * W, bytes.begin() + (i + 1) * W));
  metrics_.write(
      {{"type", "loads"}, {"step", step_}, {"layer_loads", loads}, {"dispatch_bytes", matrix}});
}

void Trainer::log_step(const StepResult& r) {
  if (!metrics_.enabled()) return;
  const double tokens = static_cast<double>(cfg_.global_batch * cfg_.model.seq_len);
  const double tps = tokens / r.seconds;
  const double mfu = flops_per_token_ * tps / topo_.world.size() / (peak_gflops_ * 1e9);
  metrics_.write({{"type", "train"},
                  {"step", step_},
                  {"loss", r.loss},
                  {"lr", r.lr},
                  {"grad_norm", r.grad_norm},
                  {"tokens_per_s", tps},
                  {"mfu", mfu},
                  {"time",
                   {{"compute", r.t_compute},
                    {"alltoall", r.t_alltoall},
                    {"allreduce", r.t_allreduce},
                    {"optimizer", r.t_optimizer}}},
                  {"maxvio_batch", r.maxvio_batch},
                  {"dropped", r.dropped}});
}

void Trainer::run() {
  const Comm& world = topo_.world;
  const bool root = world.rank() == 0;
  const ParamCounts pc = count_params(cfg_.model);
  if (root) {
    metrics_.write({{"type", "run"},
                    {"config", cfg_.config_file},
                    {"ranks", world.size()},
                    {"ep", topo_.ep_size},
                    {"params", pc.total},
                    {"activated_params", pc.activated_per_token},
                    {"tokens_per_step", cfg_.global_batch * cfg_.model.seq_len},
                    {"sgemm_peak_gflops_per_rank", peak_gflops_},
                    {"blas_core", blas_core()}});
    std::fprintf(stderr,
                 "moerun train: %s params (%s activated per token), %d rank(s), EP %d, "
                 "global batch %ld x %ld tokens, %ld steps, lr %.3g (%s), run dir %s\n",
                 human(static_cast<double>(pc.total)).c_str(),
                 human(static_cast<double>(pc.activated_per_token)).c_str(), world.size(),
                 topo_.ep_size, static_cast<long>(cfg_.global_batch),
                 static_cast<long>(cfg_.model.seq_len), static_cast<long>(cfg_.steps),
                 cfg_.schedule.peak, to_string(cfg_.schedule.kind).c_str(), cfg_.out.c_str());
  }
  ProgressLine progress(root);
  const double start = now_seconds();
  const int64_t first_step = step_;  // > 0 after a resume
  double last_maxvio = 0.0;
  auto do_eval = [&] {
    const EvalResult ev = evaluate();
    if (!root) return;
    progress.finish();
    nlohmann::json domains = nlohmann::json::object();
    std::string per_domain;
    for (size_t d = 0; d < ev.domains.size(); ++d) {
      domains[ev.domains[d]] = {{"val_loss", ev.domain_loss[d]},
                                {"maxvio_global", ev.domain_maxvio[d]}};
      per_domain += fmt::format(" {} {:.3f}", ev.domains[d], ev.domain_loss[d]);
    }
    metrics_.write({{"type", "eval"},
                    {"step", step_},
                    {"val_loss", ev.val_loss},
                    {"maxvio_global", ev.maxvio_global},
                    {"domains", domains}});
    double mv = 0.0;
    for (double v : ev.maxvio_global) mv += v;
    if (!ev.maxvio_global.empty()) mv /= static_cast<double>(ev.maxvio_global.size());
    std::fprintf(stderr, "eval step %ld: val loss %.4f (%s ), MaxVio_global %.3f\n",
                 static_cast<long>(step_), ev.val_loss, per_domain.c_str(), mv);
  };
  StepResult r;
  while (step_ < cfg_.steps) {
    r = step();
    log_step(r);
    last_maxvio = 0.0;
    for (double v : r.maxvio_batch) last_maxvio += v;
    if (!r.maxvio_batch.empty()) last_maxvio /= static_cast<double>(r.maxvio_batch.size());
    if (root && (step_ % cfg_.log_every == 0 || step_ == cfg_.steps || step_ == 1)) {
      const double elapsed = now_seconds() - start;
      const double eta = elapsed / static_cast<double>(step_ - first_step) *
                         static_cast<double>(cfg_.steps - step_);
      const double tps = static_cast<double>(cfg_.global_batch * cfg_.model.seq_len) / r.seconds;
      progress.update(fmt::format(
          "step {}/{} | loss {:.4f} | lr {:.2e} | {} tok/s | MaxVio {:.3f} | ETA {}", step_,
          cfg_.steps, r.loss, r.lr, human(tps), last_maxvio, format_duration(eta)));
    }
    if (cfg_.loads_every > 0 && step_ % cfg_.loads_every == 0) write_loads();
    if (cfg_.eval_every > 0 && step_ % cfg_.eval_every == 0 && step_ != cfg_.steps) do_eval();
    if (cfg_.save_every > 0 && step_ % cfg_.save_every == 0 && step_ != cfg_.steps) {
      progress.finish();
      save();
    }
  }
  do_eval();
  save();
  if (root) {
    progress.finish();
    std::fprintf(stderr, "moerun train: done in %s; metrics %s (plot: jobs/plot.sh %s)\n",
                 format_duration(now_seconds() - start).c_str(),
                 (fs::path(cfg_.out) / "metrics.jsonl").c_str(), cfg_.out.c_str());
  }
}

}  // namespace moerun
