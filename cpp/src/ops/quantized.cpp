// Quantized layers: any conv2d/dense op with number formats per tensor role.
//
// Forward (S4's order):  x_q = Q_in(x),  w_q = Q_w(w),  z = op(x_q, w_q),
//                        y = Q_out(z) + bias
// Backward: straight-through estimators next to each quantizer:
//   dz = STE_out(z, dy),  (dx_q, dw_q) = op_backward(dz),
//   dw = Q_grad(STE_w(w, dw_q)),  dx = Q_grad(STE_in(x, dx_q)),  dbias = sum dy.
// accum_format / grad_accum_format replace the forward / backward dot products by the
// narrow-accumulator simulation of accumulate.hpp (bias gradient included).
// The inner op is built without bias and reads its kernel through a shared handle;
// for each call the handle is pointed at the quantized copy, so the latent fp32
// weights (what the optimizer updates) never change format.
#include <optional>

#include "lowbit/accum_fp16.hpp"
#include "lowbit/accumulate.hpp"
#include "lowbit/kernels.hpp"
#include "lowbit/ops.hpp"

namespace lowbit {

std::unique_ptr<Op> make_conv2d(const Config&, const std::vector<Shape>&);
std::unique_ptr<Op> make_dense(const Config&, const std::vector<Shape>&);

namespace {

struct Role {
  std::optional<Format> f;
  QuantState st;
  explicit operator bool() const { return f.has_value(); }
};

Role role(const Config& c, const char* name) {
  Role r;
  auto it = c.formats.find(name);
  if (it != c.formats.end() && it->second.kind != FormatKind::float32) r.f = it->second;
  return r;
}

struct Quantized : Op {
  std::unique_ptr<Op> inner;
  Role w_, in_, out_, grad_;
  bool use_bias;
  std::string binit;
  int64_t channels, w_rows, fan_in, fan_out;
  Tensor wq_, xq_, z_, dz_, dxq_, wsign_;
  std::optional<Format> accum_, grad_accum_;
  std::optional<Format> values_;  // the grid a quantizer node in front put the input on (see Graph::add)
  ConvGeometry geo_{};
  // evaluate/predict on a low-precision kernel (binary, int8, bf16, fp16), when one exists
  std::unique_ptr<kernels::LayerKernel> kernel_;
  uint64_t wq_version_ = ~uint64_t(0);  // the weight version wq_ was quantized from (inference)
  uint64_t wq_gen_ = 0, wsign_gen_ = ~uint64_t(0);  // wq_'s quantizations, and the one wsign_ holds
  QuantState::Axis w_axis_, in_axis_;
  bool ran_forward_ = false, ran_kernel_ = false, bias_in_kernel_ = false;

  Quantized(const std::string& k, const Config& cfg, const std::vector<Shape>& in) {
    kind = k;
    Config c = cfg;
    use_bias = cfg.i("use_bias", 1) != 0;
    binit = cfg.s("bias_initializer", "zeros");
    c.ints["use_bias"] = {0};
    inner = k == "conv2d" ? make_conv2d(c, in) : make_dense(c, in);
    inner->versioned_weights = false;
    w_ = role(cfg, "weight"), in_ = role(cfg, "input"), out_ = role(cfg, "output"), grad_ = role(cfg, "grad");
    w_.st.is_weight = true;
    const char* layer = k == "conv2d" ? "Conv2D" : "Dense";
    for (const char* r : {"accum", "grad_accum"}) {
      auto acc = role(cfg, r);
      if (!acc) continue;
      const Format& f = *acc.f;
      const bool grad = r[0] == 'g';
      LB_CHECK(f.kind == FormatKind::minifloat || (f.kind == FormatKind::fixed && !f.msb_auto && f.is_signed) ||
                   (f.kind == FormatKind::integer && !grad),
               layer, ": ", r, "_format must be a float format (MiniFloat/Float16/BFloat16), a signed Fixed with a given msb",
               grad ? "" : " or an Int accumulator", ", got ", f.repr());
      LB_CHECK(f.rounding != Rounding::stochastic, layer, ": ", r,
               "_format: stochastic rounding is not an accumulator mode (use 'nearest' or 'floor')");
      if (f.kind == FormatKind::integer)
        LB_CHECK(in_ && w_ && on_integer_grid(*in_.f) && on_integer_grid(*w_.f), layer,
                 ": accum_format=Int(", f.bits, ") is an integer register: it needs input_format and weight_format on an "
                 "integer grid (Int, Fixed, Binary or Ternary), got input ", in_ ? in_.f->repr() : "Float32()",
                 " and weight ", w_ ? w_.f->repr() : "Float32()");
      (grad ? grad_accum_ : accum_) = f;
    }
    if ((accum_ || grad_accum_) && k == "conv2d") geo_ = conv_geometry(cfg, in);
    // without an output format the bias goes into the kernel's epilogue (z + b, as here)
    bias_in_kernel_ = use_bias && !out_;
    // "values": the format the input already is on (the graph sets it behind a Binary()
    // quantizer node, a BinAct); without an input format of its own the layer's kernel
    // then reads those values as they are: +-1 are their own signs
    values_ = role(cfg, "values").f;
    const std::optional<Format>& kin = in_ ? in_.f : values_;
    if (w_ && kin && !accum_) kernel_ = kernels::make_layer_kernel(k, cfg, in, *kin, *w_.f, bias_in_kernel_);
    out_shape = inner->out_shape;
    macs = inner->macs;
    const Shape& ks = inner->params[0].value.shape;
    channels = out_shape[0];
    w_rows = k == "conv2d" ? ks[0] : 1;  // per-output-channel rows of an OIHW kernel
    fan_in = k == "conv2d" ? numel(ks) / ks[0] : ks[0];
    fan_out = k == "conv2d" ? numel(ks) / ks[1] : ks[1];
    // block formats run along the reduction axis: C kh kw of an OIHW kernel, K of a (K, M)
    // kernel, the channels (features) of activations at each pixel
    w_axis_ = k == "conv2d" ? QuantState::Axis{fan_in, 1} : QuantState::Axis{ks[0], ks[1]};
    in_axis_ = {in[0][0], numel(in[0]) / in[0][0]};
    w_.st.axis = w_axis_, in_.st.axis = in_axis_, out_.st.axis = {out_shape[0], numel(out_shape) / out_shape[0]};
    params.push_back(inner->params[0]);  // shares storage with the inner op's kernel
    params[0].binary = w_ && w_.f->kind == FormatKind::binary;
    params[0].clip = float(cfg.f("kernel_clip", 0.0));
    if (use_bias) params.push_back({"bias", Tensor({channels}), Tensor({channels})});
  }

  std::vector<QuantState*> quant_states() override { return {&w_.st, &in_.st, &out_.st, &grad_.st}; }
  // For a layer reading a quantizer node's values (no input format of its own), at
  // inference: the xnor-popcount kernel reads x < 0 as -1 and the rest (0, NaN) as +1, as
  // Binary() maps them; the int8 kernel encodes a Fixed grid's codes rounding half to even
  // and saturating, as Fixed(rounding='nearest') does, NaN and infinities alike.
  bool quantizes_input_as(const Format& f) const override {
    if (!kernel_ || in_ || !values_ || !kernels::family_enabled(kernel_->family())) return false;
    if (kernel_->family() == kernels::Family::binary)
      return f.kind == FormatKind::binary && f.scale == ScaleMode::none && f.hysteresis == 0.f &&
             f.rounding != Rounding::stochastic;
    return kernel_->family() == kernels::Family::int8 && f.kind == FormatKind::fixed &&
           f.rounding == Rounding::nearest && f.overflow == Overflow::saturate && !f.msb_auto &&
           f.bits == values_->bits && f.msb == values_->msb && f.is_signed == values_->is_signed;
  }
  // The inner op's primitives, except the passes lowbit's accumulator loops replace.
  std::vector<Kernel> kernels() const override {
    if (ran_kernel_) {  // the last forward ran a low-precision kernel
      std::vector<Kernel> ks{{"forward", std::string(kernels::family_name(kernel_->family())) + ":" + kernel_->impl()}};
      for (auto& k : inner->kernels())
        if (k.pass != "forward") ks.push_back(k);
      return ks;
    }
    if (!accum_ && !grad_accum_) return inner->kernels();
    if (!ran_forward_) return {};
    const auto ran = inner->kernels();
    std::vector<Kernel> ks;
    for (const char* pass : {"forward", "backward_data", "backward_weights"}) {
      const auto& acc = pass[0] == 'f' ? accum_ : grad_accum_;
      // Float16 accumulators run on the fp16 accumulation kernel when the operands are binary16
      if (acc && fp16acc::applies(*acc) && fp16acc::current() != fp16acc::Path::simulate)
        ks.push_back({pass, std::string("lowbit:fp16_accumulation:") + fp16acc::path_name(fp16acc::current())});
      else if (acc)
        ks.push_back({pass, "lowbit:accumulator_simulation:" + acc->repr()});
      for (auto& k : ran)
        if (!acc && k.pass == pass) ks.push_back(k);
    }
    return ks;
  }
  // Activation quantizers are per tensor, so they work on any layout; the accumulator
  // simulation indexes NCHW.
  bool accepts_blocked() const override {
    for (const Role* r : {&w_, &in_, &out_, &grad_})
      if (*r && r->f->kind == FormatKind::block) return false;  // blocks index NCHW
    return kind == "conv2d" && !accum_ && !grad_accum_;
  }

  void init_params(uint64_t seed) override {
    inner->init_params(seed);
    if (use_bias) init_tensor(params[1].value, binit, fan_in, fan_out, seed + 1);
  }

  // z (N, channels, ...) plain, times alpha per output channel (one alpha: per tensor)
  void scale_channels(Tensor& z, const std::vector<float>& alpha) const {
    const bool per_channel = int64_t(alpha.size()) == channels;
    LB_CHECK(per_channel || alpha.size() == 1, "binary weight scales: ", alpha.size(), " for ", channels, " channels");
    std::vector<float> one_per_channel;  // a per-tensor alpha, repeated
    if (!per_channel) one_per_channel.assign(size_t(channels), alpha[0]);
    mul_channel_scale(z.data(), per_channel ? alpha.data() : one_per_channel.data(), z.dim(0), channels,
                      numel(out_shape) / channels, z.blocked);
  }

  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext& ctx) override {
    in_.st.track = w_.st.track = out_.st.track = ctx.training;
    ran_forward_ = true;
    const bool may_block = dst.blocked;  // the executor's permission
    const Tensor* x = src[0];
    const bool kernel = kernel_ && !ctx.training && kernels::family_enabled(kernel_->family());
    ran_kernel_ = kernel;
    // the kernels read x itself (binary: its signs; int8: encoded on the Int grid;
    // bf16/fp16: rounded in their conversion): no quantizer pass over x
    if (in_ && !(kernel && !kernel_->needs_quantized_input() && in_.f->hysteresis == 0.f)) {
      xq_.resize(x->shape);
      xq_.blocked = x->blocked;
      quantize(*in_.f, x->data(), xq_.data(), x->size(), 1, &in_.st);
      x = &xq_;
    }
    Tensor& latent = inner->params[0].value;
    Tensor saved = latent;
    // Inference keeps the quantized weights while the latent ones are unchanged (same
    // version). A training forward quantizes afresh (it tracks statistics and hysteresis),
    // and so does stochastic rounding, which draws new bits at every call.
    const uint64_t version = params[0].version;
    if (ctx.training) {
      wq_version_ = ~uint64_t(0);
      if (kernel_) kernel_->weights_version = ~uint64_t(0);
    }
    if (w_ && (wq_version_ != version || w_.f->rounding == Rounding::stochastic)) {
      wq_.resize(latent.shape);
      quantize(*w_.f, latent.data(), wq_.data(), latent.size(), w_rows, &w_.st);
      ++wq_gen_;
      if (!ctx.training) wq_version_ = version;
    }
    // Scaled binary weights (XNOR-Net alpha * sign(w)): the product is computed as
    // alpha * (x . sign(w)), the scale factored out. The sum of +-x is exact for binary and
    // fixed-point inputs (integers on one grid, below 2^24), so the simulated layer rounds
    // once, at the scale, exactly as the xnor-popcount kernel's epilogue float(d) * alpha.
    const bool factor = w_ && !accum_ && !kernel && w_.f->kind == FormatKind::binary && w_.f->scale != ScaleMode::none;
    if (factor && wsign_gen_ != wq_gen_) {  // sign(wq): once per quantization of the weights
      wsign_gen_ = wq_gen_;
      wsign_.resize(wq_.shape);
      const float* q = wq_.data();
      float* sg = wsign_.data();
      for (int64_t i = 0, n = wq_.size(); i < n; ++i) sg[i] = q[i] > 0.f ? 1.f : q[i] < 0.f ? -1.f : 0.f;
    }
    if (w_) inner->params[0].value = factor ? wsign_ : wq_;
    if (kernel && kernel_->weights_version != version) {
      kernel_->set_weights(wq_, w_.st.step);
      kernels::count_weight_preparation();
      kernel_->weights_version = version;
    }
    Tensor& zt = out_ ? z_ : dst;
    if (out_) z_.resize(dst.shape);
    zt.blocked = may_block && !accum_;  // scale_channels maps blocked tensors too
    if (accum_) {
      const IntOperands ints{&in_.st.step, &w_.st.step};
      if (kind == "conv2d") accum_conv_forward(*accum_, geo_, *x, inner->params[0].value, zt, ints);
      else accum_dense_forward(*accum_, *x, inner->params[0].value, zt, ints);
    } else if (kernel) {
      kernels::count_engine_call(kernel_->family());
      kernel_->forward(*x, in_.st, bias_in_kernel_ ? params[1].value.data() : nullptr, zt);
    } else {
      inner->forward({x}, zt, ctx);
      if (factor) scale_channels(zt, w_.st.step);
    }
    if (out_) {
      quantize(*out_.f, z_.data(), dst.data(), dst.size(), 1, &out_.st);
      dst.blocked = z_.blocked;
    }
    inner->params[0].value = saved;
    if (use_bias && !(kernel && bias_in_kernel_))
      add_channel_bias(dst.data(), params[1].value.data(), dst.dim(0), channels, numel(out_shape) / channels,
                       dst.blocked);
  }

  void backward(const std::vector<const Tensor*>& src, const Tensor& dst, const Tensor& dy,
                const std::vector<Tensor*>& diff_src) override {
    const int64_t N = dy.dim(0), S = numel(out_shape) / channels;
    if (use_bias && grad_accum_) {
      accum_bias_backward(*grad_accum_, dy.data(), N, channels, S, params[1].grad.data());
    } else if (use_bias) {
      if (dy.blocked) channel_sums_blocked(dy.data(), N, channels, S, params[1].grad.data());
      else channel_sums(dy.data(), N, channels, S, params[1].grad.data());
    }
    const Tensor* dz = &dy;
    if (out_ && out_.f->ste != Ste::identity) {  // identity: dz is dy itself, no copy
      dz_.resize(dy.shape);
      dz_.blocked = dy.blocked;
      ste_backward(*out_.f, z_.data(), dy.data(), dz_.data(), dy.size());
      dz = &dz_;
    }
    const Tensor* x = in_ ? &xq_ : src[0];
    Tensor* dx = diff_src[0];
    const bool in_ste = in_ && in_.f->ste != Ste::identity;
    if (dx && in_ste) {
      dxq_.resize(src[0]->shape);
      dxq_.blocked = src[0]->blocked;
      dx = &dxq_;
    }
    Param& k = inner->params[0];
    const Tensor& w = w_ ? wq_ : k.value;
    if (grad_accum_ && kind == "conv2d") {
      accum_conv_backward_weights(*grad_accum_, geo_, *x, *dz, k.grad);
      if (dx) accum_conv_backward_data(*grad_accum_, geo_, *dz, w, *dx);
    } else if (grad_accum_) {
      accum_dense_backward_weights(*grad_accum_, *x, *dz, k.grad);
      if (dx) accum_dense_backward_data(*grad_accum_, *dz, w, *dx);
    } else {
      Tensor saved = k.value;
      k.value = w;
      inner->backward({x}, dst, *dz, {dx});
      k.value = saved;
    }
    if (w_ && w_.f->ste != Ste::identity) ste_backward(*w_.f, k.value.data(), k.grad.data(), k.grad.data(), k.grad.size());
    grad_.st.track = true;
    if (grad_) {
      grad_.st.axis = w_axis_;
      quantize(*grad_.f, k.grad.data(), k.grad.data(), k.grad.size(), 1, &grad_.st);
      grad_.st.axis = {};
      if (use_bias) quantize(*grad_.f, params[1].grad.data(), params[1].grad.data(), channels, 1, &grad_.st);
    }
    if (!diff_src[0]) return;
    if (in_ste) ste_backward(*in_.f, src[0]->data(), dxq_.data(), diff_src[0]->data(), dxq_.size());
    grad_.st.axis = in_axis_;
    if (grad_) quantize(*grad_.f, diff_src[0]->data(), diff_src[0]->data(), diff_src[0]->size(), 1, &grad_.st);
  }
};

// QuantAct: y = Q(x), dy/dx by the format's STE (BinAct, QuantizedReLU's quantizer, ...).
struct QuantAct : Op {
  Format f;
  QuantState st;
  QuantAct(const Config& cfg, const std::vector<Shape>& in) {
    kind = "quantize";
    LB_CHECK(in.size() == 1, "QuantAct: expected 1 input, got ", in.size());
    auto it = cfg.formats.find("format");
    LB_CHECK(it != cfg.formats.end(), "QuantAct: missing format");
    f = it->second;
    out_shape = in[0];
    if (!in[0].empty()) st.axis = {in[0][0], numel(in[0]) / in[0][0]};  // blocks along channels
  }
  std::vector<QuantState*> quant_states() override { return {&st}; }
  const Format* output_format() const override { return &f; }
  // A format whose values do not depend on where an element sits - no block or channel
  // axis, no per-position random stream or hysteresis state, tensor statistics that are
  // maxima, minima or quantiles (not order-dependent float sums) - quantizes the
  // channel-blocked layout as it comes, with no reorder to NCHW and back around it.
  bool accepts_blocked() const override {
    const bool sums = f.scale != ScaleMode::none || (f.kind == FormatKind::ternary && f.threshold < 0) ||
                      (f.kind == FormatKind::integer && f.calibration == Calibration::mse);
    return f.kind != FormatKind::block && !f.per_channel && f.rounding != Rounding::stochastic && f.hysteresis == 0.f &&
           !sums;
  }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext& ctx) override {
    st.track = ctx.training;
    dst.blocked = src[0]->blocked;
    quantize(f, src[0]->data(), dst.data(), dst.size(), 1, &st);
  }
  void backward(const std::vector<const Tensor*>& src, const Tensor&, const Tensor& dy,
                const std::vector<Tensor*>& dx) override {
    if (dx[0]) ste_backward(f, src[0]->data(), dy.data(), dx[0]->data(), dy.size());
  }
};

}  // namespace

bool has_formats(const Config& c) {
  for (auto& kv : c.formats)
    if (kv.first != "format" && kv.second.kind != FormatKind::float32) return true;
  return false;
}

std::unique_ptr<Op> make_quantized(const std::string& k, const Config& c, const std::vector<Shape>& in) {
  return std::make_unique<Quantized>(k, c, in);
}
std::unique_ptr<Op> make_quant_act(const Config& c, const std::vector<Shape>& in) {
  return std::make_unique<QuantAct>(c, in);
}

}  // namespace lowbit
