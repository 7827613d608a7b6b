// The engine's Binary x Binary layers on the xnor-popcount kernels (see kernels.hpp).
#include "lowbit/check.hpp"
#include "lowbit/kernels.hpp"

namespace lowbit {
namespace kernels {

namespace {

class BinaryLayer : public LayerKernel {
 public:
  BinaryLayer(const ConvShape& per_sample, int64_t O, int64_t kh, int64_t kw)
      : conv_(true), s_(per_sample), O_(O), kh_(kh), kw_(kw), fan_in_(per_sample.C * kh * kw) {}
  BinaryLayer(int64_t fan_in, int64_t units) : conv_(false), s_{}, O_(units), kh_(1), kw_(1), fan_in_(fan_in) {}

  Family family() const override { return Family::binary; }
  std::string impl() const override { return std::string("lowbit:xnor_popcount:") + path_name(binary_path()); }
  // signs only: the quantizer pass over the input is not needed (hysteresis aside)
  bool needs_quantized_input() const override { return false; }
  // wq = alpha * sign(w): the signs are packed, alpha (the quantizer's per-channel or
  // per-tensor scale, 1 unscaled) multiplies the popcount sum in the epilogue
  void set_weights(const Tensor& wq, const std::vector<float>& alpha) override {
    w_ = conv_ ? pack_conv_weights(wq.data(), O_, s_.C, kh_, kw_) : pack_dense_weights(wq.data(), fan_in_, O_);
    LB_CHECK(int64_t(alpha.size()) == O_ || alpha.size() == 1, "binary layer: ", alpha.size(), " weight scales for ",
             O_, " output channels");
    scale_ = alpha.size() == 1 ? std::vector<float>(size_t(O_), alpha[0]) : alpha;
  }

  void forward(const Tensor& xt, QuantState&, const float* bias, Tensor& z) override {
    const float* x = xt.data();
    const int64_t N = xt.dim(0);
    z.blocked = z.blocked && conv_ && O_ % 16 == 0;  // where the executor permits it
    if (!conv_) return binary_dense(x, N, w_, scale_.data(), bias, z.data(), binary_path());
    ConvShape s = s_;
    s.N = N;
    s.blocked = xt.blocked;  // packed from nChw16c directly (16 channels' signs in one compare)
    s.blocked_out = z.blocked;  // batch norm and the next layers read nChw16c without a reorder
    binary_conv2d(x, s, w_, scale_.data(), bias, z.data(), binary_path());
  }

 private:
  bool conv_;
  ConvShape s_;
  int64_t O_, kh_, kw_, fan_in_;
  std::vector<float> scale_;
  BinaryWeights w_;
};

}  // namespace

std::unique_ptr<LayerKernel> make_binary_layer(const std::string& kind, const Config& cfg,
                                               const std::vector<Shape>& in) {
  if (kind == "dense") return std::make_unique<BinaryLayer>(in[0][0], cfg.i("units", 0));
  const ConvGeometry g = conv_geometry(cfg, in);
  if (g.groups != 1) return nullptr;
  ConvShape s{0, g.C, g.H, g.W, g.sh, g.sw, g.dh, g.dw, g.ph.lo, g.ph.hi, g.pw.lo, g.pw.hi};
  return std::make_unique<BinaryLayer>(s, g.O, g.kh, g.kw);
}

}  // namespace kernels
}  // namespace lowbit
