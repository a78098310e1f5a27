// MHA: shape checks and backend choice for the ops, and the module.
#include "layers/mha.h"

#include "layers/backend.h"
#include "runtime/check.h"
#include "runtime/rng.h"

namespace moerun {

namespace {
void check_weights(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo) {
  cfg.validate();
  MOERUN_REQUIRE(wqkv.shape() == std::vector<int64_t>({3 * cfg.H, cfg.H}) &&
                     wo.shape() == std::vector<int64_t>({cfg.H, cfg.H}),
                 "MHA needs wqkv (3H, H) and wo (H, H) with H = {} (got {} and {})", cfg.H,
                 wqkv.shape_str(), wo.shape_str());
}
}  // namespace

Tensor mha_forward(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo,
                   const Tensor& x, int64_t seq_len, MHASaved& saved) {
  check_weights(cfg, wqkv, wo);
  MOERUN_REQUIRE(seq_len > 0, "attention needs T > 0 (got T={})", seq_len);
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(1) == cfg.H && x.dim(0) % seq_len == 0,
                 "attention input {} must be (B * {}, {})", x.shape_str(), seq_len, cfg.H);
  const Device d = backend_of("mha_forward", {&wqkv, &wo, &x});
  Tensor out = Tensor::empty(x.shape(), DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::mha_forward(cfg, wqkv, wo, x, x.dim(0) / seq_len, seq_len, saved, out);
      return out;
    case Device::kCuda:
      break;
  }
  no_backend("mha_forward", d);
}

Tensor mha_backward(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo,
                    const Tensor& x, const MHASaved& saved, const Tensor& dout, Tensor& dwqkv,
                    Tensor& dwo) {
  check_weights(cfg, wqkv, wo);
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(0) == saved.B * saved.T && dout.shape() == x.shape() &&
                     dwqkv.shape() == wqkv.shape() && dwo.shape() == wo.shape(),
                 "attention backward: x {}, dout {} do not match the saved forward ({} x {})",
                 x.shape_str(), dout.shape_str(), saved.B, saved.T);
  const Device d = backend_of("mha_backward", {&wqkv, &wo, &x, &dout, &dwqkv, &dwo});
  Tensor dx = Tensor::empty(x.shape(), DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::mha_backward(cfg, wqkv, wo, x, saved, dout, dwqkv, dwo, dx);
      return dx;
    case Device::kCuda:
      break;
  }
  no_backend("mha_backward", d);
}

MHA::MHA(const AttentionConfig& cfg)
    : wqkv(Tensor::zeros({3 * cfg.H, cfg.H})),
      dwqkv(Tensor::zeros({3 * cfg.H, cfg.H})),
      wo(Tensor::zeros({cfg.H, cfg.H})),
      dwo(Tensor::zeros({cfg.H, cfg.H})),
      cfg_(cfg) {
  cfg_.validate();
}

Tensor MHA::forward(const Tensor& x, int64_t seq_len) {
  saved_.x = x;
  return mha_forward(cfg_, wqkv, wo, x, seq_len, saved_.mha);
}

Tensor MHA::backward(const Tensor& dout) {
  return mha_backward(cfg_, wqkv, wo, saved_.x, saved_.mha, dout, dwqkv, dwo);
}

void MHA::init(uint64_t seed, uint64_t stream, float std) {
  for (auto [t, s] : {std::pair{&wqkv, stream}, std::pair{&wo, stream + 1}}) {
    Rng rng(seed, s);
    for (float& v : t->span<float>()) v = static_cast<float>(rng.normal() * std);
  }
}

Tensor mha_decode(const AttentionConfig& cfg, const Tensor& wqkv, const Tensor& wo, const Tensor& x,
                  int64_t pos, MHACache& cache) {
  check_weights(cfg, wqkv, wo);
  MOERUN_REQUIRE(cache.batch > 0 && cache.k.defined(), "MHA decode before start_cache");
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(1) == cfg.H && x.dim(0) > 0 && x.dim(0) % cache.batch == 0,
                 "MHA decode input {} must be ({} * t, {})", x.shape_str(), cache.batch, cfg.H);
  const int64_t t = x.dim(0) / cache.batch;
  MOERUN_REQUIRE(pos == cache.len, "MHA decode at position {}, but the cache holds {} positions",
                 pos, cache.len);
  MOERUN_REQUIRE(pos + t <= cache.max_len,
                 "MHA decode of {} positions from {} overflows the cache of {} positions", t, pos,
                 cache.max_len);
  const Device d = backend_of("mha_decode", {&wqkv, &wo, &x});
  Tensor out = Tensor::empty(x.shape(), DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::mha_decode(cfg, wqkv, wo, x, t, cache, out);
      return out;
    case Device::kCuda:
      break;
  }
  no_backend("mha_decode", d);
}

void MHA::start_cache(int64_t batch, int64_t max_len) {
  MOERUN_REQUIRE(batch > 0 && max_len > 0, "MHA cache needs batch > 0 and max_len > 0 (got {}, {})",
                 batch, max_len);
  cache_ = {};  // free the old cache before allocating the new one
  cache_.batch = batch;
  cache_.max_len = max_len;
  cache_.k = Tensor::empty({batch, cfg_.n_head, max_len, cfg_.head_dim()});
  cache_.v = Tensor::empty({batch, cfg_.n_head, max_len, cfg_.head_dim()});
}

Tensor MHA::decode(const Tensor& x, int64_t pos) {
  return mha_decode(cfg_, wqkv, wo, x, pos, cache_);
}

int64_t MHA::cache_bytes() const {
  return cache_.bytes();
}

void MHA::named_params(const std::string& prefix, std::vector<NamedParam>& out) {
  out.push_back({prefix + "wqkv", &wqkv, &dwqkv, false, true});
  out.push_back({prefix + "wo", &wo, &dwo, false, true});
}

}  // namespace moerun
