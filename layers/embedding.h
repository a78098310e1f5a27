// Token embedding: a gather of table rows by token id, its scatter-add backward, and the
// Embedding module that owns the table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layers/param.h"
#include "runtime/tensor.h"

namespace moerun {

// table (V, H), ids (any shape, N ids) int32 -> out (N, H): out[i] = table[ids[i]].
// Throws moerun::Error naming the first id outside [0, V) before writing anything, so a bad
// token file fails loudly instead of reading past the table.
Tensor embedding_forward(const Tensor& table, const Tensor& ids);

// dout (N, H) -> dtable (V, H), accumulated: dtable[ids[i]] += dout[i]. Repeated ids add up.
// The ids are checked again (cheap) because backward may run on ids the forward never saw.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

namespace cpu {
void embedding_forward(const Tensor& table, const Tensor& ids, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);
}  // namespace cpu

class Embedding {
 public:
  Embedding(int64_t vocab, int64_t hidden);
  // ids (n_seq, T) int32 -> x (n_seq * T, H). Saves the ids.
  Tensor forward(const Tensor& ids);
  // dx (N, H): accumulates dweight.
  void backward(const Tensor& dx);
  void named_params(const std::string& prefix, std::vector<NamedParam>& out);
  void drop_saved() { saved_ = {}; }

  Tensor weight, dweight;  // (V, H)

 private:
  struct Saved {
    Tensor ids;  // (n_seq, T) int32
  } saved_;
};

}  // namespace moerun
