// Activations, Softmax and Dropout: simple loops, OpenMP-parallel with a static
// schedule (so results do not depend on timing) and compiled for several ISAs with
// run-time dispatch (target_clones) where the loop is hot.
#include <cmath>

#include "lowbit/ops.hpp"
#include "lowbit/simd.hpp"
#include "lowbit/rng.hpp"


namespace lowbit {
namespace {

enum class Act { relu, tanh_, sigmoid, hard_tanh, linear };

LB_CLONES void act_fwd(Act a, const float* x, float* y, int64_t n, float lo, float hi) {
  switch (a) {
    case Act::relu:
#pragma omp parallel for schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
      break;
    case Act::tanh_:
#pragma omp parallel for schedule(static) if (n > 8192)
      for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
      break;
    case Act::sigmoid:
#pragma omp parallel for schedule(static) if (n > 8192)
      for (int64_t i = 0; i < n; ++i) y[i] = 1.f / (1.f + std::exp(-x[i]));
      break;
    case Act::hard_tanh:
#pragma omp parallel for schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; ++i) y[i] = std::min(std::max(x[i], lo), hi);
      break;
    case Act::linear:
      std::memcpy(y, x, size_t(n) * 4);
      break;
  }
}

// dy/dx written in terms of what is cheapest to keep: x for relu/hard_tanh, y for tanh/sigmoid.
// relu'(0) = 0 and hard_tanh'(+-1) = 1 (PyTorch's conventions).
LB_CLONES void act_bwd(Act a, const float* x, const float* y, const float* dy, float* dx, int64_t n, float lo,
                       float hi) {
  switch (a) {
    case Act::relu:
#pragma omp parallel for schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : 0.f;
      break;
    case Act::tanh_:
#pragma omp parallel for schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (1.f - y[i] * y[i]);
      break;
    case Act::sigmoid:
#pragma omp parallel for schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (1.f - y[i]);
      break;
    case Act::hard_tanh:
#pragma omp parallel for schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; ++i) dx[i] = (x[i] >= lo && x[i] <= hi) ? dy[i] : 0.f;
      break;
    case Act::linear:
      std::memcpy(dx, dy, size_t(n) * 4);
      break;
  }
}

struct Activation : Op {
  Act a;
  float lo = -1.f, hi = 1.f;
  Activation(const std::string& name, const Config& cfg, const std::vector<Shape>& in) {
    kind = name;
    LB_CHECK(in.size() == 1, name, ": expected 1 input, got ", in.size());
    if (name == "relu") a = Act::relu;
    else if (name == "tanh") a = Act::tanh_;
    else if (name == "sigmoid") a = Act::sigmoid;
    else if (name == "linear") a = Act::linear;
    else {
      a = Act::hard_tanh;
      lo = float(cfg.f("min_val", -1.0));
      hi = float(cfg.f("max_val", 1.0));
      LB_CHECK(lo < hi, "HardTanh: expected min_val < max_val, got ", lo, " and ", hi);
    }
    out_shape = in[0];
  }
  bool accepts_blocked() const override { return true; }  // elementwise: any layout
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext&) override {
    dst.blocked = src[0]->blocked;
    act_fwd(a, src[0]->data(), dst.data(), dst.size(), lo, hi);
  }
  void backward(const std::vector<const Tensor*>& src, const Tensor& dst, const Tensor& dy,
                const std::vector<Tensor*>& dx) override {
    if (dx[0]) act_bwd(a, src[0]->data(), dst.data(), dy.data(), dx[0]->data(), dy.size(), lo, hi);
  }
};

// Softmax over the features of a flat (N, F) input, max-subtracted for stability.
// Backward: dx = y * (dy - sum(dy * y)).
struct Softmax : Op {
  Softmax(const std::vector<Shape>& in) {
    kind = "softmax";
    LB_CHECK(in.size() == 1 && in[0].size() == 1, "Softmax: expected a flat input (features,), got ",
             in.empty() ? std::string("nothing") : shape_str(in[0]));
    out_shape = in[0];
  }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext&) override {
    const int64_t N = dst.dim(0), F = dst.dim(1);
    for (int64_t n = 0; n < N; ++n) {
      const float* x = src[0]->data() + n * F;
      float* y = dst.data() + n * F;
      float m = x[0];
      for (int64_t f = 1; f < F; ++f) m = std::max(m, x[f]);
      double s = 0;
      for (int64_t f = 0; f < F; ++f) s += (y[f] = std::exp(x[f] - m));
      float inv = float(1.0 / s);
      for (int64_t f = 0; f < F; ++f) y[f] *= inv;
    }
  }
  void backward(const std::vector<const Tensor*>&, const Tensor& dst, const Tensor& dy,
                const std::vector<Tensor*>& dx) override {
    if (!dx[0]) return;
    const int64_t N = dst.dim(0), F = dst.dim(1);
    for (int64_t n = 0; n < N; ++n) {
      const float *y = dst.data() + n * F, *g = dy.data() + n * F;
      double s = 0;
      for (int64_t f = 0; f < F; ++f) s += double(g[f]) * y[f];
      float* o = dx[0]->data() + n * F;
      for (int64_t f = 0; f < F; ++f) o[f] = y[f] * (g[f] - float(s));
    }
  }
};

// Inverted dropout: keep with probability 1 - rate and scale by 1 / (1 - rate).
// The mask is a pure function of (seed, step, layer, element): nothing to store, and
// the same seed replays the same masks.
struct Dropout : Op {
  float rate;
  uint64_t salt;
  Dropout(const Config& cfg, const std::vector<Shape>& in) {
    kind = "dropout";
    LB_CHECK(in.size() == 1, "Dropout: expected 1 input, got ", in.size());
    rate = float(cfg.f("rate", 0.5));
    LB_CHECK(rate >= 0.f && rate < 1.f, "Dropout: expected rate in [0, 1), got ", rate);
    salt = uint64_t(cfg.i("node_id", 0));
    out_shape = in[0];
  }
  uint64_t stream(const StepContext& c) const { return (c.step << 16) ^ (salt * 0x9E3779B97F4A7C15ull); }
  void apply(const float* x, float* y, int64_t n, const StepContext& c) const {
    const float scale = 1.f / (1.f - rate);
    const uint64_t s = stream(c);
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; ++i) y[i] = uniform01(c.seed, s, uint64_t(i)) < rate ? 0.f : x[i] * scale;
  }
  StepContext last_;
  bool accepts_blocked() const override { return true; }  // the mask is per stored element
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext& ctx) override {
    dst.blocked = src[0]->blocked;
    if (!ctx.training || rate == 0.f) {
      std::memcpy(dst.data(), src[0]->data(), size_t(dst.size()) * 4);
      last_ = ctx;
      last_.training = false;
      return;
    }
    last_ = ctx;
    apply(src[0]->data(), dst.data(), dst.size(), ctx);
  }
  void backward(const std::vector<const Tensor*>&, const Tensor&, const Tensor& dy,
                const std::vector<Tensor*>& dx) override {
    if (!dx[0]) return;
    if (!last_.training || rate == 0.f) std::memcpy(dx[0]->data(), dy.data(), size_t(dy.size()) * 4);
    else apply(dy.data(), dx[0]->data(), dy.size(), last_);
  }
};

}  // namespace

std::unique_ptr<Op> make_activation(const std::string& k, const Config& c, const std::vector<Shape>& in) {
  if (k == "softmax") return std::make_unique<Softmax>(in);
  return std::make_unique<Activation>(k, c, in);
}
std::unique_ptr<Op> make_dropout(const Config& c, const std::vector<Shape>& in) {
  return std::make_unique<Dropout>(c, in);
}

}  // namespace lowbit
