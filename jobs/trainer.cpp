// Trainer: setup, state, runner, evaluator and the loop's hooks; see trainer.h.
#include "jobs/trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "comm/agree.h"
#include "io/checkpoint_manifest.h"
#include "jobs/train_setup.h"
#include "layers/model_plan.h"
#include "runtime/blas.h"
#include "runtime/check.h"
#include "runtime/host_allocator.h"
#include "runtime/log.h"
#include "runtime/peak_rss.h"
#include "runtime/signals.h"
#include "runtime/timer.h"
#include "runtime/watchdog.h"

namespace moerun {

namespace fs = std::filesystem;

namespace {

std::string human(double v) {
  if (v >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

double mean(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

// Rank 0's choice of the steps a resume tries, in order (see Trainer::resume). Empty when
// --resume auto finds nothing to resume.
std::vector<int64_t> resume_candidates(const std::string& dir, bool auto_mode, int64_t want) {
  const std::string opt = auto_mode ? fmt::format("--resume auto (--ckpt-dir {})", dir)
                                    : fmt::format("--resume {}", dir);
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    MOERUN_CONFIG_REQUIRE(auto_mode, "{}: does not exist", opt);
    log::info("moerun train: {}: no checkpoint yet; starting from step 0", opt);
    return {};
  }
  MOERUN_CONFIG_REQUIRE(fs::is_directory(dir, ec), "{}: is not a directory", opt);
  const io::CheckpointScan scan = io::scan_checkpoints(dir);
  for (const auto& p : scan.partial)
    log::warn("moerun train: ignoring uncommitted checkpoint {}: {}", io::step_dir(dir, p.step),
              p.reason);
  if (scan.committed.empty()) {
    MOERUN_CONFIG_REQUIRE(auto_mode,
                          "{}: holds no committed checkpoint (no step_<N>/manifest.json{})", opt,
                          scan.partial.empty() ? "" : "; see the uncommitted steps above");
    log::info("moerun train: {}: no committed checkpoint yet; starting from step 0", opt);
    return {};
  }
  const std::vector<int64_t>& c = scan.committed;  // increasing
  auto list = [&] {
    std::string s;
    for (int64_t x : c) s += (s.empty() ? "" : ", ") + std::to_string(x);
    return s;
  };
  if (want >= 0) {  // explicit: exactly that step, no fallback
    MOERUN_CONFIG_REQUIRE(std::find(c.begin(), c.end(), want) != c.end(),
                          "--resume-step {}: {} has no committed step {} (committed: {})", want,
                          dir, want, list());
    return {want};
  }
  const int64_t newest = c.back();
  int64_t chosen = newest;
  const std::string latest = fmt::format("{}/latest", dir);
  if (scan.latest_file && std::find(c.begin(), c.end(), *scan.latest_file) != c.end()) {
    chosen = *scan.latest_file;  // `latest` is written last by every save and import
    if (chosen != newest)
      log::warn(
          "moerun train: WARNING: {} names step {}, but step {} is newer; resuming step {} as "
          "`latest` says (it was written last, e.g. by an import); --resume-step {} resumes the "
          "newer one",
          latest, chosen, newest, chosen, newest);
  } else {
    const std::string why =
        !fs::exists(latest, ec) ? "is missing"
        : scan.latest_file ? fmt::format("names step {}, which is not committed", *scan.latest_file)
                           : fmt::format("is {}", scan.latest_problem);
    log::warn("moerun train: WARNING: {} {}; resuming the newest committed step {}", latest, why,
              newest);
  }
  std::vector<int64_t> out = {chosen};
  if (auto_mode)  // fall back over the older steps, newest first
    for (auto it = c.rbegin(); it != c.rend(); ++it)
      if (*it < chosen) out.push_back(*it);
  return out;
}

}  // namespace

Trainer::Trainer(const TrainConfig& cfg, Topology& topo) : cfg_(cfg), topo_(topo) {
  const Comm& world = topo_.world;
  resolve_train_config(cfg_, topo_);
  check_train_memory(cfg_, topo_);
  TrainData data = open_train_data(cfg_, topo_);  // checked before anything is allocated
  set_blas_threads(cfg_.threads > 0 ? cfg_.threads : default_blas_threads(topo_.local_size()));
  // A bad --out or --ckpt-dir fails now, not after hours of training at the first save.
  metrics_ = prepare_run_dir(cfg_, world);
  check_checkpoint_dir(cfg_.ckpt_dir, 12 * count_params(cfg_.model).total, world);
  preemption_ = std::make_unique<Preemption>(cfg_, topo_);  // reads the Slurm time limit

  state_ = std::make_unique<TrainState>(cfg_, topo_, std::move(data.train));
  runner_ = std::make_unique<StepRunner>(cfg_, *state_->model);
  evaluator_ = std::make_unique<Evaluator>(cfg_, std::move(data.validation));
  flops_per_token_ = flops_per_token(cfg_.model);
  static const double peak = 2.0 * 1024 * 1024 * 1024 / time_sgemm(1024, 1024, 1024, 3) / 1e9;
  peak_gflops_ = peak;  // measured once per process (tests build many trainers)
  if (!cfg_.resume.empty()) resume(cfg_.resume == "auto" ? cfg_.ckpt_dir : cfg_.resume);
}

StepResult Trainer::step() {
  // Each step's own high-water marks; one small all-reduce gives the worst rank's.
  reset_rss_high_water();
  HostAllocator::reset_peak();
  StepResult r = runner_->run(*state_);
  std::array<double, 2> mem = {static_cast<double>(rss_high_water_bytes()),
                               static_cast<double>(HostAllocator::peak_live_bytes())};
  topo_.world.allreduce_max(std::span<double>(mem));
  step_memory_ = {static_cast<int64_t>(mem[0]), static_cast<int64_t>(mem[1])};
  return r;
}

EvalResult Trainer::evaluate() {
  return evaluator_->run(*state_);
}

io::SaveStats Trainer::save() {
  const TrainMeta meta = state_->meta(cfg_);
  const std::vector<io::CkptTensor> tensors = state_->checkpoint_tensors();
  const io::SaveStats st = io::save_checkpoint(cfg_.ckpt_dir, state_->step, tensors, meta.to_json(),
                                               topo_.world, cfg_.keep_last);
  double seconds = st.seconds;
  topo_.world.allreduce_max(std::span<double>(&seconds, 1));
  metrics_.write({{"type", "checkpoint"},
                  {"step", state_->step},
                  {"dir", cfg_.ckpt_dir},
                  {"seconds", seconds},
                  {"bytes", st.bytes},
                  {"gb_per_s", static_cast<double>(st.bytes) / seconds / 1e9}});
  log::info("checkpoint step {}: {:.1f} MB in {:.2f} s ({:.2f} GB/s) -> {}", state_->step,
            static_cast<double>(st.bytes) / 1e6, seconds,
            static_cast<double>(st.bytes) / seconds / 1e9, cfg_.ckpt_dir);
  return st;
}

void Trainer::resume(const std::string& dir) {
  const Comm& world = topo_.world;
  const bool auto_mode = cfg_.resume == "auto";
  // Rank 0 reads the directory and decides; every rank tries the same steps in the same order.
  std::vector<int64_t> candidates;
  on_rank0<ConfigError, ConfigError>(world, "reading the checkpoint directory", [&] {
    candidates = resume_candidates(dir, auto_mode, cfg_.resume_step);
  });
  int64_t n = static_cast<int64_t>(candidates.size());
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(&n, 1)), 0);
  candidates.resize(static_cast<size_t>(n));
  world.broadcast(std::as_writable_bytes(std::span<int64_t>(candidates)), 0);
  if (candidates.empty()) return;  // --resume auto with nothing to resume: a fresh start
  load_first_verified(dir, candidates);
}

void Trainer::load_first_verified(const std::string& dir, const std::vector<int64_t>& candidates) {
  const std::string opt = cfg_.resume == "auto" ? "--resume auto" : fmt::format("--resume {}", dir);
  for (size_t i = 0; i < candidates.size(); ++i) {
    const int64_t step = candidates[i];
    const std::string where = fmt::format("{}: step {}", opt, step);
    // Every rank reads the same manifest, so these checks agree before any collective. A model
    // mismatch is the user's to fix, never a reason to fall back.
    const nlohmann::json raw = io::read_manifest(dir, step).meta;
    const TrainMeta meta = TrainMeta::from_json(raw, where);
    const std::string diff = model_mismatch(raw.at("model"), cfg_.model);
    MOERUN_CONFIG_REQUIRE(diff.empty(), "{}: step {} holds a model with {}", opt, step, diff);
    MOERUN_CONFIG_REQUIRE(meta.step < cfg_.steps,
                          "{}: the checkpoint is at step {}, not before --steps {}", opt, meta.step,
                          cfg_.steps);
    try {
      io::load_checkpoint(dir, step, state_->checkpoint_tensors(), topo_.world);
    } catch (const io::CheckpointError& e) {
      if (i + 1 == candidates.size()) throw;
      log::warn(
          "moerun train: WARNING: step {} of {} does not verify ({}); falling back to step {}",
          step, dir, e.what(), candidates[i + 1]);
      continue;
    }
    state_->restore(meta);
    log::info("moerun train: resumed from {} step {} (written by {} rank(s), EP {})", dir,
              state_->step, meta.world, meta.ep);
    return;
  }
}

void Trainer::write_loads() {
  // Per-expert loads of the last step and the rank x rank dispatch bytes so far (world ranks).
  const Comm& world = topo_.world;
  const int W = world.size(), me = world.rank(), R = topo_.ep_size;
  std::vector<int64_t> bytes(static_cast<size_t>(W) * static_cast<size_t>(W), 0);
  for (MoELayer* l : model().moe_layers()) {
    const auto& b = l->dispatcher().times().bytes_to_rank;
    for (size_t r = 0; r < b.size(); ++r)
      bytes[static_cast<size_t>(me) * static_cast<size_t>(W) + static_cast<size_t>(me - me % R) +
            r] += b[r];
  }
  world.allreduce_sum(std::span<int64_t>(bytes));
  if (!metrics_.enabled()) return;
  const int64_t n_moe = static_cast<int64_t>(model().moe_layers().size());
  nlohmann::json loads = nlohmann::json::array(), matrix = nlohmann::json::array();
  for (int64_t l = 0; l < n_moe; ++l) {
    const auto c = runner_->counters().counts(l);
    loads.push_back(std::vector<int64_t>(c.begin(), c.end()));
  }
  for (int i = 0; i < W; ++i)
    matrix.push_back(std::vector<int64_t>(bytes.begin() + i * W, bytes.begin() + (i + 1) * W));
  metrics_.write({{"type", "loads"},
                  {"step", state_->step},
                  {"layer_loads", loads},
                  {"dispatch_bytes", matrix}});
}

std::array<int64_t, 2> Trainer::step_a2a_bytes() {
  const int me = topo_.world.rank(), R = topo_.ep_size;
  std::array<int64_t, 2> total{};  // this rank's bytes so far: to its own host, to other hosts
  for (MoELayer* l : model().moe_layers()) {
    const auto& b = l->dispatcher().times().bytes_to_rank;  // per EP rank, since the start
    for (size_t r = 0; r < b.size(); ++r) {
      const int to = me - me % R + static_cast<int>(r);              // the world rank of EP rank r
      if (to != me) total[topo_.same_host(me, to) ? 0 : 1] += b[r];  // rows kept move nothing
    }
  }
  std::array<int64_t, 2> step = {total[0] - a2a_bytes_total_[0], total[1] - a2a_bytes_total_[1]};
  a2a_bytes_total_ = total;
  topo_.world.allreduce_sum(std::span<int64_t>(step));
  return step;
}

void Trainer::log_step(const StepResult& r, const std::array<int64_t, 2>& a2a_bytes) {
  if (!metrics_.enabled()) return;
  const double tokens = static_cast<double>(cfg_.global_batch * cfg_.model.seq_len);
  const double tps = tokens / r.seconds;
  const double mfu = flops_per_token_ * tps / topo_.world.size() / (peak_gflops_ * 1e9);
  auto sync = [](const SyncBytes& b) {  // summed over the world (comm/grad_sync.h)
    return nlohmann::json{{"allreduce", b.allreduce},
                          {"reduce_scatter", b.reduce_scatter},
                          {"allgather", b.allgather}};
  };
  metrics_.write({{"type", "train"},
                  {"step", state_->step},
                  {"loss", r.loss},
                  {"lr", r.lr},
                  {"grad_norm", r.grad_norm},
                  {"tokens_per_s", tps},
                  {"step_seconds", r.seconds},
                  {"mfu", mfu},
                  {"peak_rss_bytes", step_memory_.peak_rss_bytes},
                  {"peak_tensor_bytes", step_memory_.peak_tensor_bytes},
                  {"time",
                   {{"compute", r.t_compute},
                    {"alltoall", r.t_alltoall},
                    {"allreduce", r.t_allreduce},
                    {"optimizer", r.t_optimizer}}},
                  {"a2a_bytes", {{"intra_node", a2a_bytes[0]}, {"inter_node", a2a_bytes[1]}}},
                  {"sync_bytes", {{"dense", sync(r.sync_dense)}, {"expert", sync(r.sync_expert)}}},
                  {"maxvio_batch", r.maxvio_batch},
                  {"dropped", r.dropped}});
}

void Trainer::log_eval(const EvalResult& ev) {
  // A domain without validation data has no loss and no balance: null in the metrics (NaN is
  // written as null), and said in words on the log line, never "nan" or a MaxVio of 0.
  nlohmann::json domains = nlohmann::json::object();
  std::string per_domain, empty;
  for (size_t d = 0; d < ev.domains.size(); ++d) {
    const bool has = ev.domain_sequences[d] > 0;
    domains[ev.domains[d]] = {
        {"val_loss", has ? nlohmann::json(ev.domain_loss[d]) : nlohmann::json(nullptr)},
        {"maxvio_global", has ? nlohmann::json(ev.domain_maxvio[d]) : nlohmann::json(nullptr)},
        {"sequences", ev.domain_sequences[d]}};
    if (has)
      per_domain += fmt::format(" {} {:.3f}", ev.domains[d], ev.domain_loss[d]);
    else
      empty += (empty.empty() ? "" : ", ") + ev.domains[d];
  }
  metrics_.write({{"type", "eval"},
                  {"step", state_->step},
                  {"val_loss", ev.val_loss},
                  {"maxvio_global", ev.maxvio_global},
                  {"domains", domains}});
  log::info("eval step {}: val loss {:.4f} ({} ), MaxVio_global {:.3f}{}", state_->step,
            ev.val_loss, per_domain, mean(ev.maxvio_global),
            empty.empty() ? "" : fmt::format("; no validation data in: {}", empty));
}

Trainer::Outcome Trainer::run() {
  const Comm& world = topo_.world;
  const bool root = world.rank() == 0;
  const ParamCounts pc = count_params(cfg_.model);
  const LaunchInfo& launch = topo_.launch;
  // Where every rank runs, once, the same way under srun, mpirun and a singleton.
  const std::vector<std::string> table = topo_.table("cpu");
  log::info("moerun train: {} rank(s) on {} node(s), launched by {}{}", world.size(),
            topo_.num_hosts(), to_string(launch.launcher),
            launch.slurm_job ? fmt::format(" in Slurm job {} (restart {})", *launch.slurm_job,
                                           launch.slurm_restart_count)
                             : "");
  for (const std::string& line : table) log::info("  {}", line);
  metrics_.write({{"type", "run"},
                  {"config", cfg_.config_file},
                  {"ranks", world.size()},
                  {"ep", topo_.ep_size},
                  {"expert_dp", topo_.edp_size},
                  {"nodes", topo_.num_hosts()},
                  {"ranks_per_node", topo_.max_ranks_per_host()},
                  {"hosts", topo_.hosts},
                  {"launcher", to_string(launch.launcher)},
                  {"slurm_job_id",
                   launch.slurm_job ? nlohmann::json(*launch.slurm_job) : nlohmann::json(nullptr)},
                  {"slurm_restart_count", launch.slurm_restart_count},
                  {"start_step", state_->step},
                  {"global_batch", cfg_.global_batch},
                  {"seq_len", cfg_.model.seq_len},
                  {"params", pc.total},
                  {"activated_params", pc.activated_per_token},
                  {"tokens_per_step", cfg_.global_batch * cfg_.model.seq_len},
                  {"sgemm_peak_gflops_per_rank", peak_gflops_},
                  {"blas_core", blas_core()}});
  log::info(
      "moerun train: {} params ({} activated per token), {} rank(s), EP {}, global batch {} x {} "
      "tokens, {} steps, lr {:.3g} ({}), run dir {}",
      human(static_cast<double>(pc.total)), human(static_cast<double>(pc.activated_per_token)),
      world.size(), topo_.ep_size, cfg_.global_batch, cfg_.model.seq_len, cfg_.steps,
      cfg_.schedule.peak, to_string(cfg_.schedule.kind), cfg_.out);
  install_stop_signal_handlers();
  ProgressLine progress(root);
  const double start = now_seconds();
  const int64_t first_step = state_->step;  // > 0 after a resume
  int64_t newest_saved = -1;

  LoopHooks hooks;
  hooks.step = [&] { return step(); };
  hooks.log = [&](const StepResult& r) {
    const std::array<int64_t, 2> a2a_bytes = step_a2a_bytes();  // collective: every step
    log_step(r, a2a_bytes);
    const int64_t s = state_->step;
    if (s % cfg_.log_every == 0 || s == cfg_.steps || s == first_step + 1) {
      const double elapsed = now_seconds() - start;
      const double eta =
          elapsed / static_cast<double>(s - first_step) * static_cast<double>(cfg_.steps - s);
      const double tps = static_cast<double>(cfg_.global_batch * cfg_.model.seq_len) / r.seconds;
      progress.update(fmt::format(
          "step {}/{} | loss {:.4f} | lr {:.2e} | {} tok/s | a2a {:.0f}% | MaxVio {:.3f} | ETA {}",
          s, cfg_.steps, r.loss, r.lr, human(tps), 100.0 * r.t_alltoall / r.seconds,
          mean(r.maxvio_batch), format_duration(eta)));
    }
    if (cfg_.loads_every > 0 && s % cfg_.loads_every == 0) write_loads();
  };
  hooks.eval = [&] {
    const EvalResult ev = evaluate();
    progress.finish();
    log_eval(ev);
  };
  hooks.save = [&] {
    progress.finish();
    save();
    newest_saved = state_->step;
  };
  // The ranks agree at the step boundary: one rank's signal, or the time limit, stops them all
  // at this step.
  hooks.stop = [&] { return preemption_->agreed_stop(); };

  // A rank that stops answering (SIGSTOP, a frozen node, a stalled file system) ends the job
  // with exit 75 after --step-timeout seconds without a step, eval or save finishing; the
  // heartbeat files name the ranks that stopped (runtime/watchdog.h).
  Watchdog watchdog((fs::path(cfg_.out) / "heartbeat").string(), world.rank(), world.size(),
                    cfg_.step_timeout);
  hooks.on_phase = [&](const char* phase) { watchdog.beat(state_->step, phase); };

  const LoopSchedule schedule{cfg_.steps, cfg_.eval_every, cfg_.save_every};
  const LoopOutcome out = run_loop(state_->step, schedule, hooks);
  progress.finish();
  if (out.end == LoopEnd::kStopped) {
    // The stop goes to the metrics too: a file survives when mpirun, busy killing the job after
    // Ctrl-C, drops the ranks' last output lines.
    metrics_.write({{"type", "stop"},
                    {"step", state_->step},
                    {"reason", preemption_->describe(out.signal)},
                    {"checkpoint_step", newest_saved},
                    {"dir", cfg_.ckpt_dir}});
    log::warn(
        "moerun train: stopped by {} at step {} of {}; checkpoint step {} in {} is the newest "
        "(continue with --resume {} or --resume auto)",
        preemption_->describe(out.signal), state_->step, cfg_.steps, newest_saved, cfg_.ckpt_dir,
        cfg_.ckpt_dir);
    return {out, preemption_->after_stop(out.signal)};
  }
  log::info("moerun train: done in {}; metrics {} (plot: jobs/plot.sh {})",
            format_duration(now_seconds() - start), (fs::path(cfg_.out) / "metrics.jsonl").string(),
            cfg_.out);
  return {out, 0};
}

}  // namespace moerun
