// Double-precision loop reference for the MoE layer (see moe_reference.h).
#include "tests/common/moe_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "runtime/rng.h"

namespace moerun::testing {

namespace {
std::vector<int> topk_indices(const std::vector<double>& v, int64_t k) {
  std::vector<int> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
  order.resize(static_cast<size_t>(k));
  return order;
}
double silu(double a) {
  return a / (1.0 + std::exp(-a));
}

// SwiGLU of one token through a (2W, H) / (H, W) weight pair, added to out with weight g.
void swiglu_add(const double* x, const double* w13, const double* w2, int64_t H, int64_t W,
                double g, double* out) {
  std::vector<double> h(static_cast<size_t>(W));
  for (int64_t j = 0; j < W; ++j) {
    double a = 0, b = 0;
    for (int64_t c = 0; c < H; ++c) {
      a += w13[j * H + c] * x[c];
      b += w13[(W + j) * H + c] * x[c];
    }
    h[static_cast<size_t>(j)] = silu(a) * b;
  }
  for (int64_t c = 0; c < H; ++c) {
    double s = 0;
    for (int64_t j = 0; j < W; ++j) s += w2[c * W + j] * h[static_cast<size_t>(j)];
    out[c] += g * s;
  }
}
}  // namespace

RefResult ref_forward(const RefLayer& L) {
  const MoEConfig& c = L.cfg;
  const int64_t T = L.T, H = c.hidden, F = c.expert_width, E = c.routed_experts, K = c.top_k;
  RefResult r;
  r.y.assign(static_cast<size_t>(T * H), 0.0);
  r.topk_idx.assign(static_cast<size_t>(T * K), -1);
  r.weight.assign(static_cast<size_t>(T * K), 0.0);
  r.counts.assign(static_cast<size_t>(E), 0);
  std::vector<double> s(static_cast<size_t>(T * E));
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> logit(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      double v = 0;
      for (int64_t h = 0; h < H; ++h)
        v += L.gate[static_cast<size_t>(e * H + h)] * L.x[static_cast<size_t>(t * H + h)];
      logit[static_cast<size_t>(e)] = v;
    }
    if (c.score_fn == ScoreFn::kSoftmax) {
      const double mx = *std::max_element(logit.begin(), logit.end());
      double z = 0;
      for (double v : logit) z += std::exp(v - mx);
      for (int64_t e = 0; e < E; ++e)
        s[static_cast<size_t>(t * E + e)] = std::exp(logit[static_cast<size_t>(e)] - mx) / z;
    } else {
      for (int64_t e = 0; e < E; ++e)
        s[static_cast<size_t>(t * E + e)] = 1.0 / (1.0 + std::exp(-logit[static_cast<size_t>(e)]));
    }
    std::vector<double> biased(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e)
      biased[static_cast<size_t>(e)] =
          s[static_cast<size_t>(t * E + e)] + L.bias[static_cast<size_t>(e)];
    if (c.n_group > 1) {
      const int64_t gs = E / c.n_group;
      std::vector<double> gscore(static_cast<size_t>(c.n_group));
      for (int64_t g = 0; g < c.n_group; ++g) {
        std::vector<double> v(biased.begin() + g * gs, biased.begin() + (g + 1) * gs);
        std::sort(v.rbegin(), v.rend());
        gscore[static_cast<size_t>(g)] = c.group_score == GroupScore::kMax ? v[0] : v[0] + v[1];
      }
      std::vector<int> keep = topk_indices(gscore, c.topk_group);
      for (int64_t e = 0; e < E; ++e)
        if (std::find(keep.begin(), keep.end(), static_cast<int>(e / gs)) == keep.end())
          biased[static_cast<size_t>(e)] = -std::numeric_limits<double>::infinity();
    }
    std::vector<int> idx = topk_indices(biased, K);
    double denom = 0;
    for (int64_t k = 0; k < K; ++k)
      denom += s[static_cast<size_t>(t * E + idx[static_cast<size_t>(k)])];
    for (int64_t k = 0; k < K; ++k) {
      double w = s[static_cast<size_t>(t * E + idx[static_cast<size_t>(k)])];
      if (c.topk_norm == TopkNorm::kNormalize && K > 1) w /= denom + 1e-20;
      r.topk_idx[static_cast<size_t>(t * K + k)] = idx[static_cast<size_t>(k)];
      r.weight[static_cast<size_t>(t * K + k)] = w * c.routed_scaling_factor;
    }
  }
  // Aux losses use the selection before capacity drops.
  const std::vector<int> selected = r.topk_idx;
  if (c.capacity_factor > 0 && T > 0) {
    const int64_t cap =
        static_cast<int64_t>(std::ceil(static_cast<double>(T * K) / E * c.capacity_factor));
    for (int64_t e = 0; e < E; ++e) {
      std::vector<int64_t> pairs;
      for (int64_t p = 0; p < T * K; ++p)
        if (r.topk_idx[static_cast<size_t>(p)] == e) pairs.push_back(p);
      std::stable_sort(pairs.begin(), pairs.end(), [&](int64_t a, int64_t b) {
        return s[static_cast<size_t>((a / K) * E + e)] > s[static_cast<size_t>((b / K) * E + e)];
      });
      for (size_t j = static_cast<size_t>(cap); j < pairs.size(); ++j) {
        r.topk_idx[static_cast<size_t>(pairs[j])] = -1;
        r.weight[static_cast<size_t>(pairs[j])] = 0.0;
        ++r.dropped;
      }
    }
  }
  const int64_t SF = c.shared_width();
  for (int64_t t = 0; t < T; ++t) {
    const double* xt = L.x.data() + t * H;
    double* yt = r.y.data() + t * H;
    for (int64_t k = 0; k < K; ++k) {
      const int e = r.topk_idx[static_cast<size_t>(t * K + k)];
      if (e < 0) continue;
      ++r.counts[static_cast<size_t>(e)];
      swiglu_add(xt, L.w13.data() + e * 2 * F * H, L.w2.data() + e * H * F, H, F,
                 r.weight[static_cast<size_t>(t * K + k)], yt);
    }
    if (SF > 0) swiglu_add(xt, L.sw13.data(), L.sw2.data(), H, SF, 1.0, yt);
  }
  // Auxiliary losses (algorithms.md section 4), over this layer's T tokens.
  if ((c.aux_alpha1 > 0 || c.aux_alpha2 > 0) && T > 0) {
    std::vector<double> f(static_cast<size_t>(E), 0), P(static_cast<size_t>(E), 0);
    for (int v : selected) f[static_cast<size_t>(v)] += static_cast<double>(E) / (K * T);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        P[static_cast<size_t>(e)] += s[static_cast<size_t>(t * E + e)] / T;
    for (int64_t e = 0; e < E; ++e)
      r.aux += c.aux_alpha1 * f[static_cast<size_t>(e)] * P[static_cast<size_t>(e)];
    const int64_t per = E / L.ep_size;
    for (int64_t d = 0; d < L.ep_size; ++d) {
      double fd = 0, Pd = 0;
      for (int64_t e = d * per; e < (d + 1) * per; ++e) {
        fd += f[static_cast<size_t>(e)] / per;
        Pd += P[static_cast<size_t>(e)];
      }
      r.aux += c.aux_alpha2 * fd * Pd;
    }
  }
  if (c.aux_seq_alpha > 0 && T > 0) {
    const int64_t Ls = L.seq_len > 0 ? L.seq_len : T, nseq = T / Ls;
    for (int64_t q = 0; q < nseq; ++q) {
      std::vector<double> f(static_cast<size_t>(E), 0), P(static_cast<size_t>(E), 0);
      for (int64_t t = q * Ls; t < (q + 1) * Ls; ++t) {
        double z = 0;
        for (int64_t e = 0; e < E; ++e) z += s[static_cast<size_t>(t * E + e)];
        for (int64_t e = 0; e < E; ++e)
          P[static_cast<size_t>(e)] += s[static_cast<size_t>(t * E + e)] / z / Ls;
        for (int64_t k = 0; k < K; ++k)
          f[static_cast<size_t>(selected[static_cast<size_t>(t * K + k)])] +=
              static_cast<double>(E) / (K * Ls);
      }
      for (int64_t e = 0; e < E; ++e)
        r.aux += c.aux_seq_alpha * f[static_cast<size_t>(e)] * P[static_cast<size_t>(e)] / nseq;
    }
  }
  r.loss = r.aux;
  for (size_t i = 0; i < r.y.size(); ++i) r.loss += r.y[i] * L.dy[i];
  return r;
}

std::vector<double> ref_grad(RefLayer L, std::vector<double> RefLayer::*member, double eps) {
  std::vector<double>& v = L.*member;
  std::vector<double> g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double old = v[i];
    v[i] = old + eps;
    const double lp = ref_forward(L).loss;
    v[i] = old - eps;
    const double lm = ref_forward(L).loss;
    v[i] = old;
    g[i] = (lp - lm) / (2 * eps);
  }
  return g;
}

RefLayer random_ref_layer(const MoEConfig& cfg, int64_t T, uint64_t seed, double std,
                          double bias_std) {
  RefLayer L;
  L.cfg = cfg;
  L.T = T;
  const int64_t H = cfg.hidden, F = cfg.expert_width, E = cfg.routed_experts,
                SF = cfg.shared_width();
  Rng rng(seed);
  // Values are rounded to float so that the float implementation sees exactly the same inputs.
  auto draw = [&](int64_t n, double sd) {
    std::vector<double> v(static_cast<size_t>(n));
    for (double& d : v) d = static_cast<double>(static_cast<float>(rng.normal() * sd));
    return v;
  };
  L.x = draw(T * H, 1.0);
  L.gate = draw(E * H, std);
  L.bias = draw(E, bias_std);
  L.w13 = draw(E * 2 * F * H, std);
  L.w2 = draw(E * H * F, std);
  L.sw13 = draw(2 * SF * H, std);
  L.sw2 = draw(H * SF, std);
  L.dy = draw(T * H, 1.0);
  return L;
}

}  // namespace moerun::testing
