// The arithmetic of `moerun plan`: what one training layout (nodes x ranks per node, EP size,
// micro-batch, ZeRO, recompute, node-limited routing) needs per rank and moves per step, from the
// model config and a hardware profile (jobs/hardware.ini). No model is built, nothing is run.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "comm/grad_sync.h"
#include "layers/model.h"
#include "layers/model_plan.h"

namespace moerun {

// One [section] of a hardware file. Bandwidths are per rank (one device), one direction, GB/s.
struct HardwareProfile {
  std::string name;  // the section name: h100, h200, a100, cpu
  std::string description;
  double memory_gib = 0;         // device memory per rank
  double usable_fraction = 0.9;  // of memory_gib: the rest is the runtime's own and fragments
  std::map<std::string, double> peak_tflops;  // per dtype: fp32, tf32, bf16 (dense, no sparsity)
  std::string dtype;             // the dtype the step-time model computes in (a key above)
  double gemm_efficiency = 0.7;  // achieved fraction of the peak in the model's GEMMs
  double mem_bw_gbs = 0;         // device memory bandwidth
  double intra_node_gbs = 0;     // rank to rank inside a node (NVLink, shared memory)
  double network_gbs = 0;        // rank to other nodes (its NIC share)
};

// Every section of `file`, by name. Throws ConfigError naming --hardware-file.
std::map<std::string, HardwareProfile> load_hardware_file(const std::string& file);
// One profile; an unknown name is a ConfigError naming --hardware and listing the known ones.
HardwareProfile find_hardware(const std::string& file, const std::string& name);

struct Layout {
  int nodes = 1;
  int ranks_per_node = 1;
  int ep_size = 1;
  int64_t micro_batch = 1;        // sequences per rank per forward/backward
  int64_t global_batch = 0;       // sequences per step (rounded up to world x micro-batch)
  int zero = 0;                   // 0 or 1
  int max_nodes_per_token = 0;    // M of node-limited routing; 0 = off
  int max_devices_per_token = 0;  // M of V2's device-limited routing (EP ranks); 0 = off
  int world() const { return nodes * ranks_per_node; }
};

// Throws ConfigError naming the option when the layout does not divide: --ep-size vs the experts
// and the world, an EP group that neither fits in a node nor spans whole nodes, M > nodes (or
// > EP size for devices), K experts that M nodes (ranks) cannot hold, both limits at once, or a
// limit with --n-group.
void validate_layout(const ModelConfig& cfg, const Layout& l);

// Bytes of one optimizer step. a2a_*: summed over every rank, the rows the dispatcher sends to
// other ranks (as the trainer's metrics count them: rows a rank keeps for itself move nothing).
// Collectives: the payload per rank and the bytes a ring algorithm sends per rank.
struct StepBytes {
  double a2a_intra = 0, a2a_inter = 0;  // whole world, per step
  int exchanges_per_layer = 0;          // row exchanges per MoE layer per micro-batch
  double rows_per_token_intra = 0;      // expected rows a token sends to other ranks
  double rows_per_token_inter = 0;
  // Other nodes a token reaches: what a dispatcher that sends one row per (token, node) and
  // forwards inside the node (DeepEP) would send between nodes. moerun sends one per rank.
  double nodes_per_token_inter = 0;
  double a2a_rank_intra = 0, a2a_rank_inter = 0;  // per rank, per step
  // Whatever the routing: a token reaches at most K ranks, at most rg - 1 others on its node and
  // the ranks of min(M, G - 1) other nodes (node-limited) or M ranks (device-limited). The
  // uniform-routing numbers above are expectations; these bound what a run can measure.
  double rows_per_token_intra_bound = 0, rows_per_token_inter_bound = 0;
  double a2a_intra_bound = 0, a2a_inter_bound = 0;  // whole world, per step
  // Row exchanges of the whole world per step (tokens x micro-batches x MoE layers x exchanges)
  // and the bytes of one row (H fp32): a2a bytes = rows per token x row_exchanges x row_bytes.
  double row_exchanges = 0;
  int64_t row_bytes = 0;
  // GradSync's byte counters of one step summed over the world's ranks, in comm/grad_sync.h's
  // convention (each call: the whole region it works on, per rank of a group of > 1 ranks);
  // what the trainer's metrics record as sync_bytes. Exact when the flat buffers have no
  // alignment gaps (every tensor a multiple of 16 floats: hidden % 16 == 0 for MHA models).
  SyncBytes sync_dense, sync_expert;
  // Gradient synchronisation of one rank (ZeRO 0: all-reduce; ZeRO-1: reduce-scatter of the
  // gradients + all-gather of the updated parameters), dense over the world, routed experts
  // over the expert-data-parallel group (world / EP).
  double dense_payload = 0, expert_payload = 0;
  double allreduce_sent = 0, reduce_scatter_sent = 0, allgather_sent = 0;
  double dense_sync_sent = 0, expert_sync_sent = 0;  // the same split by group
  bool dense_group_crosses_nodes = false, expert_group_crosses_nodes = false;
};

struct StepTime {
  double compute_s = 0, optimizer_s = 0, a2a_s = 0, grad_sync_s = 0;
  double total_s = 0;       // no overlap: the sum
  double overlapped_s = 0;  // perfect overlap of communication with compute: the max
  double mfu = 0, mfu_overlapped = 0;
};

struct LayoutPlan {
  Layout layout;
  HardwareProfile hw;
  ParamCounts params;
  int64_t rank_expert_params = 0, rank_dense_params = 0;
  int64_t accumulation = 0;  // micro-batches per rank per step
  int64_t global_batch = 0;  // after rounding
  bool global_batch_rounded = false;
  MemoryEstimate memory;
  int64_t comm_buffer_bytes = 0;  // one exchange's send + receive staging
  int64_t total_bytes = 0;        // memory.total_bytes + comm buffers
  int64_t usable_bytes = 0;       // hw.memory_gib * usable_fraction
  bool fits = false;
  std::string why;
  double flops_m = 0;             // DeepSeek LLM's M (non-embedding, with attention)
  double flops_6n = 0;            // 6 x activated parameters (embeddings included)
  double hw_flops_per_token = 0;  // what the ranks execute: M + LM head + recompute
  StepBytes bytes;
  StepTime time;
};

LayoutPlan plan_layout(const ModelConfig& cfg, const Layout& l, const HardwareProfile& hw);

// The smallest EP size (a divisor of E valid for the layout) that fits at l's node count, 0 if
// none; and the smallest node count (up to max_nodes) with its smallest fitting EP size.
struct FitSearch {
  int ep_at_nodes = 0;
  int nodes = 0, ep = 0;
};
FitSearch search_fit(const ModelConfig& cfg, const Layout& l, const HardwareProfile& hw,
                     int max_nodes);

std::string plan_text(const ModelConfig& cfg, const LayoutPlan& p, const FitSearch& f);
nlohmann::json plan_json(const ModelConfig& cfg, const LayoutPlan& p, const FitSearch& f);

}  // namespace moerun
