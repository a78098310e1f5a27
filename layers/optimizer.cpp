// Optimizer: AdamW and its moments; see optimizer.h.
#include "layers/optimizer.h"

#include <fmt/format.h>

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

void Optimizer::step(double lr, double grad_scale) {
  std::vector<AdamWParam> ap;
  ap.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const NamedParam& p = params_[i];
    ap.push_back(AdamWParam{p.value->span<float>(), p.grad->span<float>(), m_[i].span<float>(),
                            v_[i].span<float>(),
                            p.is_matrix ? WeightDecay::kApply : WeightDecay::kNone});
  }
  adamw_.step(ap, lr, grad_scale);
}

std::vector<NamedState> Optimizer::state() {
  std::vector<NamedState> out;
  out.reserve(2 * params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back({moment_name('m', params_[i].name), &m_[i], params_[i].is_expert});
    out.push_back({moment_name('v', params_[i].name), &v_[i], params_[i].is_expert});
  }
  return out;
}

std::string Optimizer::moment_name(char moment, const std::string& param) {
  return fmt::format("optim.{}.{}", moment, param);
}

}  // namespace moerun
