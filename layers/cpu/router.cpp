// Router forward/backward on the CPU (fp32 storage, double where sums decide results).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "layers/router.h"
#include "runtime/blas.h"

namespace moerun::cpu {

namespace {

// Indices of the k largest values, best first; ties go to the lower index.
void top_k(const float* v, int64_t n, int64_t k, int32_t* out) {
  for (int64_t j = 0; j < k; ++j) out[j] = -1;
  for (int64_t i = 0; i < n; ++i) {
    const float x = v[i];
    if (x == -std::numeric_limits<float>::infinity()) continue;
    int64_t pos = k;
    while (pos > 0 && (out[pos - 1] < 0 || x > v[out[pos - 1]])) --pos;
    if (pos >= k) continue;
    for (int64_t j = k - 1; j > pos; --j) out[j] = out[j - 1];
    out[pos] = static_cast<int32_t>(i);
  }
}

bool normalizes(const MoEConfig& cfg) {
  return cfg.topk_norm == TopkNorm::kNormalize && cfg.top_k > 1;
}

int64_t sequence_length(int64_t T, int64_t seq_len) {
  const int64_t L = seq_len > 0 ? seq_len : T;
  MOERUN_REQUIRE(L > 0 && T % L == 0, "tokens ({}) must be a multiple of the sequence length ({})",
                 T, L);
  return L;
}

// The constant d(aux)/d(s') for each (sequence, expert), where s' is s for the expert and device
// terms and s normalised per token for the sequence-wise term. Also returns the loss value.
struct AuxGrad {
  std::vector<double> ds_global;  // (E): d aux / d s_{t,i}, the same for every t (expert+device)
  std::vector<double> ds_seq;     // (n_seq, E): d aux / d s'_{t,i} for t in sequence q
  double loss = 0.0;
};

AuxGrad aux_terms(const MoEConfig& cfg, int ep_size, const RouterOutput& out, int64_t seq_len) {
  const int64_t T = out.scores.dim(0), E = cfg.routed_experts, K = cfg.top_k;
  AuxGrad g;
  g.ds_global.assign(static_cast<size_t>(E), 0.0);
  if (T == 0) return g;
  const float* s = out.scores.f32();
  const int32_t* idx = out.topk_idx.data<int32_t>();
  if (cfg.aux_alpha1 > 0 || cfg.aux_alpha2 > 0) {
    std::vector<double> f(static_cast<size_t>(E), 0.0), P(static_cast<size_t>(E), 0.0);
    for (int64_t t = 0; t < T * K; ++t) f[static_cast<size_t>(idx[t])] += 1.0;
    for (auto& v : f) v *= static_cast<double>(E) / static_cast<double>(K * T);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < E; ++i) P[static_cast<size_t>(i)] += s[t * E + i];
    for (auto& v : P) v /= static_cast<double>(T);
    for (int64_t i = 0; i < E; ++i) {
      g.loss += cfg.aux_alpha1 * f[static_cast<size_t>(i)] * P[static_cast<size_t>(i)];
      g.ds_global[static_cast<size_t>(i)] +=
          cfg.aux_alpha1 * f[static_cast<size_t>(i)] / static_cast<double>(T);
    }
    if (cfg.aux_alpha2 > 0) {
      const int64_t per = E / ep_size;
      for (int64_t d = 0; d < ep_size; ++d) {
        double fd = 0.0, Pd = 0.0;
        for (int64_t i = d * per; i < (d + 1) * per; ++i) {
          fd += f[static_cast<size_t>(i)];
          Pd += P[static_cast<size_t>(i)];
        }
        fd /= static_cast<double>(per);
        g.loss += cfg.aux_alpha2 * fd * Pd;
        for (int64_t i = d * per; i < (d + 1) * per; ++i)
          g.ds_global[static_cast<size_t>(i)] += cfg.aux_alpha2 * fd / static_cast<double>(T);
      }
    }
  }
  if (cfg.aux_seq_alpha > 0) {
    const int64_t L = sequence_length(T, seq_len), nseq = T / L;
    g.ds_seq.assign(static_cast<size_t>(nseq * E), 0.0);
    for (int64_t q = 0; q < nseq; ++q) {
      std::vector<double> f(static_cast<size_t>(E), 0.0), P(static_cast<size_t>(E), 0.0);
      for (int64_t t = q * L; t < (q + 1) * L; ++t) {
        for (int64_t k = 0; k < K; ++k) f[static_cast<size_t>(idx[t * K + k])] += 1.0;
        double denom = 0.0;
        for (int64_t i = 0; i < E; ++i) denom += s[t * E + i];
        for (int64_t i = 0; i < E; ++i) P[static_cast<size_t>(i)] += s[t * E + i] / denom;
      }
      for (int64_t i = 0; i < E; ++i) {
        const double fi =
            f[static_cast<size_t>(i)] * static_cast<double>(E) / static_cast<double>(K * L);
        g.loss +=
            cfg.aux_seq_alpha * fi * P[static_cast<size_t>(i)] / static_cast<double>(L * nseq);
        g.ds_seq[static_cast<size_t>(q * E + i)] =
            cfg.aux_seq_alpha * fi / static_cast<double>(L * nseq);
      }
    }
  }
  return g;
}

}  // namespace

RouterOutput router_forward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                            const Tensor& bias, int64_t seq_len) {
  const int64_t T = x.dim(0), H = cfg.hidden, E = cfg.routed_experts, K = cfg.top_k;
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(1) == H, "router input must be (T, {}), got {}", H,
                 x.shape_str());
  RouterOutput out;
  out.scores = Tensor::empty({T, E});
  out.topk_idx = Tensor::empty({T, K}, DType::kI32);
  out.topk_weight = Tensor::empty({T, K});
  out.dispatch_idx = Tensor::empty({T, K}, DType::kI32);
  out.tokens_per_expert.assign(static_cast<size_t>(E), 0);
  float* s = out.scores.f32();
  sgemm(Trans::kNo, Trans::kYes, T, E, H, 1.0f, x.f32(), H, gate.f32(), H, 0.0f, s, E);

  const float* b = bias.f32();
  // Group-limited routing (--n-group, --max-devices-per-token, --max-nodes-per-token): score
  // each group, keep the best `keep` (ties: lower group), hide the other groups' experts.
  const ExpertGroups groups = expert_groups(cfg, ep_size);
  std::vector<std::vector<int32_t>> members(static_cast<size_t>(groups.n_group));
  for (int64_t i = 0; i < E; ++i)
    members[static_cast<size_t>(groups.group_of_expert[static_cast<size_t>(i)])].push_back(
        static_cast<int32_t>(i));
  std::vector<float> biased(static_cast<size_t>(E)), member_scores(static_cast<size_t>(E));
  std::vector<float> gscore(static_cast<size_t>(groups.n_group));
  std::vector<int32_t> best(static_cast<size_t>(groups.score_top));
  std::vector<int32_t> keep_groups(static_cast<size_t>(groups.keep));
  std::vector<bool> kept(static_cast<size_t>(groups.n_group));
  int32_t* idx = out.topk_idx.data<int32_t>();
  float* w = out.topk_weight.f32();
  for (int64_t t = 0; t < T; ++t) {
    float* st = s + t * E;
    if (cfg.score_fn == ScoreFn::kSoftmax) {
      const float mx = *std::max_element(st, st + E);
      double sum = 0.0;
      for (int64_t i = 0; i < E; ++i) sum += (st[i] = std::exp(st[i] - mx));
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t i = 0; i < E; ++i) st[i] *= inv;
    } else {
      for (int64_t i = 0; i < E; ++i) st[i] = 1.0f / (1.0f + std::exp(-st[i]));
    }
    for (int64_t i = 0; i < E; ++i) biased[static_cast<size_t>(i)] = st[i] + b[i];
    if (groups.limits()) {
      for (int64_t gi = 0; gi < groups.n_group; ++gi) {
        const std::vector<int32_t>& m = members[static_cast<size_t>(gi)];
        const int64_t n = static_cast<int64_t>(m.size());
        for (int64_t j = 0; j < n; ++j)
          member_scores[static_cast<size_t>(j)] =
              biased[static_cast<size_t>(m[static_cast<size_t>(j)])];
        const int64_t top = std::min(groups.score_top, n);
        top_k(member_scores.data(), n, top, best.data());
        float sum = member_scores[static_cast<size_t>(best[0])];  // best first, in fp32
        for (int64_t j = 1; j < top; ++j)
          sum += member_scores[static_cast<size_t>(best[static_cast<size_t>(j)])];
        gscore[static_cast<size_t>(gi)] = sum;
      }
      top_k(gscore.data(), groups.n_group, groups.keep, keep_groups.data());
      std::fill(kept.begin(), kept.end(), false);
      for (int32_t gi : keep_groups) kept[static_cast<size_t>(gi)] = true;
      for (int64_t i = 0; i < E; ++i)
        if (!kept[static_cast<size_t>(groups.group_of_expert[static_cast<size_t>(i)])])
          biased[static_cast<size_t>(i)] = -std::numeric_limits<float>::infinity();
    }
    int32_t* it = idx + t * K;
    top_k(biased.data(), E, K, it);
    float* wt = w + t * K;
    double denom = 0.0;
    for (int64_t k = 0; k < K; ++k) denom += (wt[k] = st[it[k]]);
    const double scale = cfg.routed_scaling_factor / (normalizes(cfg) ? denom + 1e-20 : 1.0);
    for (int64_t k = 0; k < K; ++k) wt[k] = static_cast<float>(wt[k] * scale);
  }

  int32_t* didx = out.dispatch_idx.data<int32_t>();
  std::copy(idx, idx + T * K, didx);
  if (cfg.capacity_factor > 0 && T > 0) {
    // Over capacity, an expert keeps its highest-affinity (largest s) pairs; ties: earlier token.
    const int64_t cap = static_cast<int64_t>(
        std::ceil(static_cast<double>(T * K) / static_cast<double>(E) * cfg.capacity_factor));
    std::vector<std::vector<int64_t>> pairs(static_cast<size_t>(E));
    for (int64_t p = 0; p < T * K; ++p) pairs[static_cast<size_t>(idx[p])].push_back(p);
    for (int64_t e = 0; e < E; ++e) {
      auto& v = pairs[static_cast<size_t>(e)];
      if (static_cast<int64_t>(v.size()) <= cap) continue;
      std::stable_sort(v.begin(), v.end(), [&](int64_t p, int64_t q) {
        return s[(p / K) * E + e] > s[(q / K) * E + e];
      });
      for (size_t j = static_cast<size_t>(cap); j < v.size(); ++j) {
        didx[v[j]] = -1;
        w[v[j]] = 0.0f;
        ++out.dropped;
      }
    }
  }
  for (int64_t p = 0; p < T * K; ++p)
    if (didx[p] >= 0) ++out.tokens_per_expert[static_cast<size_t>(didx[p])];
  out.aux_loss = aux_terms(cfg, ep_size, out, seq_len).loss;
  return out;
}

void router_backward(const MoEConfig& cfg, int ep_size, const Tensor& x, const Tensor& gate,
                     const RouterOutput& out, const Tensor& dtopk_weight, int64_t seq_len,
                     Tensor& dgate, Tensor& dx) {
  const int64_t T = x.dim(0), H = cfg.hidden, E = cfg.routed_experts, K = cfg.top_k;
  if (T == 0) return;
  const float* s = out.scores.f32();
  const int32_t* idx = out.topk_idx.data<int32_t>();
  const int32_t* didx = out.dispatch_idx.data<int32_t>();
  const float* dg = dtopk_weight.f32();
  const AuxGrad aux = aux_terms(cfg, ep_size, out, seq_len);
  const int64_t L = cfg.aux_seq_alpha > 0 ? sequence_length(T, seq_len) : T;

  Tensor dlogits = Tensor::empty({T, E});
  float* dl = dlogits.f32();
  std::vector<double> ds(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* st = s + t * E;
    for (int64_t i = 0; i < E; ++i)
      ds[static_cast<size_t>(i)] = aux.ds_global[static_cast<size_t>(i)];
    if (!aux.ds_seq.empty()) {
      // s' = s / sum(s): ds_m = (c_m - sum_i c_i s'_i) / sum(s)
      const double* c = aux.ds_seq.data() + (t / L) * E;
      double denom = 0.0, dot = 0.0;
      for (int64_t i = 0; i < E; ++i) denom += st[i];
      for (int64_t i = 0; i < E; ++i) dot += c[i] * st[i] / denom;
      for (int64_t i = 0; i < E; ++i) ds[static_cast<size_t>(i)] += (c[i] - dot) / denom;
    }
    // g_k = c * s_k / Z (Z = sum of the K selected s, or 1): dropped pairs carry dg = 0.
    const int32_t* it = idx + t * K;
    const float* dgt = dg + t * K;
    double Z = 1.0, dot = 0.0;
    if (normalizes(cfg)) {
      Z = 1e-20;
      for (int64_t k = 0; k < K; ++k) Z += st[it[k]];
    }
    const double c = cfg.routed_scaling_factor;
    for (int64_t k = 0; k < K; ++k)
      if (didx[t * K + k] >= 0) dot += dgt[k] * st[it[k]];
    for (int64_t k = 0; k < K; ++k) {
      double d = didx[t * K + k] >= 0 ? dgt[k] : 0.0;
      if (normalizes(cfg)) d -= dot / Z;
      ds[static_cast<size_t>(it[k])] += c / Z * d;
    }
    float* dlt = dl + t * E;
    if (cfg.score_fn == ScoreFn::kSoftmax) {
      double sd = 0.0;
      for (int64_t i = 0; i < E; ++i) sd += ds[static_cast<size_t>(i)] * st[i];
      for (int64_t i = 0; i < E; ++i)
        dlt[i] = static_cast<float>(st[i] * (ds[static_cast<size_t>(i)] - sd));
    } else {
      for (int64_t i = 0; i < E; ++i)
        dlt[i] = static_cast<float>(ds[static_cast<size_t>(i)] * st[i] * (1.0 - st[i]));
    }
  }
  sgemm(Trans::kYes, Trans::kNo, E, H, T, 1.0f, dl, E, x.f32(), H, 1.0f, dgate.f32(), H);
  sgemm(Trans::kNo, Trans::kNo, T, H, E, 1.0f, dl, E, gate.f32(), H, 1.0f, dx.f32(), H);
}

}  // namespace moerun::cpu
