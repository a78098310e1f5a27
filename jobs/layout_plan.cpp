// The arithmetic of `moerun plan`: parameters, memory, bytes and time of one training layout.
// Every model below counts what the runtime does today (fp32 tensors, fp32 rows on the wire);
// the assumptions are printed with the numbers (plan_text) so a reader can check them.
#include "jobs/layout_plan.h"

#include <fmt/format.h>
#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "runtime/check.h"

namespace moerun {

namespace po = boost::program_options;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

double to_double(const std::string& file, const std::string& key, const std::string& v) {
  size_t used = 0;
  double d = 0;
  try {
    d = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MOERUN_CONFIG_REQUIRE(used == v.size() && used > 0 && d >= 0,
                        "--hardware-file {}: {} must be a number >= 0 (got '{}')", file, key, v);
  return d;
}

std::string gib(double bytes) {
  return fmt::format("{:.1f} GiB", bytes / kGiB);
}
std::string gb(double bytes) {
  return fmt::format("{:.2f} GB", bytes / 1e9);
}
std::string billions(double n) {
  return fmt::format("{:.2f}B", n / 1e9);
}

// P(a given rank holds none of a token's K experts) when the K experts are drawn uniformly
// without replacement from `pool` experts of which `local` sit on that rank.
double miss_probability(int64_t pool, int64_t local, int64_t K) {
  double p = 1.0;
  for (int64_t i = 0; i < K; ++i) {
    const double num = static_cast<double>(pool - local - i);
    if (num <= 0) return 0.0;
    p *= num / static_cast<double>(pool - i);
  }
  return p;
}

int64_t n_moe_layers(const ModelConfig& c) {
  return c.layers - c.first_k_dense;
}

// Ranks of one EP group on one node, and nodes one EP group spans (validate_layout makes the
// group either fit in a node or span whole nodes).
int ep_ranks_per_node(const Layout& l) {
  return std::min(l.ep_size, l.ranks_per_node);
}
int ep_nodes(const Layout& l) {
  return std::max(1, l.ep_size / l.ranks_per_node);
}

}  // namespace

std::map<std::string, HardwareProfile> load_hardware_file(const std::string& file) {
  std::ifstream in(file);
  MOERUN_CONFIG_REQUIRE(in.good(), "--hardware-file {}: cannot open the file", file);
  po::parsed_options parsed(nullptr);
  try {
    parsed = po::parse_config_file(in, po::options_description(), true);
  } catch (const po::error& e) {
    MOERUN_CONFIG_REQUIRE(false, "--hardware-file {}: {}", file, e.what());
  }
  std::map<std::string, HardwareProfile> out;
  for (const po::option& o : parsed.options) {
    const size_t dot = o.string_key.find('.');
    MOERUN_CONFIG_REQUIRE(dot != std::string::npos,
                          "--hardware-file {}: '{}' is outside a [section]", file, o.string_key);
    const std::string name = o.string_key.substr(0, dot), key = o.string_key.substr(dot + 1);
    const std::string v = o.value.empty() ? "" : o.value.front();
    HardwareProfile& h = out[name];
    h.name = name;
    if (key == "description")
      h.description = v;
    else if (key == "dtype")
      h.dtype = v;
    else if (key == "memory_gib")
      h.memory_gib = to_double(file, o.string_key, v);
    else if (key == "usable_fraction")
      h.usable_fraction = to_double(file, o.string_key, v);
    else if (key == "gemm_efficiency")
      h.gemm_efficiency = to_double(file, o.string_key, v);
    else if (key == "mem_bw_gbs")
      h.mem_bw_gbs = to_double(file, o.string_key, v);
    else if (key == "intra_node_gbs")
      h.intra_node_gbs = to_double(file, o.string_key, v);
    else if (key == "network_gbs")
      h.network_gbs = to_double(file, o.string_key, v);
    else if (key.rfind("peak_tflops_", 0) == 0)
      h.peak_tflops[key.substr(12)] = to_double(file, o.string_key, v);
    else
      MOERUN_CONFIG_REQUIRE(false, "--hardware-file {}: unknown key '{}'", file, o.string_key);
  }
  for (const auto& [name, h] : out) {
    MOERUN_CONFIG_REQUIRE(h.memory_gib > 0 && h.mem_bw_gbs > 0 && h.intra_node_gbs > 0 &&
                              h.network_gbs > 0 && h.gemm_efficiency > 0 && h.usable_fraction > 0 &&
                              h.usable_fraction <= 1,
                          "--hardware-file {}: [{}] needs memory_gib, mem_bw_gbs, "
                          "intra_node_gbs, network_gbs > 0 and gemm_efficiency, usable_fraction "
                          "in (0, 1]",
                          file, name);
    MOERUN_CONFIG_REQUIRE(h.peak_tflops.count(h.dtype) && h.peak_tflops.at(h.dtype) > 0,
                          "--hardware-file {}: [{}] dtype '{}' has no peak_tflops_{} > 0", file,
                          name, h.dtype, h.dtype);
  }
  return out;
}

HardwareProfile find_hardware(const std::string& file, const std::string& name) {
  const auto all = load_hardware_file(file);
  auto it = all.find(name);
  if (it == all.end()) {
    std::string known;
    for (const auto& [n, h] : all) known += (known.empty() ? "" : ", ") + n;
    MOERUN_CONFIG_REQUIRE(false, "--hardware '{}' is not in {} (known: {})", name, file, known);
  }
  return it->second;
}

void validate_layout(const ModelConfig& c, const Layout& l) {
  MOERUN_CONFIG_REQUIRE(l.nodes >= 1, "--nodes must be >= 1 (got {})", l.nodes);
  MOERUN_CONFIG_REQUIRE(l.ranks_per_node >= 1, "--ranks-per-node must be >= 1 (got {})",
                        l.ranks_per_node);
  MOERUN_CONFIG_REQUIRE(l.micro_batch >= 1, "--micro-batch must be >= 1 (got {})", l.micro_batch);
  MOERUN_CONFIG_REQUIRE(l.zero == 0 || l.zero == 1, "--zero must be 0 or 1 (got {})", l.zero);
  const int W = l.world(), R = l.ep_size;
  const int64_t E = c.moe.routed_experts;
  MOERUN_CONFIG_REQUIRE(R >= 1 && W % R == 0,
                        "--ep-size {} must divide the world of {} ranks (--nodes {} x "
                        "--ranks-per-node {})",
                        R, W, l.nodes, l.ranks_per_node);
  MOERUN_CONFIG_REQUIRE(n_moe_layers(c) == 0 || E % R == 0,
                        "--ep-size {} must divide the {} routed experts", R, E);
  MOERUN_CONFIG_REQUIRE(R % l.ranks_per_node == 0 || l.ranks_per_node % R == 0,
                        "--ep-size {} and --ranks-per-node {}: an EP group must fit in a node or "
                        "span whole nodes (one must divide the other)",
                        R, l.ranks_per_node);
  const int M = l.max_nodes_per_token;
  MOERUN_CONFIG_REQUIRE(M >= 0 && M <= l.nodes,
                        "--max-nodes-per-token {} must be between 1 and --nodes {} (0 = off)", M,
                        l.nodes);
  if (M > 0 && n_moe_layers(c) > 0) {
    const int64_t on_m_nodes = std::min(M, ep_nodes(l)) * (E / ep_nodes(l));
    MOERUN_CONFIG_REQUIRE(c.moe.top_k <= on_m_nodes,
                          "--max-nodes-per-token {}: the {} experts on {} node(s) of an EP group "
                          "cannot hold top-k {}",
                          M, on_m_nodes, std::min(M, ep_nodes(l)), c.moe.top_k);
  }
}

LayoutPlan plan_layout(const ModelConfig& c, const Layout& l, const HardwareProfile& hw) {
  validate_layout(c, l);
  LayoutPlan p;
  p.layout = l;
  p.hw = hw;
  const int W = l.world(), R = l.ep_size;
  const int64_t H = c.hidden, K = c.moe.top_k, E = c.moe.routed_experts;
  const int64_t N = l.micro_batch * c.seq_len;  // tokens per micro-batch per rank
  const bool has_moe = n_moe_layers(c) > 0;
  constexpr double f32 = 4;

  p.params = count_params(c);
  p.rank_expert_params = p.params.expert_total / R;
  p.rank_dense_params = p.params.total - p.params.expert_total;

  const int64_t unit = static_cast<int64_t>(W) * l.micro_batch;
  const int64_t gb = l.global_batch > 0 ? l.global_batch : unit;
  p.accumulation = (gb + unit - 1) / unit;
  p.global_batch = p.accumulation * unit;
  p.global_batch_rounded = p.global_batch != gb;

  // Memory (layers/model_plan.cpp: the runtime's fp32 tensors, recompute-aware).
  p.memory = estimate_memory(c, R, W, l.micro_batch, l.zero);

  // Rows a token sends, uniform routing: a token's K experts are drawn uniformly from the experts
  // of the nodes it may use. Node-limited routing (M): M of the G nodes of the EP group, each node
  // equally likely. A rank is reached when its node is chosen and it holds one of the K experts;
  // the dispatcher sends one row per (token, reached rank) and the metrics skip the rank itself.
  StepBytes& b = p.bytes;
  if (has_moe) {
    const int G = ep_nodes(l), rg = ep_ranks_per_node(l);
    const int Meff = l.max_nodes_per_token > 0 ? std::min(l.max_nodes_per_token, G) : G;
    const double node_chosen = static_cast<double>(Meff) / G;
    const int64_t pool = static_cast<int64_t>(Meff) * (E / G);
    const double reached = node_chosen * (1.0 - miss_probability(pool, E / R, K));
    b.rows_per_token_intra = (rg - 1) * reached;
    b.rows_per_token_inter = static_cast<double>(G - 1) * rg * reached;
    b.nodes_per_token_inter =
        static_cast<double>(G - 1) * node_chosen * (1.0 - miss_probability(pool, E / G, K));
    // dispatch + combine forward, combine backward + dispatch backward; --recompute full
    // re-dispatches once more in backward.
    b.exchanges_per_layer = c.recompute == Recompute::kFull ? 5 : 4;
    const double per_rank_rows = static_cast<double>(N) * static_cast<double>(p.accumulation) *
                                 static_cast<double>(n_moe_layers(c)) * b.exchanges_per_layer;
    b.a2a_rank_intra = per_rank_rows * b.rows_per_token_intra * H * f32;
    b.a2a_rank_inter = per_rank_rows * b.rows_per_token_inter * H * f32;
    b.a2a_intra = b.a2a_rank_intra * W;
    b.a2a_inter = b.a2a_rank_inter * W;
    // One exchange's staging: send and receive buffers of N x (rows per token incl. self) rows.
    const double rows = reached + b.rows_per_token_intra + b.rows_per_token_inter;
    p.comm_buffer_bytes = static_cast<int64_t>(2.0 * static_cast<double>(N) * rows * H * f32);
  }

  const int edp = W / R;
  b.dense_payload = static_cast<double>(p.rank_dense_params) * f32;
  b.expert_payload = static_cast<double>(p.rank_expert_params) * f32;
  auto ring = [](int n) { return n > 1 ? static_cast<double>(n - 1) / n : 0.0; };
  if (l.zero == 0) {
    b.dense_sync_sent = 2 * ring(W) * b.dense_payload;
    b.expert_sync_sent = 2 * ring(edp) * b.expert_payload;
    b.allreduce_sent = b.dense_sync_sent + b.expert_sync_sent;
  } else {
    b.reduce_scatter_sent = ring(W) * b.dense_payload + ring(edp) * b.expert_payload;
    b.allgather_sent = b.reduce_scatter_sent;
    b.dense_sync_sent = 2 * ring(W) * b.dense_payload;
    b.expert_sync_sent = 2 * ring(edp) * b.expert_payload;
  }
  b.dense_group_crosses_nodes = l.nodes > 1;
  b.expert_group_crosses_nodes = edp > 1 && l.nodes > 1;

  // FLOPs. M: DeepSeek LLM's non-embedding FLOPs per token (layers/model_plan.cpp). The ranks
  // also run the LM head (6 V H) and, with recompute, one more forward of what they recompute.
  p.flops_m = flops_per_token(c);
  p.flops_6n = 6.0 * static_cast<double>(p.params.activated_per_token);
  const double lm_head = 6.0 * static_cast<double>(c.vocab) * static_cast<double>(H);
  const double model_flops = p.flops_m + lm_head;
  double extra = 0;
  if (c.recompute == Recompute::kFull) {
    extra = p.flops_m / 3.0;  // the blocks' forward is a third of forward + backward
  } else if (c.recompute == Recompute::kMoE && has_moe) {
    extra = 2.0 * 3.0 * static_cast<double>(c.moe.expert_width) * H *
            static_cast<double>(K + c.moe.shared_experts) * static_cast<double>(n_moe_layers(c));
  }
  p.hw_flops_per_token = model_flops + extra;

  // Time: compute at gemm_efficiency x peak, AdamW streaming its state at the memory bandwidth,
  // the all-to-all at intra-node / network bandwidth per rank, rings at the slowest link.
  StepTime& t = p.time;
  const double peak = hw.peak_tflops.at(hw.dtype) * 1e12;
  const double tokens = static_cast<double>(N) * static_cast<double>(p.accumulation);
  t.compute_s = tokens * p.hw_flops_per_token / (peak * hw.gemm_efficiency);
  const double updated = l.zero == 1
                             ? static_cast<double>(p.memory.optimizer_bytes) / (2 * f32)
                             : static_cast<double>(p.rank_dense_params + p.rank_expert_params);
  t.optimizer_s = updated * 7 * f32 / (hw.mem_bw_gbs * 1e9);
  t.a2a_s =
      b.a2a_rank_intra / (hw.intra_node_gbs * 1e9) + b.a2a_rank_inter / (hw.network_gbs * 1e9);
  t.grad_sync_s = b.dense_sync_sent /
                      ((b.dense_group_crosses_nodes ? hw.network_gbs : hw.intra_node_gbs) * 1e9) +
                  b.expert_sync_sent /
                      ((b.expert_group_crosses_nodes ? hw.network_gbs : hw.intra_node_gbs) * 1e9);
  t.total_s = t.compute_s + t.optimizer_s + t.a2a_s + t.grad_sync_s;
  t.overlapped_s = std::max(t.compute_s + t.optimizer_s, t.a2a_s + t.grad_sync_s);
  t.mfu = tokens * model_flops / (t.total_s * peak);
  t.mfu_overlapped = tokens * model_flops / (t.overlapped_s * peak);

  p.total_bytes = p.memory.total_bytes + p.comm_buffer_bytes;
  p.usable_bytes = static_cast<int64_t>(hw.memory_gib * hw.usable_fraction * kGiB);
  p.fits = p.total_bytes <= p.usable_bytes;
  const std::vector<std::pair<std::string, int64_t>> parts = {
      {"weights", p.memory.params_bytes},
      {"gradients", p.memory.grads_bytes},
      {"optimizer", p.memory.optimizer_bytes},
      {"activations", p.memory.activations_bytes},
      {"comm buffers", p.comm_buffer_bytes}};
  const auto big = std::max_element(
      parts.begin(), parts.end(), [](const auto& a, const auto& z) { return a.second < z.second; });
  p.why = fmt::format("needs {} of {} usable ({:.0f}% of {} GiB); largest part {} {}",
                      gib(static_cast<double>(p.total_bytes)),
                      gib(static_cast<double>(p.usable_bytes)), 100 * hw.usable_fraction,
                      hw.memory_gib, big->first, gib(static_cast<double>(big->second)));
  return p;
}

FitSearch search_fit(const ModelConfig& c, const Layout& l, const HardwareProfile& hw,
                     int max_nodes) {
  FitSearch f;
  const int64_t E = n_moe_layers(c) > 0 ? c.moe.routed_experts : 1;
  auto smallest_ep = [&](int nodes) {
    Layout t = l;
    t.nodes = nodes;
    if (t.max_nodes_per_token > nodes) t.max_nodes_per_token = nodes;
    for (int64_t r = 1; r <= E; ++r) {
      if (E % r) continue;
      t.ep_size = static_cast<int>(r);
      try {
        validate_layout(c, t);
      } catch (const ConfigError&) {
        continue;
      }
      if (plan_layout(c, t, hw).fits) return static_cast<int>(r);
    }
    return 0;
  };
  f.ep_at_nodes = smallest_ep(l.nodes);
  for (int n = 1; n <= max_nodes; ++n) {
    if (int r = smallest_ep(n)) {
      f.nodes = n;
      f.ep = r;
      break;
    }
  }
  return f;
}

std::string plan_text(const ModelConfig& c, const LayoutPlan& p, const FitSearch& f) {
  const Layout& l = p.layout;
  const StepBytes& b = p.bytes;
  const StepTime& t = p.time;
  const MemoryEstimate& m = p.memory;
  std::ostringstream o;
  o << fmt::format(
      "layout: {} nodes x {} ranks = {} ranks, EP {} (expert-DP {}), micro-batch {} x {} tokens, "
      "{} micro-batch(es) per step, global batch {} sequences{}, ZeRO-{}, recompute {}, "
      "node-limited routing {}\n",
      l.nodes, l.ranks_per_node, l.world(), l.ep_size, l.world() / l.ep_size, l.micro_batch,
      c.seq_len, p.accumulation, p.global_batch,
      p.global_batch_rounded ? fmt::format(" (rounded up from {})", l.global_batch) : "", l.zero,
      to_string(c.recompute),
      l.max_nodes_per_token > 0 ? fmt::format("M = {}", l.max_nodes_per_token) : "off");
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
          : "");
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
        {"max_nodes_per_token", l.max_nodes_per_token}}},
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
