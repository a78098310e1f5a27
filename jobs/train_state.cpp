// TrainState; see train_state.h.
#include "jobs/train_state.h"

#include "jobs/moe_options.h"

namespace moerun {

TrainState::TrainState(const TrainConfig& cfg, Topology& t, std::shared_ptr<io::TokenSource> train)
    : topo(t) {
  io::LoaderOptions lo;
  lo.seq_len = cfg.model.seq_len;
  lo.global_batch = cfg.global_batch;
  lo.micro_batch = cfg.micro_batch;
  lo.dp_rank = topo.world.rank();
  lo.dp_size = topo.world.size();
  lo.seed = cfg.seed;
  loader = std::make_unique<io::TokenLoader>(std::move(train), lo);
  ModelConfig mc = cfg.model;
  set_node_map(mc.moe, topo);  // the node of each EP rank, for --max-nodes-per-token
  model = std::make_unique<Model>(mc, topo.ep);
  model->init(cfg.seed);
  AdamWConfig ac;
  ac.beta1 = cfg.beta1;
  ac.beta2 = cfg.beta2;
  ac.weight_decay = cfg.weight_decay;
  if (cfg.zero == 1) {
    ZeroLayout z;
    z.param_buffer = model->param_buffer();
    z.grad_buffer = model->grad_buffer();
    z.dense_numel = model->dense_grads().numel();
    z.dense = &topo.world;
    z.expert = &topo.edp;
    optimizer = std::make_unique<Optimizer>(model->params(), ac, z);
  } else {
    optimizer = std::make_unique<Optimizer>(model->params(), ac);
  }
}

std::vector<io::CkptTensor> TrainState::checkpoint_tensors() {
  const int64_t R = topo.ep_size, r = topo.ep_rank();
  const bool expert_writer = topo.edp.rank() == 0;
  std::vector<io::CkptTensor> out;
  auto add = [&](const std::string& name, Tensor* t, bool expert) {
    io::CkptTensor c;
    c.name = name;
    c.local = t;
    c.global_shape = t->shape();
    if (expert) {
      c.kind = io::CkptTensor::Kind::kSharded;
      c.global_shape[0] = t->dim(0) * R;
      c.row_begin = t->dim(0) * r;
      c.write = expert_writer;
    }
    out.push_back(std::move(c));
  };
  // ZeRO-1: each rank writes and reads its own slice of the flattened moment at its global
  // offset (experts: behind the EP rank's first expert); the tensors on disk are the same.
  auto add_shard = [&](const NamedState& s, const NamedParam& p) {
    io::CkptTensor c;
    c.name = s.name;
    c.local = s.value;
    c.global_shape = p.value->shape();
    c.flat_begin = s.flat_begin;
    if (s.is_expert) {
      c.kind = io::CkptTensor::Kind::kSharded;
      c.global_shape[0] = p.value->dim(0) * R;
      c.flat_begin += p.value->numel() * r;
    }
    out.push_back(std::move(c));
  };
  const std::vector<NamedParam>& params = optimizer->params();
  const std::vector<NamedState> moments = optimizer->state();  // m, v per parameter
  for (size_t i = 0; i < params.size(); ++i) {
    add(params[i].name, params[i].value, params[i].is_expert);
    for (size_t k = 2 * i; k < 2 * i + 2; ++k) {
      if (moments[k].flat_begin >= 0)
        add_shard(moments[k], params[i]);
      else
        add(moments[k].name, moments[k].value, moments[k].is_expert);
    }
  }
  const std::vector<MoELayer*> moe = model->moe_layers();
  for (size_t l = 0; l < moe.size(); ++l)
    add(router_bias_name(model->config().first_k_dense + static_cast<int64_t>(l)),
        &moe[l]->params().bias, false);
  return out;
}

TrainMeta TrainState::meta(const TrainConfig& cfg) const {
  TrainMeta m;
  m.step = step;
  m.adamw_steps = optimizer->steps();
  m.loader = loader->state();
  m.world = topo.world.size();
  m.ep = topo.ep_size;
  m.seed = cfg.seed;
  m.model = cfg.model;
  m.config_ini = to_ini(cfg);
  return m;
}

void TrainState::restore(const TrainMeta& m) {
  step = m.step;
  optimizer->set_steps(m.adamw_steps);
  loader->restore(m.loader);
}

}  // namespace moerun
