// Ops that move data without arithmetic (Flatten, ZeroPadding2D, Concatenate) and Add.
#include <algorithm>
#include <cstring>

#include "lowbit/ops.hpp"
#include "lowbit/simd.hpp"

namespace lowbit {
namespace {

struct Flatten : Op {
  Flatten(const std::vector<Shape>& in) {
    kind = "flatten";
    LB_CHECK(in.size() == 1, "Flatten: expected 1 input, got ", in.size());
    out_shape = {numel(in[0])};
  }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext&) override {
    std::memcpy(dst.data(), src[0]->data(), size_t(dst.size()) * 4);
  }
  void backward(const std::vector<const Tensor*>&, const Tensor&, const Tensor& dy,
                const std::vector<Tensor*>& dx) override {
    if (dx[0]) std::memcpy(dx[0]->data(), dy.data(), size_t(dy.size()) * 4);
  }
};

// padding = ((top, bottom), (left, right)) given as 4 ints, or 2 ints (sym. rows, cols), or 1.
struct ZeroPadding2D : Op {
  int64_t C, H, W, t, b, l, r;
  ZeroPadding2D(const Config& cfg, const std::vector<Shape>& in) {
    kind = "zero_padding2d";
    LB_CHECK(in.size() == 1 && in[0].size() == 3, "ZeroPadding2D: expected input shape (C, H, W)");
    C = in[0][0], H = in[0][1], W = in[0][2];
    auto it = cfg.ints.find("padding");
    std::vector<int64_t> p = it == cfg.ints.end() ? std::vector<int64_t>{1} : it->second;
    if (p.size() == 1) p = {p[0], p[0], p[0], p[0]};
    else if (p.size() == 2) p = {p[0], p[0], p[1], p[1]};
    LB_CHECK(p.size() == 4, "ZeroPadding2D: expected padding as 1, 2 or 4 integers, got ", p.size());
    t = p[0], b = p[1], l = p[2], r = p[3];
    LB_CHECK(t >= 0 && b >= 0 && l >= 0 && r >= 0, "ZeroPadding2D: expected padding >= 0");
    out_shape = {C, H + t + b, W + l + r};
  }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext&) override {
    dst.zero();
    const int64_t NC = src[0]->dim(0) * C, OH = out_shape[1], OW = out_shape[2];
    for (int64_t i = 0; i < NC; ++i)
      for (int64_t h = 0; h < H; ++h)
        std::memcpy(dst.data() + (i * OH + h + t) * OW + l, src[0]->data() + (i * H + h) * W, size_t(W) * 4);
  }
  void backward(const std::vector<const Tensor*>&, const Tensor&, const Tensor& dy,
                const std::vector<Tensor*>& dx) override {
    if (!dx[0]) return;
    const int64_t NC = dx[0]->dim(0) * C, OH = out_shape[1], OW = out_shape[2];
    for (int64_t i = 0; i < NC; ++i)
      for (int64_t h = 0; h < H; ++h)
        std::memcpy(dx[0]->data() + (i * H + h) * W, dy.data() + (i * OH + h + t) * OW + l, size_t(W) * 4);
  }
};

// Concatenate along channels (axis 1 of NCHW, or features of (N, F)).
struct Concatenate : Op {
  std::vector<int64_t> inner;  // per-sample size of each input
  Concatenate(const std::vector<Shape>& in) {
    kind = "concatenate";
    LB_CHECK(in.size() >= 2, "Concatenate: expected at least 2 inputs, got ", in.size());
    out_shape = in[0];
    out_shape[0] = 0;
    for (auto& s : in) {
      LB_CHECK(s.size() == in[0].size() && std::equal(s.begin() + 1, s.end(), in[0].begin() + 1),
               "Concatenate: inputs must match in all but the channel axis, got ", shape_str(in[0]), " and ",
               shape_str(s));
      out_shape[0] += s[0];
      inner.push_back(numel(s));
    }
  }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext&) override {
    const int64_t N = dst.dim(0), O = numel(out_shape);
    for (int64_t n = 0; n < N; ++n) {
      int64_t off = 0;
      for (size_t i = 0; i < src.size(); ++i) {
        std::memcpy(dst.data() + n * O + off, src[i]->data() + n * inner[i], size_t(inner[i]) * 4);
        off += inner[i];
      }
    }
  }
  void backward(const std::vector<const Tensor*>&, const Tensor& dst, const Tensor& dy,
                const std::vector<Tensor*>& dx) override {
    const int64_t N = dst.dim(0), O = numel(out_shape);
    for (int64_t n = 0; n < N; ++n) {
      int64_t off = 0;
      for (size_t i = 0; i < dx.size(); ++i) {
        if (dx[i]) std::memcpy(dx[i]->data() + n * inner[i], dy.data() + n * O + off, size_t(inner[i]) * 4);
        off += inner[i];
      }
    }
  }
};

LB_CLONES void add_run(const float* a, const float* b, float* y, int64_t n, bool relu) {
  if (relu)
    for (int64_t i = 0; i < n; ++i) {
      const float v = a[i] + b[i];
      y[i] = v > 0.f ? v : 0.f;
    }
  else
    for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

struct Add : Op {
  Add(const std::vector<Shape>& in) {
    kind = "add";
    LB_CHECK(in.size() >= 2, "Add: expected at least 2 inputs, got ", in.size());
    for (auto& s : in)
      LB_CHECK(s == in[0], "Add: expected inputs of equal shape, got ", shape_str(in[0]), " and ", shape_str(s));
    out_shape = in[0];
  }
  bool accepts_blocked() const override { return true; }  // the executor gives equal layouts
  bool can_fuse_relu() const override { return true; }
  // y = ((x0 + x1) + x2) ..., then max(y, 0) when fused: one pass for the first two
  // inputs, one more per further input; the same sums in the same order as unfused.
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext&) override {
    dst.blocked = src[0]->blocked;
    const int64_t n = dst.size(), chunk = 16384;
    float* y = dst.data();
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i0 = 0; i0 < n; i0 += chunk) {
      const int64_t m = std::min(chunk, n - i0);
      add_run(src[0]->data() + i0, src[1]->data() + i0, y + i0, m, fused_relu && src.size() == 2);
      for (size_t k = 2; k < src.size(); ++k)
        add_run(y + i0, src[k]->data() + i0, y + i0, m, fused_relu && k + 1 == src.size());
    }
  }
  void backward(const std::vector<const Tensor*>&, const Tensor&, const Tensor& dy,
                const std::vector<Tensor*>& dx) override {
    for (auto* d : dx)
      if (d) std::memcpy(d->data(), dy.data(), size_t(dy.size()) * 4);
  }
};

}  // namespace

std::unique_ptr<Op> make_conv2d(const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_dense(const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_pool2d(const std::string&, const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_batch_norm(const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_lrn(const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_activation(const std::string&, const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_dropout(const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_quantized(const std::string&, const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_quant_act(const Config&, const std::vector<Shape>&);
bool has_formats(const Config&);

// The one registry of op kinds (names as in the Python layer classes, snake_case).
std::unique_ptr<Op> make_op(const std::string& k, const Config& c, const std::vector<Shape>& in) {
  if ((k == "conv2d" || k == "dense") && has_formats(c)) return make_quantized(k, c, in);
  if (k == "conv2d") return make_conv2d(c, in);
  if (k == "dense") return make_dense(c, in);
  if (k == "quantize") return make_quant_act(c, in);
  if (k == "max_pool2d" || k == "avg_pool2d" || k == "global_avg_pool2d") return make_pool2d(k, c, in);
  if (k == "batch_norm") return make_batch_norm(c, in);
  if (k == "lrn") return make_lrn(c, in);
  if (k == "relu" || k == "tanh" || k == "sigmoid" || k == "hard_tanh" || k == "softmax" || k == "linear")
    return make_activation(k, c, in);
  if (k == "dropout") return make_dropout(c, in);
  if (k == "flatten") return std::make_unique<Flatten>(in);
  if (k == "zero_padding2d") return std::make_unique<ZeroPadding2D>(c, in);
  if (k == "concatenate") return std::make_unique<Concatenate>(in);
  if (k == "add") return std::make_unique<Add>(in);
  LB_CHECK(false, "unknown op kind '", k, "'");
  return nullptr;
}

}  // namespace lowbit
