// The report of `moerun plan`: the layout plan (jobs/layout_plan.h) as text for people, with the
// assumptions next to the numbers, and as JSON for tools (--json). No arithmetic of its own.
#include <fmt/format.h>

#include <sstream>
#include <string>

#include "jobs/layout_plan.h"

namespace moerun {

namespace {

std::string gib(double bytes) {
  return fmt::format("{:.1f} GiB", bytes / (1024.0 * 1024.0 * 1024.0));
}
std::string gb(double bytes) {
  return fmt::format("{:.2f} GB", bytes / 1e9);
}
std::string billions(double n) {
  return fmt::format("{:.2f}B", n / 1e9);
}

}  // namespace

std::string plan_text(const ModelConfig& c, const LayoutPlan& p, const FitSearch& f) {
  const Layout& l = p.layout;
  const StepBytes& b = p.bytes;
  const StepTime& t = p.time;
  const MemoryEstimate& m = p.memory;
  std::ostringstream o;
  o << fmt::format(
      "layout: {} nodes x {} ranks = {} ranks, EP {} (expert-DP {}), micro-batch {} x {} tokens, "
      "{} micro-batch(es) per step, global batch {} sequences{}, ZeRO-{}, recompute {}, "
      "{}\n",
      l.nodes, l.ranks_per_node, l.world(), l.ep_size, l.world() / l.ep_size, l.micro_batch,
      c.seq_len, p.accumulation, p.global_batch,
      p.global_batch_rounded ? fmt::format(" (rounded up from {})", l.global_batch) : "", l.zero,
      to_string(c.recompute),
      l.max_nodes_per_token > 0 ? fmt::format("node-limited routing M = {}", l.max_nodes_per_token)
      : l.max_devices_per_token > 0
          ? fmt::format("device-limited routing M = {} EP ranks", l.max_devices_per_token)
          : std::string("node-limited routing off"));
  o << fmt::format("hardware: {} ({}), {} GiB per rank, peak {} {} TFLOP/s\n\n", p.hw.name,
                   p.hw.description, p.hw.memory_gib, p.hw.dtype, p.hw.peak_tflops.at(p.hw.dtype));
  o << "parameters (moerun's count: every tensor the runtime builds, untied embedding + LM head)\n";
  o << fmt::format("  total                  {}  (routed experts {}, the rest {})\n",
                   billions(static_cast<double>(p.params.total)),
                   billions(static_cast<double>(p.params.expert_total)),
                   billions(static_cast<double>(p.rank_dense_params)));
  o << fmt::format("  activated per token    {}  (everything but the E - K unused experts)\n",
                   billions(static_cast<double>(p.params.activated_per_token)));
  o << fmt::format(
      "  without embedding and LM head: total {}, activated {} (the papers count "
      "all parameters: README, Planning a layout)\n",
      billions(static_cast<double>(p.params.total - p.params.embedding)),
      billions(static_cast<double>(p.params.activated_per_token - p.params.embedding)));
  o << fmt::format("  per rank               {}  = routed experts {} (1/{}) + dense {}\n\n",
                   billions(static_cast<double>(p.rank_dense_params + p.rank_expert_params)),
                   billions(static_cast<double>(p.rank_expert_params)), l.ep_size,
                   billions(static_cast<double>(p.rank_dense_params)));
  o << "memory per rank (fp32 as the runtime keeps it; layers/model_plan.cpp)\n";
  o << fmt::format("  weights                {}\n", gib(static_cast<double>(m.params_bytes)));
  o << fmt::format("  gradients              {}{}\n", gib(static_cast<double>(m.grads_bytes)),
                   l.zero ? " (+ the reduce-scatter shards)" : "");
  o << fmt::format(
      "  optimizer (AdamW m, v) {}{}\n", gib(static_cast<double>(m.optimizer_bytes)),
      l.zero ? " (ZeRO-1: dense over the world, experts over expert-DP)" : " (unsharded)");
  o << fmt::format("  activations            {} (one micro-batch, recompute {}, + peak scratch)\n",
                   gib(static_cast<double>(m.activations_bytes)), to_string(c.recompute));
  if (c.attention == AttentionKind::kMLA) {
    // What MLA saves over MHA at inference: a decode cache of the latent + the shared RoPE key.
    const int64_t mla_cache = c.mla.kv_lora_rank + c.mla.qk_rope_head_dim;
    const int64_t mha_cache = c.heads * (c.mla.qk_head_dim() + c.mla.v_head_dim);
    o << fmt::format(
        "  (MLA: attention saves its latents for backward; a decode cache holds {} values per "
        "token and layer, the kv latent + the RoPE key, vs {} for MHA with the same heads, "
        "{:.1f}x less)\n",
        mla_cache, mha_cache, static_cast<double>(mha_cache) / static_cast<double>(mla_cache));
  }
  o << fmt::format("  comm buffers           {} (one all-to-all's send + receive staging)\n",
                   gib(static_cast<double>(p.comm_buffer_bytes)));
  o << fmt::format("  total                  {} of {} usable\n",
                   gib(static_cast<double>(p.total_bytes)),
                   gib(static_cast<double>(p.usable_bytes)));
  o << fmt::format("  verdict: {} - {}\n", p.fits ? "FITS" : "DOES NOT FIT", p.why);
  o << fmt::format("  smallest EP that fits on {} nodes: {}\n", l.nodes,
                   f.ep_at_nodes ? std::to_string(f.ep_at_nodes) : "none");
  // What no EP size or node count shrinks: the dense part every rank replicates.
  const double dense_floor = static_cast<double>(p.rank_dense_params) * 4 * (l.zero ? 2 : 4);
  o << fmt::format("  fewest nodes that fit (x {} ranks): {}\n\n", l.ranks_per_node,
                   f.nodes ? fmt::format("{} nodes at EP {}", f.nodes, f.ep)
                           : fmt::format("none up to --max-search-nodes (the dense part every "
                                         "rank replicates needs {} by itself: weights + "
                                         "gradients{})",
                                         gib(dense_floor), l.zero ? "" : " + AdamW m, v"));
  o << "communication per step\n";
  o << fmt::format(
      "  all-to-all (fp32 rows, {} exchanges per MoE layer per micro-batch: dispatch + combine, "
      "forward + backward{})\n",
      b.exchanges_per_layer, c.recompute == Recompute::kFull ? " + the recompute's dispatch" : "");
  o << fmt::format(
      "    rows per token to other ranks: {:.3f} intra-node, {:.3f} inter-node (uniform routing"
      "{})\n",
      b.rows_per_token_intra, b.rows_per_token_inter,
      l.max_nodes_per_token > 0
          ? fmt::format("; each token uses {} of the EP group's nodes, each equally likely",
                        std::min(l.max_nodes_per_token, std::max(1, l.ep_size / l.ranks_per_node)))
      : l.max_devices_per_token > 0
          ? fmt::format("; each token uses {} of the EP group's ranks, each equally likely",
                        l.max_devices_per_token)
          : "");
  o << fmt::format(
      "    at most {:.0f} intra-node and {:.0f} inter-node rows per token whatever the routing "
      "(whole world: at most {} / {})\n",
      b.rows_per_token_intra_bound, b.rows_per_token_inter_bound, gb(b.a2a_intra_bound),
      gb(b.a2a_inter_bound));
  if (b.rows_per_token_inter > 0)
    o << fmt::format(
        "    (a dispatcher sending one row per token and node, forwarding inside the node as "
        "DeepEP does, would send {:.3f} rows per token between nodes; moerun sends one per rank)\n",
        b.nodes_per_token_inter);
  o << fmt::format("    whole world: intra-node {}, inter-node {}; per rank {} / {}\n",
                   gb(b.a2a_intra), gb(b.a2a_inter), gb(b.a2a_rank_intra), gb(b.a2a_rank_inter));
  if (l.zero == 0)
    o << fmt::format(
        "  all-reduce (ring, per rank): {} sent (dense {} payload over {} ranks, "
        "experts {} over {})\n",
        gb(b.allreduce_sent), gb(b.dense_payload), l.world(), gb(b.expert_payload),
        l.world() / l.ep_size);
  else
    o << fmt::format(
        "  reduce-scatter {} + all-gather {} sent per rank (ring; dense {} payload "
        "over {} ranks, experts {} over {})\n",
        gb(b.reduce_scatter_sent), gb(b.allgather_sent), gb(b.dense_payload), l.world(),
        gb(b.expert_payload), l.world() / l.ep_size);
  o << fmt::format(
      "  gradient sync as the runtime counts it (sync_bytes in the metrics: the region each call "
      "covers, summed over the ranks): dense {} / {} / {}, experts {} / {} / {} "
      "(all-reduce / reduce-scatter / all-gather)\n",
      gb(static_cast<double>(b.sync_dense.allreduce)),
      gb(static_cast<double>(b.sync_dense.reduce_scatter)),
      gb(static_cast<double>(b.sync_dense.allgather)),
      gb(static_cast<double>(b.sync_expert.allreduce)),
      gb(static_cast<double>(b.sync_expert.reduce_scatter)),
      gb(static_cast<double>(b.sync_expert.allgather)));
  o << "\nFLOPs and time\n";
  o << fmt::format(
      "  FLOPs per token: M = {:.4g} (DeepSeek LLM, non-embedding, with attention), "
      "6N = {:.4g} (N = activated parameters), executed {:.4g} (M + LM head{})\n",
      p.flops_m, p.flops_6n, p.hw_flops_per_token,
      c.recompute != Recompute::kNone ? " + recompute" : "");
  o << fmt::format(
      "  step time {:.3f} s = compute {:.3f} + optimizer {:.3f} + all-to-all {:.3f} + gradient "
      "sync {:.3f}  (no overlap assumed)\n",
      t.total_s, t.compute_s, t.optimizer_s, t.a2a_s, t.grad_sync_s);
  o << fmt::format(
      "  MFU {:.1f}% (no overlap); {:.1f}% if communication hid fully behind "
      "compute ({:.3f} s)\n",
      100 * t.mfu, 100 * t.mfu_overlapped, t.overlapped_s);
  o << fmt::format(
      "  assumed: GEMMs at {:.0f}% of peak, AdamW streams 7 x 4 bytes per updated parameter at "
      "{} GB/s, all-to-all at {} GB/s inside a node and {} GB/s per rank between nodes, rings at "
      "their slowest link\n",
      100 * p.hw.gemm_efficiency, p.hw.mem_bw_gbs, p.hw.intra_node_gbs, p.hw.network_gbs);
  return o.str();
}

nlohmann::json plan_json(const ModelConfig& c, const LayoutPlan& p, const FitSearch& f) {
  using nlohmann::json;
  const Layout& l = p.layout;
  const StepBytes& b = p.bytes;
  const MemoryEstimate& m = p.memory;
  auto sync = [](const SyncBytes& s) {
    return json{{"allreduce", s.allreduce},
                {"reduce_scatter", s.reduce_scatter},
                {"allgather", s.allgather}};
  };
  return json{
      {"layout",
       {{"nodes", l.nodes},
        {"ranks_per_node", l.ranks_per_node},
        {"world", l.world()},
        {"ep_size", l.ep_size},
        {"micro_batch", l.micro_batch},
        {"accumulation", p.accumulation},
        {"global_batch", p.global_batch},
        {"zero", l.zero},
        {"recompute", to_string(c.recompute)},
        {"max_nodes_per_token", l.max_nodes_per_token},
        {"max_devices_per_token", l.max_devices_per_token}}},
      {"hardware", p.hw.name},
      {"params",
       {{"total", p.params.total},
        {"activated_per_token", p.params.activated_per_token},
        {"expert_total", p.params.expert_total},
        {"embedding", p.params.embedding},
        {"rank_expert", p.rank_expert_params},
        {"rank_dense", p.rank_dense_params}}},
      {"memory_bytes",
       {{"weights", m.params_bytes},
        {"gradients", m.grads_bytes},
        {"optimizer", m.optimizer_bytes},
        {"activations", m.activations_bytes},
        {"comm_buffers", p.comm_buffer_bytes},
        {"total", p.total_bytes},
        {"usable", p.usable_bytes}}},
      {"fits", p.fits},
      {"why", p.why},
      {"smallest_fit", {{"ep_at_nodes", f.ep_at_nodes}, {"nodes", f.nodes}, {"ep_size", f.ep}}},
      {"bytes_per_step",
       {{"a2a_intra_node", b.a2a_intra},
        {"a2a_inter_node", b.a2a_inter},
        {"a2a_exchanges_per_layer", b.exchanges_per_layer},
        {"rows_per_token_intra_node", b.rows_per_token_intra},
        {"rows_per_token_inter_node", b.rows_per_token_inter},
        {"nodes_per_token_inter_node", b.nodes_per_token_inter},
        {"a2a_intra_node_bound", b.a2a_intra_bound},
        {"a2a_inter_node_bound", b.a2a_inter_bound},
        {"rows_per_token_intra_node_bound", b.rows_per_token_intra_bound},
        {"rows_per_token_inter_node_bound", b.rows_per_token_inter_bound},
        {"a2a_row_exchanges", b.row_exchanges},
        {"a2a_row_bytes", b.row_bytes},
        {"sync_bytes", {{"dense", sync(b.sync_dense)}, {"expert", sync(b.sync_expert)}}},
        {"allreduce_sent_per_rank", b.allreduce_sent},
        {"reduce_scatter_sent_per_rank", b.reduce_scatter_sent},
        {"allgather_sent_per_rank", b.allgather_sent},
        {"dense_payload", b.dense_payload},
        {"expert_payload", b.expert_payload}}},
      {"flops_per_token",
       {{"M", p.flops_m}, {"6N", p.flops_6n}, {"executed", p.hw_flops_per_token}}},
      {"time",
       {{"step_s", p.time.total_s},
        {"step_overlapped_s", p.time.overlapped_s},
        {"compute_s", p.time.compute_s},
        {"optimizer_s", p.time.optimizer_s},
        {"a2a_s", p.time.a2a_s},
        {"grad_sync_s", p.time.grad_sync_s},
        {"mfu", p.time.mfu},
        {"mfu_overlapped", p.time.mfu_overlapped},
        {"overlap_assumed", "none (mfu); full (mfu_overlapped)"}}}};
}

}  // namespace moerun
