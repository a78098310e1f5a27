// The arithmetic of `moerun plan`: parameters, memory, bytes and time of one training layout.
// Every model below counts what the runtime does today (fp32 tensors, fp32 rows on the wire);
// the assumptions are printed with the numbers (jobs/plan_report.cpp) so a reader can check them.
#include "jobs/layout_plan.h"

#include <fmt/format.h>
#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>

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

// P(i of the `drawn` ranks drawn uniformly without replacement from `total` lie among `marked`).
double hypergeometric(int64_t total, int64_t marked, int64_t drawn, int64_t i) {
  if (i < 0 || i > marked || i > drawn || drawn - i > total - marked) return 0.0;
  auto log_choose = [](int64_t n, int64_t k) {
    return std::lgamma(static_cast<double>(n + 1)) - std::lgamma(static_cast<double>(k + 1)) -
           std::lgamma(static_cast<double>(n - k + 1));
  };
  return std::exp(log_choose(marked, i) + log_choose(total - marked, drawn - i) -
                  log_choose(total, drawn));
}

// Values GradSync hands MPI per rank for ZeRO-1's reduce-scatter or all-gather of a region of n
// floats over `parts` ranks: the region in one call, or, when a rank's shard exceeds its share
// of a bucket, rounds of parts x (up to the share) values that pad the shards to ceil(n / parts).
int64_t zero1_values(int64_t n, int parts) {
  const int64_t shard = (n + parts - 1) / parts;
  const int64_t share = std::max<int64_t>(
      1, static_cast<int64_t>(GradSync::kDefaultBucketBytes / sizeof(float)) / parts);
  return shard <= share ? n : parts * shard;
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
  const int M = l.max_nodes_per_token, Md = l.max_devices_per_token;
  MOERUN_CONFIG_REQUIRE(M >= 0 && M <= l.nodes,
                        "--max-nodes-per-token {} must be between 1 and --nodes {} (0 = off)", M,
                        l.nodes);
  MOERUN_CONFIG_REQUIRE(Md >= 0 && Md <= R,
                        "--max-devices-per-token {} must be between 1 and --ep-size {} (0 = off)",
                        Md, R);
  MOERUN_CONFIG_REQUIRE(M == 0 || Md == 0,
                        "--max-nodes-per-token {} and --max-devices-per-token {} cannot be set "
                        "together: limit a token to nodes (V3) or to EP ranks (V2), not both",
                        M, Md);
  MOERUN_CONFIG_REQUIRE((M == 0 && Md == 0) || c.moe.n_group == 1,
                        "{} is group-limited routing by {}; it cannot be combined with --n-group "
                        "{} (leave --n-group at 1)",
                        M > 0 ? "--max-nodes-per-token" : "--max-devices-per-token",
                        M > 0 ? "nodes" : "EP ranks", c.moe.n_group);
  if (Md > 0 && n_moe_layers(c) > 0) {
    const int64_t on_m_ranks = static_cast<int64_t>(Md) * (E / R);
    MOERUN_CONFIG_REQUIRE(c.moe.top_k <= on_m_ranks,
                          "--max-devices-per-token {}: the {} experts on {} rank(s) cannot hold "
                          "top-k {}",
                          Md, on_m_ranks, Md, c.moe.top_k);
  }
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
  // Device-limited routing (V2, M ranks): M of the R ranks, each equally likely, and a node is
  // reached when one of its chosen ranks holds one of the K experts.
  StepBytes& b = p.bytes;
  if (has_moe) {
    const int G = ep_nodes(l), rg = ep_ranks_per_node(l);
    const int Md = l.max_devices_per_token;
    const int64_t El = E / R;
    double reached = 0;  // P(a given other rank of the EP group is reached)
    if (Md > 0) {
      const int64_t pool = static_cast<int64_t>(Md) * El;
      reached = static_cast<double>(Md) / R * (1.0 - miss_probability(pool, El, K));
      double node_reached = 0;  // P(a given other node is reached)
      for (int i = 1; i <= std::min(rg, Md); ++i)
        node_reached += hypergeometric(R, rg, Md, i) * (1.0 - miss_probability(pool, i * El, K));
      b.nodes_per_token_inter = static_cast<double>(G - 1) * node_reached;
    } else {
      const int Meff = l.max_nodes_per_token > 0 ? std::min(l.max_nodes_per_token, G) : G;
      const double node_chosen = static_cast<double>(Meff) / G;
      const int64_t pool = static_cast<int64_t>(Meff) * (E / G);
      reached = node_chosen * (1.0 - miss_probability(pool, El, K));
      b.nodes_per_token_inter =
          static_cast<double>(G - 1) * node_chosen * (1.0 - miss_probability(pool, E / G, K));
    }
    b.rows_per_token_intra = (rg - 1) * reached;
    b.rows_per_token_inter = static_cast<double>(G - 1) * rg * reached;
    int64_t cap_intra = std::min<int64_t>(K, rg - 1),
            cap_inter = std::min<int64_t>(K, static_cast<int64_t>(G - 1) * rg);
    if (l.max_nodes_per_token > 0)
      cap_inter = std::min<int64_t>(
          cap_inter, static_cast<int64_t>(std::min(l.max_nodes_per_token, G - 1)) * rg);
    if (Md > 0) {
      cap_intra = std::min<int64_t>(cap_intra, Md);
      cap_inter = std::min<int64_t>(cap_inter, Md);
    }
    b.rows_per_token_intra_bound = static_cast<double>(cap_intra);
    b.rows_per_token_inter_bound = static_cast<double>(cap_inter);
    // dispatch + combine forward, combine backward + dispatch backward; --recompute full
    // re-dispatches once more in backward.
    b.exchanges_per_layer = c.recompute == Recompute::kFull ? 5 : 4;
    const double per_rank_rows = static_cast<double>(N) * static_cast<double>(p.accumulation) *
                                 static_cast<double>(n_moe_layers(c)) * b.exchanges_per_layer;
    b.a2a_rank_intra = per_rank_rows * b.rows_per_token_intra * H * f32;
    b.a2a_rank_inter = per_rank_rows * b.rows_per_token_inter * H * f32;
    b.a2a_intra = b.a2a_rank_intra * W;
    b.a2a_inter = b.a2a_rank_inter * W;
    b.row_exchanges = per_rank_rows * W;
    b.row_bytes = H * static_cast<int64_t>(f32);
    b.a2a_intra_bound = b.row_exchanges * b.rows_per_token_intra_bound * H * f32;
    b.a2a_inter_bound = b.row_exchanges * b.rows_per_token_inter_bound * H * f32;
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
  // GradSync's counters (comm/grad_sync.h), summed over the world: every rank is in the world
  // and in one expert-DP group, and each rank of a group of p > 1 counts the whole region.
  auto counted = [&](int64_t n, int parts, bool zero1_rounds) -> int64_t {
    if (parts <= 1 || n == 0) return 0;
    return W * (zero1_rounds ? zero1_values(n, parts) : n) * static_cast<int64_t>(f32);
  };
  if (l.zero == 0) {
    b.sync_dense.allreduce = counted(p.rank_dense_params, W, false);
    b.sync_expert.allreduce = counted(p.rank_expert_params, edp, false);
  } else {
    b.sync_dense.reduce_scatter = b.sync_dense.allgather = counted(p.rank_dense_params, W, true);
    b.sync_expert.reduce_scatter = b.sync_expert.allgather =
        counted(p.rank_expert_params, edp, true);
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
      t.max_devices_per_token = std::min(l.max_devices_per_token, t.ep_size);
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

}  // namespace moerun
