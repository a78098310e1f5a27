// Optimizer: AdamW and its moments, whole or as ZeRO-1 shards; see optimizer.h.
#include "layers/optimizer.h"

#include <fmt/format.h>

#include <algorithm>

#include "runtime/check.h"

namespace moerun {

Optimizer::Optimizer(std::vector<NamedParam> params, const AdamWConfig& cfg)
    : params_(std::move(params)), adamw_(cfg) {
  m_.reserve(params_.size());
  v_.reserve(params_.size());
  for (const NamedParam& p : params_) {
    m_.push_back(Tensor::zeros(p.value->shape()));
    v_.push_back(Tensor::zeros(p.value->shape()));
  }
}

Optimizer::Optimizer(std::vector<NamedParam> params, const AdamWConfig& cfg, const ZeroLayout& zero)
    : params_(std::move(params)), zero_(true), adamw_(cfg) {
  MOERUN_REQUIRE(zero.dense && zero.expert, "ZeRO-1 needs the dense and expert communicators");
  const int64_t total = zero.param_buffer.numel();
  MOERUN_REQUIRE(zero.grad_buffer.numel() == total && zero.dense_numel <= total,
                 "ZeRO-1: parameter buffer {}, gradient buffer {}, dense region {} disagree", total,
                 zero.grad_buffer.numel(), zero.dense_numel);
  const int64_t region_begin[2] = {0, zero.dense_numel};
  const int64_t region_numel[2] = {zero.dense_numel, total - zero.dense_numel};
  const Comm* comm[2] = {zero.dense, zero.expert};
  for (int k = 0; k < 2; ++k) {
    Region& r = regions_[k];
    r.shard = flat_shard(region_numel[k], comm[k]->size(), comm[k]->rank());
    r.m = Tensor::zeros({r.shard.size});
    r.v = Tensor::zeros({r.shard.size});
    // A group of one: the gradient region is already the sum (no copy).
    r.grad = comm[k]->size() == 1 ? zero.grad_buffer.view(region_begin[k], {r.shard.size})
                                  : Tensor::zeros({r.shard.size});
  }
  const float* base = zero.param_buffer.f32();
  for (size_t i = 0; i < params_.size(); ++i) {
    const NamedParam& p = params_[i];
    const int k = p.is_expert ? 1 : 0;
    const int64_t off = (p.value->f32() - base) - region_begin[k];  // in the region
    MOERUN_REQUIRE(off >= 0 && off + p.value->numel() <= region_numel[k] &&
                       p.grad->f32() - zero.grad_buffer.f32() == off + region_begin[k],
                   "ZeRO-1: parameter {} is not a view into the model's flat buffers", p.name);
    const FlatShard& s = regions_[k].shard;
    const int64_t b = std::max(off, s.begin),
                  e = std::min(off + p.value->numel(), s.begin + s.size);
    Piece piece{i, k, 0, 0, 0};
    if (b < e) piece = Piece{i, k, b - off, b - s.begin, e - b};
    if (piece.count > 0) {
      pieces_.push_back(piece);
      m_.push_back(regions_[k].m.view(piece.shard_begin, {piece.count}));
      v_.push_back(regions_[k].v.view(piece.shard_begin, {piece.count}));
    } else {
      m_.push_back(Tensor::zeros({0}));
      v_.push_back(Tensor::zeros({0}));
    }
    flat_begin_.push_back(piece.param_begin);
  }
}

void Optimizer::step(double lr, double grad_scale) {
  std::vector<AdamWParam> ap;
  if (!zero_) {
    ap.reserve(params_.size());
    for (size_t i = 0; i < params_.size(); ++i) {
      const NamedParam& p = params_[i];
      ap.push_back(AdamWParam{p.value->span<float>(), p.grad->span<float>(), m_[i].span<float>(),
                              v_[i].span<float>(),
                              p.is_matrix ? WeightDecay::kApply : WeightDecay::kNone});
    }
  } else {
    // Elementwise, so a piece of a parameter updates exactly as in the whole parameter; the
    // weight decay follows the parameter the piece belongs to. Gaps between parameters are skipped.
    ap.reserve(pieces_.size());
    for (const Piece& c : pieces_) {
      const NamedParam& p = params_[c.param];
      const auto count = static_cast<size_t>(c.count);
      const auto sb = static_cast<size_t>(c.shard_begin);
      Region& r = regions_[c.region];
      ap.push_back(
          AdamWParam{p.value->span<float>().subspan(static_cast<size_t>(c.param_begin), count),
                     r.grad.span<float>().subspan(sb, count), r.m.span<float>().subspan(sb, count),
                     r.v.span<float>().subspan(sb, count),
                     p.is_matrix ? WeightDecay::kApply : WeightDecay::kNone});
    }
  }
  adamw_.step(ap, lr, grad_scale);
}

std::vector<NamedState> Optimizer::state() {
  std::vector<NamedState> out;
  out.reserve(2 * params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t fb = zero_ ? flat_begin_[i] : -1;
    out.push_back({moment_name('m', params_[i].name), &m_[i], params_[i].is_expert, fb});
    out.push_back({moment_name('v', params_[i].name), &v_[i], params_[i].is_expert, fb});
  }
  return out;
}

int64_t Optimizer::state_bytes() const {
  int64_t n = 0;
  if (zero_) {
    for (const Region& r : regions_) n += static_cast<int64_t>(r.m.nbytes() + r.v.nbytes());
  } else {
    for (size_t i = 0; i < m_.size(); ++i)
      n += static_cast<int64_t>(m_[i].nbytes() + v_[i].nbytes());
  }
  return n;
}

std::string Optimizer::moment_name(char moment, const std::string& param) {
  return fmt::format("optim.{}.{}", moment, param);
}

}  // namespace moerun
