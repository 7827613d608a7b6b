// Conv2D: dst = conv(src, kernel) + bias, on oneDNN convolution primitives.
// kernel layout OIHW (O, C/groups, kh, kw); TensorFlow 'same' padding.
#include "lowbit/dnnl_util.hpp"
#include "lowbit/ops.hpp"

namespace lowbit {
namespace {

using namespace dnnl;

struct Conv2D : Op {
  int64_t C, H, W, O, kh, kw, sh, sw, dh, dw, groups;
  Pad1 ph, pw;
  bool use_bias;
  std::string kinit, binit;

  // Primitives choose their layouts (format_tag::any: blocked nChw16c kernels are
  // several times faster than the im2col path of plain nchw); user tensors stay plain
  // and Staged reorders at the boundary. The forward's staged src/weights are reused by
  // the backward when the layouts agree.
  struct Prims {
    memory::desc src, wei, bias, dst;  // plain user layouts
    convolution_forward::primitive_desc fwd_pd;
    convolution_backward_data::primitive_desc bd_pd;
    convolution_backward_weights::primitive_desc bw_pd;
    convolution_forward fwd;
    convolution_backward_data bwd_data;
    convolution_backward_weights bwd_w;
  };
  std::map<int64_t, Prims> cache_;
  const Prims* last_ = nullptr;  // of the last forward or backward
  Staged s_src_, s_wei_, s_dst_, s_ddst_, s_dwei_, s_dsrc_, s_bsrc_, s_bwei_;
  // Staged forward operands, kept for the backward - valid only for the very tensors the
  // last forward saw: a caller may run the backward without this forward (the quantized
  // layer's accumulator simulation computes the forward itself).
  memory fwd_src_, fwd_wei_;
  const float *fwd_src_ptr_ = nullptr, *fwd_wei_ptr_ = nullptr;
  bool staged_for(const memory& m, const float* seen, const float* now, const memory::desc& want) const {
    return m && seen == now && m.get_desc() == want;
  }

  Conv2D(const Config& cfg, const std::vector<Shape>& in) {
    kind = "conv2d";
    const ConvGeometry g = conv_geometry(cfg, in);
    C = g.C, H = g.H, W = g.W, O = g.O, kh = g.kh, kw = g.kw, sh = g.sh, sw = g.sw, dh = g.dh, dw = g.dw;
    groups = g.groups, ph = g.ph, pw = g.pw;
    use_bias = cfg.i("use_bias", 1) != 0;
    kinit = cfg.s("kernel_initializer", "glorot_uniform");
    binit = cfg.s("bias_initializer", "zeros");
    out_shape = {O, ph.out, pw.out};
    params.push_back({"kernel", Tensor({O, C / groups, kh, kw}), Tensor({O, C / groups, kh, kw})});
    params[0].clip = float(cfg.f("kernel_clip", 0.0));
    if (use_bias) params.push_back({"bias", Tensor({O}), Tensor({O})});
    macs = O * ph.out * pw.out * (C / groups) * kh * kw;
  }

  bool accepts_blocked() const override { return true; }

  void init_params(uint64_t seed) override {
    int64_t rf = kh * kw;
    init_tensor(params[0].value, kinit, C / groups * rf, O / groups * rf, seed);
    if (use_bias) init_tensor(params[1].value, binit, C / groups * rf, O / groups * rf, seed + 1);
  }

  Prims& prims(int64_t N) {
    auto it = cache_.find(N);
    if (it != cache_.end()) return it->second;
    auto src = md({N, C, H, W}, tag::nchw);
    auto dst = md({N, O, ph.out, pw.out}, tag::nchw);
    dims wd = groups == 1 ? dims{O, C, kh, kw} : dims{groups, O / groups, C / groups, kh, kw};
    auto wei = md(wd, groups == 1 ? tag::oihw : tag::goihw);
    auto bias = use_bias ? md({O}, tag::x) : memory::desc();
    auto a_src = md(src.get_dims(), tag::any), a_dst = md(dst.get_dims(), tag::any), a_wei = md(wd, tag::any);
    dims st{sh, sw}, dl{dh - 1, dw - 1}, pl{ph.lo, pw.lo}, pr{ph.hi, pw.hi};
    auto alg = algorithm::convolution_direct;
    auto& e = cpu_engine();
    convolution_forward::primitive_desc fpd(e, prop_kind::forward_training, alg, a_src, a_wei, bias, a_dst, st, dl,
                                            pl, pr);
    convolution_backward_data::primitive_desc bdpd(e, alg, a_src, a_wei, a_dst, st, dl, pl, pr, fpd);
    convolution_backward_weights::primitive_desc bwpd(e, alg, a_src, a_wei, bias, a_dst, st, dl, pl, pr, fpd);
    Prims pr_{src, wei, bias, dst, fpd, bdpd, bwpd, convolution_forward(fpd), convolution_backward_data(bdpd),
              convolution_backward_weights(bwpd)};
    return cache_.emplace(N, std::move(pr_)).first->second;
  }

  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext&) override {
    auto& p = prims(src[0]->dim(0));
    last_ = &p;
    fwd_src_ = s_src_.in(p.fwd_pd.src_desc(), mem(user_md(*src[0]), *src[0]));
    fwd_wei_ = s_wei_.in(p.fwd_pd.weights_desc(), mem(p.wei, params[0].value));
    fwd_src_ptr_ = src[0]->data(), fwd_wei_ptr_ = params[0].value.data();
    // write the primitive's blocked dst straight into dst when the executor allows it
    dst.blocked = dst.blocked && can_block(dst.shape) && p.fwd_pd.dst_desc() == md(p.dst.get_dims(), tag::nChw16c);
    auto user_dst = mem(user_md(dst), dst);
    auto d = s_dst_.out(p.fwd_pd.dst_desc(), user_dst);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, fwd_src_}, {DNNL_ARG_WEIGHTS, fwd_wei_}, {DNNL_ARG_DST, d}};
    if (use_bias) args.insert({DNNL_ARG_BIAS, mem(p.bias, params[1].value)});
    p.fwd.execute(cpu_stream(), args);
    s_dst_.done(d, user_dst);
  }

  std::vector<Kernel> kernels() const override { return data_weights_kernels(last_); }

  void backward(const std::vector<const Tensor*>& src, const Tensor&, const Tensor& diff_dst,
                const std::vector<Tensor*>& diff_src) override {
    auto& p = prims(src[0]->dim(0));
    last_ = &p;  // also when a wrapper ran the forward itself (quantized accumulators)
    auto ddst_user = mem(user_md(diff_dst), diff_dst);
    auto ddst_w = s_ddst_.in(p.bw_pd.diff_dst_desc(), ddst_user);
    auto bsrc = staged_for(fwd_src_, fwd_src_ptr_, src[0]->data(), p.bw_pd.src_desc())
                    ? fwd_src_
                    : s_bsrc_.in(p.bw_pd.src_desc(), mem(user_md(*src[0]), *src[0]));
    auto dwei_user = mem(p.wei, params[0].grad);
    auto dwei = s_dwei_.out(p.bw_pd.diff_weights_desc(), dwei_user);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, bsrc}, {DNNL_ARG_DIFF_DST, ddst_w}, {DNNL_ARG_DIFF_WEIGHTS, dwei}};
    if (use_bias) args.insert({DNNL_ARG_DIFF_BIAS, mem(p.bias, params[1].grad)});
    p.bwd_w.execute(cpu_stream(), args);
    s_dwei_.done(dwei, dwei_user);
    if (!diff_src[0]) return;
    auto ddst_d = p.bd_pd.diff_dst_desc() == ddst_w.get_desc() ? ddst_w : s_ddst_.in(p.bd_pd.diff_dst_desc(), ddst_user);
    auto wei = staged_for(fwd_wei_, fwd_wei_ptr_, params[0].value.data(), p.bd_pd.weights_desc())
                   ? fwd_wei_
                   : s_bwei_.in(p.bd_pd.weights_desc(), mem(p.wei, params[0].value));
    auto dsrc_user = mem(user_md(*diff_src[0]), *diff_src[0]);
    auto dsrc = s_dsrc_.out(p.bd_pd.diff_src_desc(), dsrc_user);
    p.bwd_data.execute(cpu_stream(), {{DNNL_ARG_DIFF_DST, ddst_d}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, dsrc}});
    s_dsrc_.done(dsrc, dsrc_user);
  }
};

}  // namespace

std::unique_ptr<Op> make_conv2d(const Config& c, const std::vector<Shape>& in) { return std::make_unique<Conv2D>(c, in); }

}  // namespace lowbit
