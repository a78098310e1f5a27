// MLP module over the SwiGLU op.
#include "layers/mlp.h"

#include "layers/swiglu.h"

namespace moerun {

MLP::MLP(int64_t hidden, int64_t width)
    : w13(Tensor::zeros({2 * width, hidden})),
      dw13(Tensor::zeros({2 * width, hidden})),
      w2(Tensor::zeros({hidden, width})),
      dw2(Tensor::zeros({hidden, width})) {}

Tensor MLP::forward(const Tensor& x) {
  SwigluOut r = swiglu_forward(x, w13, w2);
  saved_.x = x;
  saved_.ab = r.ab;
  return r.out;
}

Tensor MLP::backward(const Tensor& dy) {
  return swiglu_backward(saved_.x, w13, w2, saved_.ab, dy, dw13, dw2);
}

void MLP::named_params(const std::string& prefix, std::vector<NamedParam>& out) {
  out.push_back({prefix + "w13", &w13, &dw13, false, true});
  out.push_back({prefix + "w2", &w2, &dw2, false, true});
}

}  // namespace moerun
