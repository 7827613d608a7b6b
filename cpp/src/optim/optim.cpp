// Update rules (g = gradient + weight_decay * w, the coupled L2 of PyTorch's SGD/Adam):
//   SGD:      v = momentum v + g;  w -= lr (nesterov ? g + momentum v : v)
//   Adam:     m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//             w -= lr * m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)          (Kingma & Ba 2015)
//   Adadelta: a = rho a + (1-rho) g^2;  u = g sqrt(d + eps)/sqrt(a + eps);
//             d = rho d + (1-rho) u^2;  w -= lr u                        (Zeiler 2012, Keras)
//   RMSprop:  a = rho a + (1-rho) g^2;  w -= lr g / (sqrt(a) + eps)     (Keras)
#include <cmath>

#include "lowbit/optim.hpp"
#include "lowbit/simd.hpp"


namespace lowbit {

double scheduled_lr(const ScheduleConfig& s, double lr, double epoch) {
  LB_CHECK(std::isfinite(epoch) && epoch >= 0, "learning-rate schedule: expected an epoch >= 0, got ", epoch);
  if (s.name == "constant") return lr;
  if (s.name == "step")
    return lr * std::pow(s.gamma, std::floor(epoch / double(std::max<int64_t>(s.step_size, 1))));
  if (s.name == "multistep") {
    int64_t k = 0;
    for (auto m : s.milestones) k += epoch >= double(m);
    return lr * std::pow(s.gamma, double(k));
  }
  if (s.name == "exponential") return lr * std::pow(s.gamma, epoch);
  if (s.name == "cosine") {
    const double t = double(std::max<int64_t>(s.t_max, 1)), e = std::min(epoch, t) / t;
    return s.min_lr + (lr - s.min_lr) * 0.5 * (1.0 + std::cos(M_PI * e));
  }
  LB_CHECK(false, "unknown learning-rate schedule '", s.name,
           "' (expected constant, step, multistep, exponential, cosine)");
  return lr;
}

Optimizer::Optimizer(OptimConfig c) : cfg(std::move(c)) {
  const auto& n = cfg.name;
  LB_CHECK(n == "sgd" || n == "adam" || n == "adadelta" || n == "rmsprop", "unknown optimizer '", n,
           "' (expected sgd, adam, adadelta, rmsprop)");
  LB_CHECK(cfg.lr > 0 && std::isfinite(cfg.lr), "optimizer: expected learning_rate > 0, got ", cfg.lr);
  LB_CHECK(cfg.momentum >= 0 && cfg.momentum < 1, "optimizer: expected momentum in [0, 1), got ", cfg.momentum);
  LB_CHECK(cfg.weight_decay >= 0, "optimizer: expected weight_decay >= 0, got ", cfg.weight_decay);
  LB_CHECK(!cfg.nesterov || cfg.momentum > 0, "SGD: nesterov requires momentum > 0");
  LB_CHECK(cfg.epsilon > 0, "optimizer: expected epsilon > 0, got ", cfg.epsilon);
}

namespace {

LB_CLONES void sgd(float* w, const float* g, float* v, int64_t n, float lr, float mu, float wd, bool nesterov) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i] + wd * w[i];
    if (v) {
      v[i] = mu * v[i] + gi;
      gi = nesterov ? gi + mu * v[i] : v[i];
    }
    w[i] -= lr * gi;
  }
}

LB_CLONES void adam(float* w, const float* g, float* m, float* v, int64_t n, float lr, float b1, float b2, float c1,
                    float c2, float eps, float wd) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i] + wd * w[i];
    m[i] = b1 * m[i] + (1 - b1) * gi;
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
  }
}

LB_CLONES void adadelta(float* w, const float* g, float* a, float* d, int64_t n, float lr, float rho, float eps,
                        float wd) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i] + wd * w[i];
    a[i] = rho * a[i] + (1 - rho) * gi * gi;
    float u = gi * std::sqrt(d[i] + eps) / std::sqrt(a[i] + eps);
    d[i] = rho * d[i] + (1 - rho) * u * u;
    w[i] -= lr * u;
  }
}

LB_CLONES void rmsprop(float* w, const float* g, float* a, int64_t n, float lr, float rho, float eps, float wd) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i] + wd * w[i];
    a[i] = rho * a[i] + (1 - rho) * gi * gi;
    w[i] -= lr * gi / (std::sqrt(a[i]) + eps);
  }
}

void bop(float* w, const float* g, float* m, int64_t n, float gamma, float tau) {
  for (int64_t i = 0; i < n; ++i) {
    m[i] = (1 - gamma) * m[i] + gamma * g[i];
    if (std::fabs(m[i]) > tau && ((m[i] > 0) == (w[i] > 0))) w[i] = -w[i];
  }
}

}  // namespace

int Optimizer::slots() const {
  return std::max(cfg.bop ? 1 : 0, cfg.name == "sgd" ? (cfg.momentum > 0 ? 1 : 0) : cfg.name == "rmsprop" ? 1 : 2);
}

void Optimizer::set_state(int64_t steps, std::vector<std::vector<Tensor>> slots_, const std::vector<Param*>& params) {
  LB_CHECK(steps >= 0, "optimizer state: expected a step count >= 0, got ", steps);
  LB_CHECK(slots_.empty() || slots_.size() == params.size(), "optimizer state: expected slots for ", params.size(),
           " trainable parameters, got ", slots_.size());
  for (size_t k = 0; k < slots_.size(); ++k) {
    LB_CHECK(int(slots_[k].size()) == slots(), "optimizer state: ", cfg.name, " keeps ", slots(),
             " slot(s) per parameter, got ", slots_[k].size(), " for parameter ", k);
    for (auto& s : slots_[k])
      LB_CHECK(s.shape == params[k]->value.shape, "optimizer state: parameter ", k, " (", params[k]->name,
               ") has shape ", shape_str(params[k]->value.shape), ", its slot ", shape_str(s.shape));
  }
  t = steps;
  state = std::move(slots_);
}

void Optimizer::step(const std::vector<Param*>& params, double lr_d) {
  const int slots = this->slots();
  if (state.size() != params.size()) {
    state.assign(params.size(), {});
    for (size_t k = 0; k < params.size(); ++k)
      for (int s = 0; s < slots; ++s) {
        state[k].emplace_back(params[k]->value.shape);
        state[k].back().zero();
      }
  }
  ++t;
  const float lr = float(lr_d), wd = float(cfg.weight_decay), eps = float(cfg.epsilon);
  const float c1 = float(1 - std::pow(cfg.beta_1, double(t))), c2 = float(1 - std::pow(cfg.beta_2, double(t)));
#pragma omp parallel for schedule(static)
  for (size_t k = 0; k < params.size(); ++k) {
    Param& p = *params[k];
    ++p.version;
    float *w = p.value.data(), *g = p.grad.data();
    const int64_t n = p.value.size();
    auto& st = state[k];
    if (cfg.bop && p.binary)
      bop(w, g, st[0].data(), n, float(cfg.bop_gamma), float(cfg.bop_threshold));
    else if (cfg.name == "sgd")
      sgd(w, g, slots ? st[0].data() : nullptr, n, lr, float(cfg.momentum), wd, cfg.nesterov);
    else if (cfg.name == "adam")
      adam(w, g, st[0].data(), st[1].data(), n, lr, float(cfg.beta_1), float(cfg.beta_2), c1, c2, eps, wd);
    else if (cfg.name == "adadelta")
      adadelta(w, g, st[0].data(), st[1].data(), n, lr, float(cfg.rho), eps, wd);
    else
      rmsprop(w, g, st[0].data(), n, lr, float(cfg.rho), eps, wd);
    if (p.clip > 0)  // weight_clip constraint on the latent weights
      for (int64_t i = 0; i < n; ++i) w[i] = std::min(std::max(w[i], -p.clip), p.clip);
  }
}

}  // namespace lowbit
