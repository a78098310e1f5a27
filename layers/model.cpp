// Model: construction, initialisation, named parameters, and the forward pass with its mirrored
// backward (each block's backward calls run in the reverse order of its forward calls).
#include "layers/model.h"

#include <fmt/format.h>

#include "layers/embedding.h"
#include "layers/lm_head.h"
#include "layers/rmsnorm.h"
#include "layers/swiglu.h"
#include "runtime/check.h"
#include "runtime/rng.h"

namespace moerun {

void ModelConfig::validate(int ep_size) const {
  MOERUN_CONFIG_REQUIRE(vocab > 0, "--vocab must be > 0 (got {})", vocab);
  MOERUN_CONFIG_REQUIRE(vocab <= INT32_MAX, "--vocab must fit int32 token ids (got {})", vocab);
  MOERUN_CONFIG_REQUIRE(hidden > 0, "--hidden must be > 0 (got {})", hidden);
  MOERUN_CONFIG_REQUIRE(layers > 0, "--layers must be > 0 (got {})", layers);
  MOERUN_CONFIG_REQUIRE(heads > 0, "--heads must be > 0 (got {})", heads);
  MOERUN_CONFIG_REQUIRE(hidden % heads == 0, "--hidden ({}) must be divisible by --heads ({})",
                        hidden, heads);
  MOERUN_CONFIG_REQUIRE((hidden / heads) % 2 == 0,
                        "--hidden / --heads (head dim {}) must be even: RoPE rotates dim pairs",
                        hidden / heads);
  MOERUN_CONFIG_REQUIRE(seq_len > 0, "--seq-len must be > 0 (got {})", seq_len);
  MOERUN_CONFIG_REQUIRE(first_k_dense >= 0 && first_k_dense <= layers,
                        "--first-k-dense must be in [0, --layers = {}] (got {})", layers,
                        first_k_dense);
  MOERUN_CONFIG_REQUIRE(first_k_dense == 0 || dense_ffn > 0,
                        "--dense-ffn must be > 0 when --first-k-dense > 0 (got {})", dense_ffn);
  MOERUN_CONFIG_REQUIRE(init_std > 0, "--init-std must be > 0 (got {})", init_std);
  MOERUN_CONFIG_REQUIRE(norm_eps > 0, "--norm-eps must be > 0 (got {})", norm_eps);
  MOERUN_CONFIG_REQUIRE(rope_theta > 1, "--rope-theta must be > 1 (got {})", rope_theta);
  // A model with only dense blocks does not need (or check) the MoE options.
  if (first_k_dense < layers) {
    MOERUN_CONFIG_REQUIRE(moe.hidden == hidden,
                          "--hidden ({}) and the MoE layers' hidden size ({}) must be equal",
                          hidden, moe.hidden);
    moe.validate(ep_size);
  }
}

namespace {

const ModelConfig& validated(const ModelConfig& cfg, int ep_size) {
  cfg.validate(ep_size);
  return cfg;
}

// (Re)allocates t only when the shape changes, so steps of one shape reuse their buffers.
void ensure(Tensor& t, std::vector<int64_t> shape) {
  if (!t.defined() || t.shape() != shape) t = Tensor::empty(std::move(shape));
}

void fill_normal(Tensor& t, Rng rng, float std) {
  for (float& v : t.span<float>()) v = static_cast<float>(rng.normal() * std);
}

void add_into(Tensor& dst, const Tensor& src) {
  float* d = dst.f32();
  const float* s = src.f32();
  for (int64_t i = 0; i < dst.numel(); ++i) d[i] += s[i];
}

// Streams for the non-MoE tensors sit far above the ones MoELayer::init uses (0, 1, 2 and
// 1000 + 2 * expert), so no two tensors share a random stream even when seed + l == seed.
constexpr uint64_t kStreamBase = 1ULL << 40;
constexpr uint64_t kStreamsPerLayer = 16;

}  // namespace

Model::Model(const ModelConfig& cfg, const Comm& ep) : cfg_(validated(cfg, ep.size())), ep_(&ep) {
  const int64_t V = cfg_.vocab, H = cfg_.hidden, Fd = cfg_.dense_ffn;
  attn_cfg_.H = H;
  attn_cfg_.n_head = cfg_.heads;
  attn_cfg_.rope_theta = cfg_.rope_theta;
  attn_cfg_.validate();
  embed_ = Tensor::zeros({V, H});
  dembed_ = Tensor::zeros({V, H});
  norm_ = Tensor::zeros({H});
  dnorm_ = Tensor::zeros({H});
  lm_head_ = Tensor::zeros({V, H});
  dlm_head_ = Tensor::zeros({V, H});
  blocks_.resize(static_cast<size_t>(cfg_.layers));
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    Block& b = blocks_[static_cast<size_t>(l)];
    b.attn_norm = Tensor::zeros({H});
    b.dattn_norm = Tensor::zeros({H});
    b.wqkv = Tensor::zeros({3 * H, H});
    b.dwqkv = Tensor::zeros({3 * H, H});
    b.wo = Tensor::zeros({H, H});
    b.dwo = Tensor::zeros({H, H});
    b.ffn_norm = Tensor::zeros({H});
    b.dffn_norm = Tensor::zeros({H});
    if (cfg_.is_moe_layer(l)) {
      b.moe = std::make_unique<MoELayer>(cfg_.moe, *ep_);
    } else {
      b.w13 = Tensor::zeros({2 * Fd, H});
      b.dw13 = Tensor::zeros({2 * Fd, H});
      b.w2 = Tensor::zeros({H, Fd});
      b.dw2 = Tensor::zeros({H, Fd});
    }
  }
}

void Model::init(uint64_t seed) {
  const float std = cfg_.init_std;
  fill_normal(embed_, Rng(seed, kStreamBase + 0), std);
  fill_normal(lm_head_, Rng(seed, kStreamBase + 1), std);
  norm_.fill(1.0f);
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    Block& b = blocks_[static_cast<size_t>(l)];
    const uint64_t s = kStreamBase + kStreamsPerLayer * (1 + static_cast<uint64_t>(l));
    b.attn_norm.fill(1.0f);
    b.ffn_norm.fill(1.0f);
    fill_normal(b.wqkv, Rng(seed, s + 0), std);
    fill_normal(b.wo, Rng(seed, s + 1), std);
    if (b.moe) {
      b.moe->init(seed + static_cast<uint64_t>(l), std);
    } else {
      fill_normal(b.w13, Rng(seed, s + 2), std);
      fill_normal(b.w2, Rng(seed, s + 3), std);
    }
  }
}

std::vector<NamedParam> Model::params() {
  std::vector<NamedParam> out;
  auto add = [&out](std::string name, Tensor& value, Tensor& grad, bool is_expert) {
    out.push_back({std::move(name), &value, &grad, is_expert, value.ndim() >= 2});
  };
  add("embed.weight", embed_, dembed_, false);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Block& b = blocks_[l];
    const std::string p = fmt::format("layers.{}.", l);
    add(p + "attn_norm.weight", b.attn_norm, b.dattn_norm, false);
    add(p + "attn.wqkv", b.wqkv, b.dwqkv, false);
    add(p + "attn.wo", b.wo, b.dwo, false);
    add(p + "ffn_norm.weight", b.ffn_norm, b.dffn_norm, false);
    if (b.moe) {
      MoEParams& mp = b.moe->params();
      MoEGrads& mg = b.moe->grads();
      add(p + "moe.gate", mp.gate, mg.gate, false);
      add(p + "moe.w13", mp.w13, mg.w13, true);
      add(p + "moe.w2", mp.w2, mg.w2, true);
      if (mp.shared_w13.defined()) {
        add(p + "moe.shared_w13", mp.shared_w13, mg.shared_w13, false);
        add(p + "moe.shared_w2", mp.shared_w2, mg.shared_w2, false);
      }
    } else {
      add(p + "ffn.w13", b.w13, b.dw13, false);
      add(p + "ffn.w2", b.w2, b.dw2, false);
    }
  }
  add("norm.weight", norm_, dnorm_, false);
  add("lm_head.weight", lm_head_, dlm_head_, false);
  return out;
}

std::vector<MoELayer*> Model::moe_layers() {
  std::vector<MoELayer*> out;
  for (Block& b : blocks_)
    if (b.moe) out.push_back(b.moe.get());
  return out;
}

void Model::zero_grad() {
  for (NamedParam& p : params()) p.grad->zero();
}

double Model::forward_backward(const int32_t* tokens, const int32_t* targets, int64_t n_seq) {
  return run(tokens, targets, n_seq, true);
}

double Model::forward_loss(const int32_t* tokens, const int32_t* targets, int64_t n_seq) {
  return run(tokens, targets, n_seq, false);
}

void Model::block_forward(Block& b, int64_t n_seq, Tensor& out) {
  const int64_t T = cfg_.seq_len, N = n_seq * T, H = cfg_.hidden;
  ensure(b.xn1, {N, H});
  ensure(b.rstd1, {N});
  ensure(b.h, {N, H});
  ensure(b.xn2, {N, H});
  ensure(b.rstd2, {N});
  rmsnorm_forward(b.x.f32(), b.attn_norm.f32(), N, H, cfg_.norm_eps, b.xn1.f32(), b.rstd1.f32());
  // Attention handles one (sequence, head, query block) at a time internally.
  attention_forward(attn_cfg_, {b.wqkv.f32(), b.wo.f32()}, b.xn1.f32(), n_seq, T, b.att, b.h.f32());
  add_into(b.h, b.x);
  rmsnorm_forward(b.h.f32(), b.ffn_norm.f32(), N, H, cfg_.norm_eps, b.xn2.f32(), b.rstd2.f32());
  if (b.moe) {
    // seq_len lets the sequence-wise aux loss see sequence boundaries.
    Tensor y = b.moe->forward(b.xn2, T);
    out = y;  // take the MoE output's storage; the residual is added in place below
  } else {
    const int64_t Fd = cfg_.dense_ffn;
    ensure(b.ab, {N, 2 * Fd});
    ensure(out, {N, H});
    swiglu_forward(b.xn2.f32(), N, {b.w13.f32(), b.w2.f32(), H, Fd}, b.ab.f32(), out.f32());
  }
  add_into(out, b.h);
}

void Model::block_backward(Block& b, Tensor& dres) {
  const int64_t N = b.x.dim(0), H = cfg_.hidden;
  // FFN branch: out = h + FFN(RMSNorm(h)), so dL/dh = dres + RMSNorm'(FFN'(dres)).
  if (b.moe) {
    dxn_ = b.moe->backward(dres);
  } else {
    ensure(dxn_, {N, H});
    swiglu_backward(b.xn2.f32(), N, {b.w13.f32(), b.w2.f32(), H, cfg_.dense_ffn}, b.ab.f32(),
                    dres.f32(), nullptr, b.dw13.f32(), b.dw2.f32(), dxn_.f32(), nullptr);
  }
  rmsnorm_backward(b.h.f32(), b.ffn_norm.f32(), b.rstd2.f32(), dxn_.f32(), N, H, b.dffn_norm.f32(),
                   dtmp_.f32());
  add_into(dres, dtmp_);
  // Attention branch: h = x + Attn(RMSNorm(x)).
  ensure(dxn_, {N, H});
  AttentionGrads ag{b.dwqkv.f32(), b.dwo.f32()};
  attention_backward(attn_cfg_, {b.wqkv.f32(), b.wo.f32()}, b.xn1.f32(), b.att, dres.f32(), ag,
                     dxn_.f32());
  rmsnorm_backward(b.x.f32(), b.attn_norm.f32(), b.rstd1.f32(), dxn_.f32(), N, H,
                   b.dattn_norm.f32(), dtmp_.f32());
  add_into(dres, dtmp_);
}

double Model::run(const int32_t* tokens, const int32_t* targets, int64_t n_seq, bool backward) {
  MOERUN_REQUIRE(n_seq > 0, "n_seq must be > 0 (got {})", n_seq);
  MOERUN_REQUIRE(tokens != nullptr && targets != nullptr, "tokens and targets must not be null");
  const int64_t V = cfg_.vocab, H = cfg_.hidden, N = n_seq * cfg_.seq_len;

  // Forward. Block l writes its output into block l+1's input (the last one into x_out_).
  ensure(blocks_[0].x, {N, H});
  embedding_forward(embed_.f32(), V, H, tokens, N, blocks_[0].x.f32());
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Tensor& out = l + 1 < blocks_.size() ? blocks_[l + 1].x : x_out_;
    block_forward(blocks_[l], n_seq, out);
  }
  ensure(xf_, {N, H});
  ensure(rstd_f_, {N});
  rmsnorm_forward(x_out_.f32(), norm_.f32(), N, H, cfg_.norm_eps, xf_.f32(), rstd_f_.f32());

  // Loss (fused with the head's backward when training). The aux losses are already part of
  // each router's backward, with weight 1, so they only need adding to the reported loss.
  ensure(dres_, {N, H});
  ensure(dtmp_, {N, H});
  double loss =
      lm_head_cross_entropy(xf_.f32(), lm_head_.f32(), targets, N, H, V, 1.0f,
                            backward ? dlm_head_.f32() : nullptr, backward ? dtmp_.f32() : nullptr);
  for (Block& b : blocks_)
    if (b.moe) loss += b.moe->stats().aux_loss;
  if (!backward) return loss;

  // Backward, mirroring the forward. dres_ carries dL/d(residual stream).
  rmsnorm_backward(x_out_.f32(), norm_.f32(), rstd_f_.f32(), dtmp_.f32(), N, H, dnorm_.f32(),
                   dres_.f32());
  for (size_t l = blocks_.size(); l-- > 0;) block_backward(blocks_[l], dres_);
  embedding_backward(tokens, N, V, H, dres_.f32(), dembed_.f32());
  return loss;
}

}  // namespace moerun
