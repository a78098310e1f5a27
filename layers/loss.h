// LMHeadLoss: the untied LM head and the cross-entropy as one module, chunked by rows so that
// at most chunk_rows x V logits are formed at a time (at V = 100k and N = 16k rows the full
// logits would be 6.4 GB). Forward returns the loss; backward, a separate call, gives dx and
// accumulates dweight. Forward keeps each chunk's softmax numerators when all of them fit
// max_saved_logits_bytes; otherwise backward recomputes them (one more head GEMM and softmax,
// bit-identical).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/cross_entropy.h"
#include "layers/param.h"
#include "runtime/tensor.h"

namespace moerun {

class LMHeadLoss {
 public:
  static constexpr int64_t kMaxSavedLogitsBytes = int64_t{256} << 20;

  LMHeadLoss(int64_t vocab, int64_t hidden, int64_t chunk_rows = 1024,
             int64_t max_saved_logits_bytes = kMaxSavedLogitsBytes);
  // x (N, H), targets (N) int32 -> mean cross-entropy over the N rows. Saves x, the targets and
  // (when they fit) the logits.
  double forward(const Tensor& x, const Tensor& targets);
  // -> dx (N, H) for loss_scale * the mean loss; accumulates dweight.
  Tensor backward(float loss_scale = 1.0f);
  void named_params(const std::string& prefix, std::vector<NamedParam>& out);
  void drop_saved() { saved_ = {}; }

  Tensor weight, dweight;  // (V, H)

 private:
  int64_t chunk_rows_;
  int64_t max_saved_logits_bytes_;
  struct Saved {
    Tensor x;                             // (N, H)
    Tensor targets;                       // (N) int32
    std::vector<CrossEntropyOut> chunks;  // per chunk: softmax numerators (rows, V) and
                                          // normalisers, or none kept: backward recomputes
  } saved_;
};

}  // namespace moerun
