// Token embedding: shape checks and backend choice, and the module.
#include "layers/embedding.h"

#include "layers/backend.h"
#include "runtime/check.h"

namespace moerun {

Tensor embedding_forward(const Tensor& table, const Tensor& ids) {
  MOERUN_REQUIRE(table.ndim() == 2 && ids.dtype() == DType::kI32,
                 "embedding needs a (V, H) table and int32 ids (got {} and {})", table.shape_str(),
                 to_string(ids.dtype()));
  const Device d = backend_of("embedding_forward", {&table, &ids});
  Tensor out = Tensor::empty({ids.numel(), table.dim(1)}, DType::kF32, d);
  switch (d) {
    case Device::kCpu:
      cpu::embedding_forward(table, ids, out);
      return out;
    case Device::kCuda:
      break;
  }
  no_backend("embedding_forward", d);
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  MOERUN_REQUIRE(dtable.ndim() == 2 && ids.dtype() == DType::kI32 &&
                     dout.shape() == std::vector<int64_t>({ids.numel(), dtable.dim(1)}),
                 "embedding backward: dout {} must be ({} ids, H of dtable {})", dout.shape_str(),
                 ids.numel(), dtable.shape_str());
  const Device d = backend_of("embedding_backward", {&ids, &dout, &dtable});
  switch (d) {
    case Device::kCpu:
      cpu::embedding_backward(ids, dout, dtable);
      return;
    case Device::kCuda:
      break;
  }
  no_backend("embedding_backward", d);
}

Embedding::Embedding(int64_t vocab, int64_t hidden)
    : weight(Tensor::zeros({vocab, hidden})), dweight(Tensor::zeros({vocab, hidden})) {}

Tensor Embedding::forward(const Tensor& ids) {
  saved_.ids = ids;
  return embedding_forward(weight, ids);
}

void Embedding::backward(const Tensor& dx) {
  embedding_backward(saved_.ids, dx, dweight);
}

void Embedding::named_params(const std::string& prefix, std::vector<NamedParam>& out) {
  out.push_back({prefix + "weight", &weight, &dweight, false, true});
}

}  // namespace moerun
