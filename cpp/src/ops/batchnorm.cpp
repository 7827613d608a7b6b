// BatchNormalization over the channel axis (axis 1 of NCHW, or features of (N, F)),
// on oneDNN batch normalization. Training normalises with the batch statistics and
// updates the running ones: moving = momentum * moving + (1 - momentum) * batch, with
// the unbiased batch variance (as TensorFlow's fused kernel and PyTorch). Inference
// uses the running statistics. Keras defaults: momentum 0.99, epsilon 1e-3.
#include "lowbit/dnnl_util.hpp"
#include "lowbit/ops.hpp"

namespace lowbit {
namespace {

using namespace dnnl;

struct BatchNorm : Op {
  Shape in_;
  int64_t C, S;  // channels, spatial size per channel
  float eps, momentum;
  Tensor mean_, var_;  // batch statistics kept for backward
  // The primitives run on a channel-blocked layout (nChw16c) when C is a multiple of 16:
  // oneDNN's plain-layout kernel is several times slower. Staged reorders at the boundary.
  struct Prims {
    memory::desc plain, data, stat;  // user layout, primitive layout, statistics
    batch_normalization_forward::primitive_desc fwd_pd;
    batch_normalization_forward fwd, infer, infer_relu;  // infer_relu: max(y, 0) in the same pass
    batch_normalization_backward bwd;
  };
  std::map<int64_t, Prims> cache_;
  const Prims* last_ = nullptr;  // of the last forward
  Staged s_src_, s_dst_, s_ddst_, s_dsrc_;
  memory fwd_src_;

  BatchNorm(const Config& cfg, const std::vector<Shape>& in) {
    kind = "batch_norm";
    LB_CHECK(in.size() == 1, "BatchNormalization: expected 1 input, got ", in.size());
    LB_CHECK(in[0].size() == 3 || in[0].size() == 1,
             "BatchNormalization: expected input shape (C, H, W) or (features,), got ", shape_str(in[0]));
    in_ = in[0];
    C = in_[0];
    S = numel(in_) / C;
    eps = float(cfg.f("epsilon", 1e-3));
    momentum = float(cfg.f("momentum", 0.99));
    LB_CHECK(eps > 0, "BatchNormalization: expected epsilon > 0, got ", eps);
    LB_CHECK(momentum >= 0 && momentum <= 1, "BatchNormalization: expected momentum in [0, 1], got ", momentum);
    out_shape = in_;
    for (const char* n : {"gamma", "beta", "moving_mean", "moving_variance"})
      params.push_back({n, Tensor({C}), Tensor({C}), n[0] == 'g' || n[0] == 'b'});
    mean_.resize({C});
    var_.resize({C});
    macs = 2 * numel(in_);
  }
  bool accepts_blocked() const override { return true; }
  bool can_fuse_relu() const override { return true; }

  void init_params(uint64_t) override {
    init_tensor(params[0].value, "ones", 0, 0, 0);
    params[1].value.zero();
    params[2].value.zero();
    init_tensor(params[3].value, "ones", 0, 0, 0);
  }
  Prims& prims(int64_t N) {
    auto it = cache_.find(N);
    if (it != cache_.end()) return it->second;
    auto plain = in_.size() == 3 ? md({N, C, in_[1], in_[2]}, tag::nchw) : md({N, C}, tag::nc);
    auto data = in_.size() == 3 && C % 16 == 0 ? md({N, C, in_[1], in_[2]}, tag::nChw16c) : plain;
    auto stat = md({C}, tag::x);
    auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
    auto& e = cpu_engine();
    batch_normalization_forward::primitive_desc fpd(e, prop_kind::forward_training, data, data, eps, flags);
    batch_normalization_forward::primitive_desc ipd(e, prop_kind::forward_inference, data, data, eps,
                                                    flags | normalization_flags::use_global_stats);
    batch_normalization_forward::primitive_desc rpd(
        e, prop_kind::forward_inference, data, data, eps,
        flags | normalization_flags::use_global_stats | normalization_flags::fuse_norm_relu);
    batch_normalization_backward::primitive_desc bpd(e, prop_kind::backward, data, data, data, eps, flags, fpd);
    Prims p{plain, data, stat, fpd, batch_normalization_forward(fpd), batch_normalization_forward(ipd),
            batch_normalization_forward(rpd), batch_normalization_backward(bpd)};
    return cache_.emplace(N, std::move(p)).first->second;
  }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext& ctx) override {
    const int64_t N = src[0]->dim(0);
    auto& p = prims(N);
    last_ = &p;
    fwd_src_ = s_src_.in(p.data, mem(user_md(*src[0]), *src[0]));
    dst.blocked = dst.blocked && p.data != p.plain;  // emit the blocked layout it computes in
    auto user_dst = mem(user_md(dst), dst);
    auto d = s_dst_.out(p.data, user_dst);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, fwd_src_},
                                         {DNNL_ARG_DST, d},
                                         {DNNL_ARG_SCALE, mem(p.stat, params[0].value)},
                                         {DNNL_ARG_SHIFT, mem(p.stat, params[1].value)}};
    if (!ctx.training) {
      args.insert({DNNL_ARG_MEAN, mem(p.stat, params[2].value)});
      args.insert({DNNL_ARG_VARIANCE, mem(p.stat, params[3].value)});
      (fused_relu ? p.infer_relu : p.infer).execute(cpu_stream(), args);
      s_dst_.done(d, user_dst);
      return;
    }
    args.insert({DNNL_ARG_MEAN, mem(p.stat, mean_)});
    args.insert({DNNL_ARG_VARIANCE, mem(p.stat, var_)});
    p.fwd.execute(cpu_stream(), args);
    s_dst_.done(d, user_dst);
    if (!ctx.update_stats) return;
    const int64_t m = N * S;
    const float unbias = m > 1 ? float(m) / float(m - 1) : 1.f;
    float *rm = params[2].value.data(), *rv = params[3].value.data();
    for (int64_t c = 0; c < C; ++c) {
      rm[c] = momentum * rm[c] + (1 - momentum) * mean_.data()[c];
      rv[c] = momentum * rv[c] + (1 - momentum) * var_.data()[c] * unbias;
    }
  }
  std::vector<Kernel> kernels() const override { return train_infer_kernels(last_); }
  void backward(const std::vector<const Tensor*>& src, const Tensor&, const Tensor& diff_dst,
                const std::vector<Tensor*>& diff_src) override {
    auto& p = prims(src[0]->dim(0));
    Tensor scratch;
    Tensor* dx = diff_src[0];
    if (!dx) {  // the primitive always writes diff_src
      scratch.resize(src[0]->shape);
      scratch.blocked = src[0]->blocked;
      dx = &scratch;
    }
    // the forward's staged src is still valid: the backward follows its own forward
    auto bsrc = fwd_src_.get_desc() == p.data ? fwd_src_ : s_src_.in(p.data, mem(user_md(*src[0]), *src[0]));
    auto user_dx = mem(user_md(*dx), *dx);
    auto ddx = s_dsrc_.out(p.data, user_dx);
    p.bwd.execute(cpu_stream(), {{DNNL_ARG_SRC, bsrc},
                                 {DNNL_ARG_MEAN, mem(p.stat, mean_)},
                                 {DNNL_ARG_VARIANCE, mem(p.stat, var_)},
                                 {DNNL_ARG_DIFF_DST, s_ddst_.in(p.data, mem(user_md(diff_dst), diff_dst))},
                                 {DNNL_ARG_SCALE, mem(p.stat, params[0].value)},
                                 {DNNL_ARG_DIFF_SRC, ddx},
                                 {DNNL_ARG_DIFF_SCALE, mem(p.stat, params[0].grad)},
                                 {DNNL_ARG_DIFF_SHIFT, mem(p.stat, params[1].grad)}});
    s_dsrc_.done(ddx, user_dx);
    params[2].grad.zero();
    params[3].grad.zero();
  }
};

struct LRN : Op {
  int64_t C, H, W, radius;
  float bias, alpha, beta;
  struct Prims {
    memory::desc data;
    lrn_forward::primitive_desc fwd_pd;
    lrn_forward fwd, infer;
    lrn_backward bwd;
  };
  std::map<int64_t, Prims> cache_;
  const Prims* last_ = nullptr;  // of the last forward
  Workspace ws_;

  // TensorFlow's local_response_normalization:
  //   sqr_sum[c] = sum_{c' = c-r}^{c+r} x[c']^2,  y = x / (bias + alpha * sqr_sum)^beta.
  // oneDNN divides alpha by the window size n = 2r + 1, so we pass alpha * n.
  LRN(const Config& cfg, const std::vector<Shape>& in) {
    kind = "lrn";
    LB_CHECK(in.size() == 1 && in[0].size() == 3, "LRN: expected input shape (C, H, W)");
    C = in[0][0], H = in[0][1], W = in[0][2];
    radius = cfg.i("depth_radius", 5);
    bias = float(cfg.f("bias", 1.0));
    alpha = float(cfg.f("alpha", 1.0));
    beta = float(cfg.f("beta", 0.5));
    LB_CHECK(radius >= 0, "LRN: expected depth_radius >= 0, got ", radius);
    LB_CHECK(bias > 0, "LRN: expected bias > 0, got ", bias);
    out_shape = in[0];
    macs = numel(in[0]) * (2 * radius + 1);
  }
  Prims& prims(int64_t N) {
    auto it = cache_.find(N);
    if (it != cache_.end()) return it->second;
    auto data = md({N, C, H, W}, tag::nchw);
    int64_t n = 2 * radius + 1;
    float a = alpha * float(n);
    auto alg = algorithm::lrn_across_channels;
    auto& e = cpu_engine();
    lrn_forward::primitive_desc fpd(e, prop_kind::forward_training, alg, data, data, n, a, beta, bias);
    lrn_forward::primitive_desc ipd(e, prop_kind::forward_inference, alg, data, data, n, a, beta, bias);
    lrn_backward::primitive_desc bpd(e, alg, data, data, data, n, a, beta, bias, fpd);
    Prims p{data, fpd, lrn_forward(fpd), lrn_forward(ipd), lrn_backward(bpd)};
    return cache_.emplace(N, std::move(p)).first->second;
  }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext& ctx) override {
    auto& p = prims(src[0]->dim(0));
    last_ = &p;
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, mem(p.data, *src[0])}, {DNNL_ARG_DST, mem(p.data, dst)}};
    if (ctx.training) {
      args.insert({DNNL_ARG_WORKSPACE, ws_.get(p.fwd_pd.workspace_desc())});
      p.fwd.execute(cpu_stream(), args);
    } else {
      p.infer.execute(cpu_stream(), args);
    }
  }
  std::vector<Kernel> kernels() const override { return train_infer_kernels(last_); }
  void backward(const std::vector<const Tensor*>& src, const Tensor&, const Tensor& diff_dst,
                const std::vector<Tensor*>& diff_src) override {
    if (!diff_src[0]) return;
    auto& p = prims(src[0]->dim(0));
    p.bwd.execute(cpu_stream(), {{DNNL_ARG_SRC, mem(p.data, *src[0])},
                                 {DNNL_ARG_DIFF_DST, mem(p.data, diff_dst)},
                                 {DNNL_ARG_WORKSPACE, ws_.get(p.fwd_pd.workspace_desc())},
                                 {DNNL_ARG_DIFF_SRC, mem(p.data, *diff_src[0])}});
  }
};

}  // namespace

std::unique_ptr<Op> make_batch_norm(const Config& c, const std::vector<Shape>& in) {
  return std::make_unique<BatchNorm>(c, in);
}
std::unique_ptr<Op> make_lrn(const Config& c, const std::vector<Shape>& in) { return std::make_unique<LRN>(c, in); }

}  // namespace lowbit
