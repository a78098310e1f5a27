// LMHeadLoss: chunked head + cross-entropy, forward and backward as two calls.
#include "layers/loss.h"

#include <algorithm>

#include "layers/cross_entropy.h"
#include "layers/lm_head.h"
#include "runtime/check.h"

namespace moerun {

LMHeadLoss::LMHeadLoss(int64_t vocab, int64_t hidden, int64_t chunk_rows,
                       int64_t max_saved_logits_bytes)
    : weight(Tensor::zeros({vocab, hidden})),
      dweight(Tensor::zeros({vocab, hidden})),
      chunk_rows_(chunk_rows),
      max_saved_logits_bytes_(max_saved_logits_bytes) {
  MOERUN_REQUIRE(chunk_rows > 0, "chunk_rows must be > 0 (got {})", chunk_rows);
}

double LMHeadLoss::forward(const Tensor& x, const Tensor& targets) {
  const int64_t V = weight.dim(0), H = weight.dim(1);
  MOERUN_REQUIRE(x.ndim() == 2 && x.dim(0) > 0 && x.dim(1) == H,
                 "LM head input must be (N > 0, {}), got {}", H, x.shape_str());
  const int64_t N = x.dim(0);
  MOERUN_REQUIRE(targets.numel() == N, "{} targets for {} rows", targets.numel(), N);
  const Tensor t = targets.reshape({N});
  const int64_t chunk = std::min(chunk_rows_, N);
  const bool keep = N * V * static_cast<int64_t>(sizeof(float)) <= max_saved_logits_bytes_;
  saved_ = {x, t, {}};
  Tensor scratch;  // one chunk's logits, reused when they are not kept
  double total = 0.0;
  for (int64_t i0 = 0; i0 < N; i0 += chunk) {
    const int64_t rows = std::min(chunk, N - i0);
    Tensor logits = lm_head_forward(x.view(i0 * H, {rows, H}), weight,
                                    keep || rows != chunk ? Tensor() : scratch);
    if (!keep && rows == chunk) scratch = logits;
    CrossEntropyOut ce = cross_entropy_forward(logits, t.view(i0, {rows}));
    total += ce.loss * static_cast<double>(rows);
    if (keep) saved_.chunks.push_back(std::move(ce));
  }
  return total / static_cast<double>(N);
}

Tensor LMHeadLoss::backward(float loss_scale) {
  MOERUN_REQUIRE(saved_.x.defined(), "LM head backward needs a forward first");
  const Tensor& x = saved_.x;
  const int64_t N = x.dim(0), H = x.dim(1);
  const int64_t chunk = std::min(chunk_rows_, N);
  Tensor dx = Tensor::empty({N, H}, DType::kF32, x.device());
  size_t c = 0;
  for (int64_t i0 = 0; i0 < N; i0 += chunk, ++c) {
    const int64_t rows = std::min(chunk, N - i0);
    const Tensor xc = x.view(i0 * H, {rows, H});
    const Tensor tc = saved_.targets.view(i0, {rows});
    // The same GEMM and softmax as forward: bit-identical exps when they were not kept.
    CrossEntropyOut ce = c < saved_.chunks.size()
                             ? saved_.chunks[c]
                             : cross_entropy_forward(lm_head_forward(xc, weight), tc);
    // The chunk's loss is a mean over its rows; its gradient is a share of the mean over all N.
    const float chunk_scale =
        static_cast<float>(static_cast<double>(loss_scale) * rows / static_cast<double>(N));
    const Tensor dlogits = cross_entropy_backward(ce.exps, ce.inv_sum, tc, chunk_scale);
    lm_head_backward(xc, weight, dlogits, dweight, dx.view(i0 * H, {rows, H}));
  }
  saved_.chunks.clear();  // consumed: they now hold the gradients
  return dx;
}

void LMHeadLoss::named_params(const std::string& prefix, std::vector<NamedParam>& out) {
  out.push_back({prefix + "weight", &weight, &dweight, false, true});
}

}  // namespace moerun
