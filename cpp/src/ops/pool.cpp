// MaxPool2D / AvgPool2D / GlobalAvgPool2D on oneDNN pooling primitives.
// Keras semantics: pool_size, strides (default = pool_size), 'valid' or 'same';
// 'same' average pooling excludes the padding (TensorFlow), max pooling ignores it.
#include "lowbit/dnnl_util.hpp"
#include "lowbit/ops.hpp"

namespace lowbit {
namespace {

using namespace dnnl;

struct Pool2D : Op {
  int64_t C, H, W, kh, kw, sh, sw;
  Pad1 ph, pw;
  algorithm alg;
  struct Prims {
    memory::desc src, dst;
    pooling_forward::primitive_desc fwd_pd;
    pooling_forward fwd, infer;
    pooling_backward bwd;
  };
  std::map<int64_t, Prims> cache_;
  const Prims* last_ = nullptr;  // of the last forward
  Workspace ws_;

  Pool2D(const std::string& k, const Config& cfg, const std::vector<Shape>& in) {
    kind = k;
    const char* name = k == "max_pool2d" ? "MaxPool2D" : k == "avg_pool2d" ? "AvgPool2D" : "GlobalAvgPool2D";
    LB_CHECK(in.size() == 1, name, ": expected 1 input, got ", in.size());
    LB_CHECK(in[0].size() == 3, name, ": expected input shape (C, H, W), got ", shape_str(in[0]));
    C = in[0][0], H = in[0][1], W = in[0][2];
    std::string mode = "valid";
    if (k == "global_avg_pool2d") {
      kh = H, kw = W, sh = H, sw = W;
      alg = algorithm::pooling_avg_exclude_padding;
    } else {
      auto ps = cfg.iv("pool_size", 2, {2, 2});
      auto st = cfg.iv("strides", 2, ps);
      kh = ps[0], kw = ps[1], sh = st[0], sw = st[1];
      mode = cfg.s("padding", "valid");
      alg = k == "max_pool2d" ? algorithm::pooling_max : algorithm::pooling_avg_exclude_padding;
    }
    ph = pad1(mode, 0, H, kh, sh, 1, name);
    pw = pad1(mode, 0, W, kw, sw, 1, name);
    out_shape = k == "global_avg_pool2d" ? Shape{C} : Shape{C, ph.out, pw.out};
    macs = 0;  // comparisons and additions, no multiply-accumulates
  }
  // Pools in the layout its input comes in: NCHW, or nChw16c straight from a conv/BN
  // (the output then stays blocked; for the global pool (N, C, 1, 1) both are (N, C)).
  Prims& prims(int64_t N, bool blocked) {
    const int64_t key = N * 2 + (blocked ? 1 : 0);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    const tag t = blocked ? tag::nChw16c : tag::nchw;
    auto src = md({N, C, H, W}, t), dst = md({N, C, ph.out, pw.out}, t);
    dims st{sh, sw}, kr{kh, kw}, dl{0, 0}, pl{ph.lo, pw.lo}, pr{ph.hi, pw.hi};  // dilation 0: dense window
    auto& e = cpu_engine();
    pooling_forward::primitive_desc fpd(e, prop_kind::forward_training, alg, src, dst, st, kr, dl, pl, pr);
    pooling_forward::primitive_desc ipd(e, prop_kind::forward_inference, alg, src, dst, st, kr, dl, pl, pr);
    pooling_backward::primitive_desc bpd(e, alg, src, dst, st, kr, dl, pl, pr, fpd);
    Prims p{src, dst, fpd, pooling_forward(fpd), pooling_forward(ipd), pooling_backward(bpd)};
    return cache_.emplace(key, std::move(p)).first->second;
  }
  bool accepts_blocked() const override { return true; }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext& ctx) override {
    auto& p = prims(src[0]->dim(0), src[0]->blocked);
    last_ = &p;
    dst.blocked = src[0]->blocked && dst.ndim() == 4;
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, mem(p.src, *src[0])}, {DNNL_ARG_DST, mem(p.dst, dst)}};
    if (ctx.training) {
      if (alg == algorithm::pooling_max) args.insert({DNNL_ARG_WORKSPACE, ws_.get(p.fwd_pd.workspace_desc())});
      p.fwd.execute(cpu_stream(), args);
    } else {
      p.infer.execute(cpu_stream(), args);
    }
  }
  std::vector<Kernel> kernels() const override { return train_infer_kernels(last_); }
  void backward(const std::vector<const Tensor*>& src, const Tensor&, const Tensor& diff_dst,
                const std::vector<Tensor*>& diff_src) override {
    if (!diff_src[0]) return;
    auto& p = prims(src[0]->dim(0), src[0]->blocked);
    std::unordered_map<int, memory> args{{DNNL_ARG_DIFF_DST, mem(p.dst, diff_dst)},
                                         {DNNL_ARG_DIFF_SRC, mem(p.src, *diff_src[0])}};
    if (alg == algorithm::pooling_max) args.insert({DNNL_ARG_WORKSPACE, ws_.get(p.fwd_pd.workspace_desc())});
    p.bwd.execute(cpu_stream(), args);
  }
};

}  // namespace

std::unique_ptr<Op> make_pool2d(const std::string& k, const Config& c, const std::vector<Shape>& in) {
  return std::make_unique<Pool2D>(k, c, in);
}

}  // namespace lowbit
