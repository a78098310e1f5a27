// MLA: shape checks and backend choice for the ops, and the module.
#include "layers/mla.h"

#include <fmt/ranges.h>

#include <utility>

#include "layers/backend.h"
#include "runtime/check.h"
#include "runtime/rng.h"

namespace moerun {

namespace {

using Shape = std::vector<int64_t>;

void require_shape(const Tensor& t, const Shape& want, const char* name) {
  MOERUN_REQUIRE(t.defined() && t.shape() == want, "MLA needs {} of shape ({}) (got {})", name,
                 fmt::join(want, ", "), t.defined() ? t.shape_str() : "none");
}

// The parameter list in named_params order, with shapes: one place for init, checks and names.
struct ParamSpec {
  const char* name;
  Tensor MLAWeights::*member;
  Shape shape;
  uint64_t stream_offset;  // Rng stream = stream + this; norms (is_matrix false) ignore it
  bool is_matrix;
};

std::vector<ParamSpec> param_specs(const AttentionConfig& cfg) {
  const MLAConfig& m = cfg.mla;
  const int64_t NH = cfg.n_head;
  std::vector<ParamSpec> specs;
  if (m.q_lora_rank == 0) {
    specs.push_back({"wq", &MLAWeights::wq, {NH * m.qk_head_dim(), cfg.H}, 0, true});
  } else {
    specs.push_back({"wq_a", &MLAWeights::wq_a, {m.q_lora_rank, cfg.H}, 0, true});
    specs.push_back({"q_norm", &MLAWeights::q_norm, {m.q_lora_rank}, 0, false});
    specs.push_back({"wq_b", &MLAWeights::wq_b, {NH * m.qk_head_dim(), m.q_lora_rank}, 4, true});
  }
  specs.push_back(
      {"wkv_a", &MLAWeights::wkv_a, {m.kv_lora_rank + m.qk_rope_head_dim, cfg.H}, 5, true});
  specs.push_back({"kv_norm", &MLAWeights::kv_norm, {m.kv_lora_rank}, 0, false});
  specs.push_back({"wkv_b",
                   &MLAWeights::wkv_b,
                   {NH * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank},
                   6,
                   true});
  specs.push_back({"wo", &MLAWeights::wo, {cfg.H, NH * m.v_head_dim}, 1, true});
  return specs;
}

std::vector<const Tensor*> weight_ptrs(const AttentionConfig& cfg, const MLAWeights& w) {
  std::vector<const Tensor*> out;
  for (const ParamSpec& s : param_specs(cfg)) out.push_back(&(w.*s.member));
  return out;
}

Device device_of_op(const char* op, const AttentionConfig& cfg, const MLAWeights& w,
                    std::initializer_list<const Tensor*> more) {
  std::vector<const Tensor*> all = weight_ptrs(cfg, w);
  all.insert(all.end(), more.begin(), more.end());
  Device d = Device::kCpu;
  bool first = true;
  for (const Tensor* t : all) {
    const Device td = backend_of(op, {t});
    MOERUN_REQUIRE(first || td == d, "{}: tensors on different devices", op);
    d = td;
    first = false;
  }
  return d;
}

}  // namespace

void check_mla_weights(const AttentionConfig& cfg, const MLAWeights& w) {
  cfg.validate();
  MOERUN_REQUIRE(cfg.kind == AttentionKind::kMLA, "MLA ops need an mla attention config");
  for (const ParamSpec& s : param_specs(cfg)) require_shape(w.*s.member, s.shape, s.name);
}

Tensor mla_forward(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x,
                   int64_t seq_len, MLASaved& saved) {
  check_mla_weights(cfg, w);
  MOERUN_REQUIRE(seq_len > 0, "attention needs T > 0 (got T={})", seq_len);
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(1) == cfg.H && x.dim(0) % seq_len == 0,
                 "attention input {} must be (B * {}, {})", x.shape_str(), seq_len, cfg.H);
  const Device d = device_of_op("mla_forward", cfg, w, {&x});
  Tensor out = Tensor::empty(x.shape(), DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::mla_forward(cfg, w, x, x.dim(0) / seq_len, seq_len, saved, out);
      return out;
    case Device::kCuda:
      break;
  }
  no_backend("mla_forward", d);
}

Tensor mla_backward(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x,
                    const MLASaved& saved, const Tensor& dout, MLAWeights& dw) {
  check_mla_weights(cfg, w);
  for (const ParamSpec& s : param_specs(cfg)) require_shape(dw.*s.member, s.shape, s.name);
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(0) == saved.B * saved.T && saved.B * saved.T > 0 &&
                     dout.shape() == x.shape(),
                 "attention backward: x {}, dout {} do not match the saved forward ({} x {})",
                 x.shape_str(), dout.shape_str(), saved.B, saved.T);
  const Device d = device_of_op("mla_backward", cfg, w, {&x, &dout});
  Tensor dx = Tensor::empty(x.shape(), DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::mla_backward(cfg, w, x, saved, dout, dw, dx);
      return dx;
    case Device::kCuda:
      break;
  }
  no_backend("mla_backward", d);
}

MLACache mla_start_cache(const AttentionConfig& cfg, int64_t batch, int64_t max_len,
                         MLADecodePath path) {
  cfg.validate();
  MOERUN_REQUIRE(batch > 0 && max_len > 0,
                 "decode cache needs batch > 0 and max_len > 0 (got {}, {})", batch, max_len);
  MLACache c;
  c.batch = batch;
  c.max_len = max_len;
  c.path = path;
  c.kv_latent = Tensor::zeros({batch, max_len, cfg.mla.kv_lora_rank});
  c.k_rope = Tensor::zeros({batch, max_len, cfg.mla.qk_rope_head_dim});
  return c;
}

Tensor mla_decode(const AttentionConfig& cfg, const MLAWeights& w, const Tensor& x, int64_t pos,
                  MLACache& cache) {
  check_mla_weights(cfg, w);
  MOERUN_REQUIRE(cache.batch > 0, "decode needs start_cache first");
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(1) == cfg.H && x.dim(0) > 0 && x.dim(0) % cache.batch == 0,
                 "decode input {} must be (batch {} * t, {})", x.shape_str(), cache.batch, cfg.H);
  const int64_t t = x.dim(0) / cache.batch;
  MOERUN_REQUIRE(pos == cache.len, "decode at position {} but the cache holds {} positions", pos,
                 cache.len);
  MOERUN_REQUIRE(pos + t <= cache.max_len,
                 "decode of positions [{}, {}) exceeds the cache's max_len {}", pos, pos + t,
                 cache.max_len);
  const Device d = device_of_op("mla_decode", cfg, w, {&x, &cache.kv_latent, &cache.k_rope});
  Tensor out = Tensor::empty(x.shape(), DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::mla_decode(cfg, w, x, pos, cache, out);
      cache.len = pos + t;
      return out;
    case Device::kCuda:
      break;
  }
  no_backend("mla_decode", d);
}

MLA::MLA(const AttentionConfig& cfg) : cfg_(cfg) {
  cfg_.validate();
  MOERUN_REQUIRE(cfg_.kind == AttentionKind::kMLA, "the MLA module needs --attention mla");
  for (const ParamSpec& s : param_specs(cfg_)) {
    w.*s.member = Tensor::zeros(s.shape);
    dw.*s.member = Tensor::zeros(s.shape);
  }
}

Tensor MLA::forward(const Tensor& x, int64_t seq_len) {
  saved_.x = x;
  return mla_forward(cfg_, w, x, seq_len, saved_.mla);
}

Tensor MLA::backward(const Tensor& dout) {
  MOERUN_REQUIRE(saved_.x.defined(), "MLA backward needs the saved state of a forward");
  return mla_backward(cfg_, w, saved_.x, saved_.mla, dout, dw);
}

void MLA::init(uint64_t seed, uint64_t stream, float std) {
  for (const ParamSpec& s : param_specs(cfg_)) {
    Tensor& t = w.*s.member;
    if (!s.is_matrix) {
      t.fill(1.0f);
      continue;
    }
    Rng rng(seed, stream + s.stream_offset);
    for (float& v : t.span<float>()) v = static_cast<float>(rng.normal() * std);
  }
}

void MLA::named_params(const std::string& prefix, std::vector<NamedParam>& out) {
  for (const ParamSpec& s : param_specs(cfg_))
    out.push_back({prefix + s.name, &(w.*s.member), &(dw.*s.member), false, s.is_matrix});
}

void MLA::start_cache(int64_t batch, int64_t max_len) {
  cache_ = mla_start_cache(cfg_, batch, max_len);
}

Tensor MLA::decode(const Tensor& x, int64_t pos) {
  return mla_decode(cfg_, w, x, pos, cache_);
}

int64_t MLA::cache_bytes() const {
  return cache_.bytes();
}

}  // namespace moerun
