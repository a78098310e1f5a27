// Model: construction, initialisation, flat buffers, named parameters, and the forward pass with
// its mirrored backward (each block's backward calls run in the reverse order of its forward's).
#include "layers/model.h"

#include <fmt/format.h>

#include <algorithm>

#include "layers/add.h"
#include "layers/lm_head.h"
#include "layers/swiglu.h"
#include "runtime/check.h"
#include "runtime/rng.h"

namespace moerun {

Recompute parse_recompute(const std::string& s) {
  if (s == "none") return Recompute::kNone;
  if (s == "moe") return Recompute::kMoE;
  if (s == "full") return Recompute::kFull;
  MOERUN_CONFIG_REQUIRE(false, "--recompute must be none, moe or full (got '{}')", s);
  return Recompute::kNone;
}

std::string to_string(Recompute r) {
  switch (r) {
    case Recompute::kNone:
      return "none";
    case Recompute::kMoE:
      return "moe";
    case Recompute::kFull:
      return "full";
  }
  return "?";
}

void ModelConfig::validate(int ep_size) const {
  MOERUN_CONFIG_REQUIRE(vocab > 0, "--vocab must be > 0 (got {})", vocab);
  MOERUN_CONFIG_REQUIRE(vocab <= INT32_MAX, "--vocab must fit int32 token ids (got {})", vocab);
  MOERUN_CONFIG_REQUIRE(hidden > 0, "--hidden must be > 0 (got {})", hidden);
  MOERUN_CONFIG_REQUIRE(layers > 0, "--layers must be > 0 (got {})", layers);
  MOERUN_CONFIG_REQUIRE(heads > 0, "--heads must be > 0 (got {})", heads);
  if (attention == AttentionKind::kMHA) {
    MOERUN_CONFIG_REQUIRE(hidden % heads == 0, "--hidden ({}) must be divisible by --heads ({})",
                          hidden, heads);
    MOERUN_CONFIG_REQUIRE((hidden / heads) % 2 == 0,
                          "--hidden / --heads (head dim {}) must be even: RoPE rotates dim pairs",
                          hidden / heads);
    MOERUN_CONFIG_REQUIRE(!rope_scaling.yarn,
                          "--rope-scaling yarn needs --attention mla (MHA has no YaRN)");
  } else {
    // MLA's head sizes are its own options; H need not divide by the heads.
    MOERUN_CONFIG_REQUIRE(mla.q_lora_rank >= 0, "--q-lora-rank must be >= 0 (got {})",
                          mla.q_lora_rank);
    MOERUN_CONFIG_REQUIRE(mla.kv_lora_rank > 0,
                          "--kv-lora-rank must be > 0 with --attention mla "
                          "(got {})",
                          mla.kv_lora_rank);
    MOERUN_CONFIG_REQUIRE(mla.qk_nope_head_dim > 0,
                          "--qk-nope-head-dim must be > 0 with --attention mla (got {})",
                          mla.qk_nope_head_dim);
    MOERUN_CONFIG_REQUIRE(
        mla.qk_rope_head_dim > 0 && mla.qk_rope_head_dim % 2 == 0,
        "--qk-rope-head-dim must be even and > 0: RoPE rotates dim pairs (got {})",
        mla.qk_rope_head_dim);
    MOERUN_CONFIG_REQUIRE(mla.v_head_dim > 0,
                          "--v-head-dim must be > 0 with --attention mla (got {})", mla.v_head_dim);
    if (rope_scaling.yarn) {
      const RopeScaling& r = rope_scaling;
      MOERUN_CONFIG_REQUIRE(r.factor >= 1, "--rope-scaling-factor must be >= 1 (got {})", r.factor);
      MOERUN_CONFIG_REQUIRE(r.original_max_position > 0,
                            "--rope-original-max-position must be > 0 (got {})",
                            r.original_max_position);
      MOERUN_CONFIG_REQUIRE(r.beta_slow > 0 && r.beta_fast > r.beta_slow,
                            "--rope-beta-fast ({}) must be > --rope-beta-slow ({}) > 0",
                            r.beta_fast, r.beta_slow);
      MOERUN_CONFIG_REQUIRE(r.mscale >= 0 && r.mscale_all_dim >= 0,
                            "--rope-mscale ({}) and --rope-mscale-all-dim ({}) must be >= 0",
                            r.mscale, r.mscale_all_dim);
    }
  }
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

AttentionConfig attention_config(const ModelConfig& cfg) {
  AttentionConfig a;
  a.H = cfg.hidden;
  a.n_head = cfg.heads;
  a.rope_theta = cfg.rope_theta;
  a.kind = cfg.attention;
  a.mla = cfg.mla;
  a.rope_scaling = cfg.rope_scaling;
  a.norm_eps = cfg.norm_eps;
  a.validate();
  return a;
}

void fill_normal(Tensor& t, Rng rng, float std) {
  for (float& v : t.span<float>()) v = static_cast<float>(rng.normal() * std);
}

// Streams for the non-MoE tensors sit far above the ones MoELayer::init uses (0, 1, 2 and
// 1000 + 2 * expert), so no two tensors share a random stream even when seed + l == seed.
constexpr uint64_t kStreamBase = 1ULL << 40;
constexpr uint64_t kStreamsPerLayer = 16;
constexpr int64_t kAlignFloats = 16;  // 64 bytes

}  // namespace

Block::Block(const ModelConfig& cfg, const AttentionConfig& attn_cfg, int64_t layer, const Comm& ep)
    : attn_norm(cfg.hidden, cfg.norm_eps),
      attn(make_attention(attn_cfg)),
      ffn_norm(cfg.hidden, cfg.norm_eps),
      seq_len_(cfg.seq_len),
      norm_eps_(cfg.norm_eps),
      recompute_(cfg.recompute) {
  if (cfg.is_moe_layer(layer)) {
    moe = std::make_unique<MoELayer>(cfg.moe, ep);
    // Both modes rebuild the expert pre-activations inside the MoE backward, from the rows the
    // forward (kMoE) or the block's recompute (kFull) dispatched.
    moe->set_recompute_ffn(recompute_ != Recompute::kNone);
  } else {
    mlp = std::make_unique<MLP>(cfg.hidden, cfg.dense_ffn);
  }
}

Tensor Block::forward(const Tensor& x) {
  Tensor h = attn->forward(attn_norm.forward(x), seq_len_);
  add_into(h, x);
  // seq_len lets the MoE's sequence-wise aux loss see sequence boundaries.
  const Tensor xn2 = ffn_norm.forward(h);
  Tensor out = moe ? moe->forward(xn2, seq_len_) : mlp->forward(xn2);
  add_into(out, h);
  if (recompute_ == Recompute::kFull) {
    saved_x_ = x;
    drop_recomputable();
  }
  return out;
}

void Block::recompute_forward() {
  MOERUN_REQUIRE(saved_x_.defined(), "block recompute without a saved block input");
  // The same calls on the same input as forward, so every saved activation is bitwise the one
  // the first forward saved.
  Tensor h = attn->forward(attn_norm.forward(saved_x_), seq_len_);
  add_into(h, saved_x_);
  const Tensor xn2 = ffn_norm.forward(h);
  if (moe)
    moe->recompute(xn2);
  else
    mlp->forward(xn2);
}

Tensor Block::backward(const Tensor& dout) {
  if (recompute_ == Recompute::kFull) recompute_forward();
  // FFN branch: out = h + FFN(RMSNorm(h)), so dL/dh = dout + RMSNorm'(FFN'(dout)).
  Tensor dh = ffn_norm.backward(moe ? moe->backward(dout) : mlp->backward(dout));
  add_into(dh, dout);
  // Attention branch: h = x + Attn(RMSNorm(x)).
  Tensor dx = attn_norm.backward(attn->backward(dh));
  add_into(dx, dh);
  // With recomputation, what this block's backward used is freed now, not at the next forward,
  // so the blocks still waiting for their backward do not stack up on it.
  if (recompute_ == Recompute::kFull) {
    drop_recomputable();
    saved_x_ = {};
  } else if (recompute_ == Recompute::kMoE && moe) {
    moe->drop_recomputable();
  }
  return dx;
}

Tensor Block::decode(const Tensor& x, int64_t pos) {
  Tensor h = attn->decode(rmsnorm_forward(x, attn_norm.weight, norm_eps_).y, pos);
  add_into(h, x);
  const Tensor xn2 = rmsnorm_forward(h, ffn_norm.weight, norm_eps_).y;
  Tensor out = moe ? moe->infer(xn2) : swiglu_forward(xn2, mlp->w13, mlp->w2).out;
  add_into(out, h);
  return out;
}

void Block::drop_recomputable() {
  attn_norm.drop_saved();
  attn->drop_saved();
  ffn_norm.drop_saved();
  if (moe) moe->drop_recomputable();
  if (mlp) mlp->drop_saved();
}

void Block::named_params(const std::string& prefix, std::vector<NamedParam>& out) {
  attn_norm.named_params(prefix + "attn_norm.", out);
  attn->named_params(prefix + "attn.", out);
  ffn_norm.named_params(prefix + "ffn_norm.", out);
  if (moe)
    moe->named_params(prefix + "moe.", out);
  else
    mlp->named_params(prefix + "ffn.", out);
}

void Block::drop_saved() {
  attn_norm.drop_saved();
  attn->drop_saved();
  ffn_norm.drop_saved();
  if (moe) moe->drop_saved();
  if (mlp) mlp->drop_saved();
  saved_x_ = {};
}

Model::Model(const ModelConfig& cfg, const Comm& ep)
    : cfg_(validated(cfg, ep.size())),
      ep_(&ep),
      attn_cfg_(attention_config(cfg_)),
      embed_(cfg_.vocab, cfg_.hidden),
      norm_(cfg_.hidden, cfg_.norm_eps),
      head_(cfg_.vocab, cfg_.hidden) {
  blocks_.reserve(static_cast<size_t>(cfg_.layers));
  for (int64_t l = 0; l < cfg_.layers; ++l) blocks_.emplace_back(cfg_, attn_cfg_, l, *ep_);
  bind_flat_buffers();
}

void Model::bind_flat_buffers() {
  std::vector<NamedParam> ps = params();
  std::vector<int64_t> offset(ps.size());
  int64_t n = 0;
  for (bool expert : {false, true}) {
    if (expert) dense_numel_ = n;
    for (size_t i = 0; i < ps.size(); ++i) {
      if (ps[i].is_expert != expert) continue;
      offset[i] = n;
      n += (ps[i].value->numel() + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
    }
  }
  param_buffer_ = Tensor::zeros({n});
  grad_buffer_ = Tensor::zeros({n});
  for (size_t i = 0; i < ps.size(); ++i) {
    Tensor value = param_buffer_.view(offset[i], ps[i].value->shape());
    const auto old = ps[i].value->span<float>();
    std::copy(old.begin(), old.end(), value.f32());
    *ps[i].value = value;
    *ps[i].grad = grad_buffer_.view(offset[i], ps[i].grad->shape());
  }
}

void Model::init(uint64_t seed) {
  const float std = cfg_.init_std;
  fill_normal(embed_.weight, Rng(seed, kStreamBase + 0), std);
  fill_normal(head_.weight, Rng(seed, kStreamBase + 1), std);
  norm_.weight.fill(1.0f);
  for (int64_t l = 0; l < cfg_.layers; ++l) {
    Block& b = blocks_[static_cast<size_t>(l)];
    const uint64_t s = kStreamBase + kStreamsPerLayer * (1 + static_cast<uint64_t>(l));
    b.attn_norm.weight.fill(1.0f);
    b.ffn_norm.weight.fill(1.0f);
    b.attn->init(seed, s, std);  // streams s, s + 1
    if (b.moe) {
      b.moe->init(seed + static_cast<uint64_t>(l), std);
    } else {
      fill_normal(b.mlp->w13, Rng(seed, s + 2), std);
      fill_normal(b.mlp->w2, Rng(seed, s + 3), std);
    }
  }
}

std::vector<NamedParam> Model::params() {
  std::vector<NamedParam> out;
  embed_.named_params("embed.", out);
  for (size_t l = 0; l < blocks_.size(); ++l)
    blocks_[l].named_params(fmt::format("layers.{}.", l), out);
  norm_.named_params("norm.", out);
  head_.named_params("lm_head.", out);
  return out;
}

std::vector<MoELayer*> Model::moe_layers() {
  std::vector<MoELayer*> out;
  for (Block& b : blocks_)
    if (b.moe) out.push_back(b.moe.get());
  return out;
}

void Model::drop_saved() {
  embed_.drop_saved();
  for (Block& b : blocks_) b.drop_saved();
  norm_.drop_saved();
  head_.drop_saved();
  saved_ = {};
}

double Model::forward(const Tensor& tokens, const Tensor& targets) {
  MOERUN_REQUIRE(tokens.ndim() == 2 && tokens.dim(0) > 0 && tokens.dim(1) == cfg_.seq_len &&
                     targets.shape() == tokens.shape(),
                 "tokens {} and targets {} must be (n_seq > 0, seq_len = {})", tokens.shape_str(),
                 targets.shape_str(), cfg_.seq_len);
  Tensor x = embed_.forward(tokens);
  for (Block& b : blocks_) x = b.forward(x);
  saved_.xf = norm_.forward(x);
  // The aux losses' gradients are part of each router's backward (weight 1), so they only need
  // adding to the reported loss.
  double loss = head_.forward(saved_.xf, targets);
  for (Block& b : blocks_)
    if (b.moe) loss += b.moe->stats().aux_loss;
  return loss;
}

void Model::backward() {
  // Mirrors forward; dres carries dL/d(residual stream).
  Tensor dres = norm_.backward(head_.backward());
  for (size_t l = blocks_.size(); l-- > 0;) dres = blocks_[l].backward(dres);
  embed_.backward(dres);
}

void Model::start_cache(int64_t batch, int64_t max_len) {
  MOERUN_REQUIRE(batch > 0 && max_len > 0 && max_len <= cfg_.seq_len,
                 "a generation cache needs batch > 0 and 0 < max_len <= seq_len = {} (got {}, {})",
                 cfg_.seq_len, batch, max_len);
  for (Block& b : blocks_) b.attn->start_cache(batch, max_len);
  cache_batch_ = batch;
}

Tensor Model::decode(const Tensor& tokens, int64_t pos) {
  MOERUN_REQUIRE(cache_batch_ > 0, "Model::decode before start_cache");
  MOERUN_REQUIRE(tokens.ndim() == 2 && tokens.dim(0) == cache_batch_ && tokens.dim(1) > 0,
                 "decode tokens {} must be (batch = {}, t > 0)", tokens.shape_str(), cache_batch_);
  Tensor x = embedding_forward(embed_.weight, tokens);
  for (Block& b : blocks_) x = b.decode(x, pos);
  return lm_head_forward(rmsnorm_forward(x, norm_.weight, cfg_.norm_eps).y, head_.weight);
}

int64_t Model::cache_bytes() const {
  int64_t n = 0;
  for (const Block& b : blocks_) n += b.attn->cache_bytes();
  return n;
}

}  // namespace moerun
