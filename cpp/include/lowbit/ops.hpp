// The op interface: one op = forward + backward, shapes checked at construction.
// Shapes are per sample (C,H,W) or (features,); the batch axis is added at run time.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "format.hpp"
#include "tensor.hpp"

namespace lowbit {

// Layer arguments as parsed from Python (ints, floats, strings by key).
struct Config {
  std::map<std::string, std::vector<int64_t>> ints;
  std::map<std::string, double> floats;
  std::map<std::string, std::string> strs;
  std::map<std::string, Format> formats;  // by tensor role: weight, input, output, grad

  bool has(const std::string& k) const { return ints.count(k) || floats.count(k) || strs.count(k); }
  int64_t i(const std::string& k, int64_t def) const;
  std::vector<int64_t> iv(const std::string& k, size_t n, std::vector<int64_t> def) const;
  double f(const std::string& k, double def) const;
  std::string s(const std::string& k, const std::string& def) const;
};

// A learnable (or state) tensor of an op with its gradient.
struct Param {
  std::string name;  // Keras names: kernel, bias, gamma, beta, moving_mean, moving_variance
  Tensor value, grad;
  bool trainable = true;
  float clip = 0.f;     // > 0: clip the latent value to [-clip, clip] after each step (weight_clip)
  bool binary = false;  // the op reads it through a Binary format (Bop updates it)
  // Bumped by every write of `value` (optimizer step, set_weights, init, quantizer state
  // load): layers keep quantized / packed copies of the weights while it stays the same.
  uint64_t version = 0;
};

// Per-step information the ops may need (dropout masks are a function of seed+step).
struct StepContext {
  uint64_t seed = 0;
  uint64_t step = 0;
  bool training = false;
  bool update_stats = true;  // BatchNorm running statistics (off for gradient checks)
};

// One primitive an op ran in its last forward/backward: the pass ("forward",
// "backward_data", ...) and the implementation oneDNN picked for it on this CPU.
struct Kernel {
  std::string pass, impl;
};

struct Op {
  std::string kind;
  Shape out_shape;            // per sample
  std::vector<Param> params;  // Keras get_weights() order
  int64_t macs = 0;           // multiply-accumulates per sample, forward

  virtual ~Op() = default;
  virtual void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext& ctx) = 0;
  // diff_src[i] is nullptr when input i needs no gradient. Parameter gradients are
  // written (not accumulated) into params[k].grad.
  virtual void backward(const std::vector<const Tensor*>& src, const Tensor& dst,
                        const Tensor& diff_dst, const std::vector<Tensor*>& diff_src) = 0;
  // Whether the op takes channel-blocked inputs (and gradients in the same layout). Its
  // forward is called with dst.blocked = true as a permission; it clears the flag when it
  // writes NCHW. Elementwise ops keep their input's layout.
  virtual bool accepts_blocked() const { return false; }
  // Quantizer state kept across steps (saved with the weights), in a fixed order.
  virtual std::vector<QuantState*> quant_states() { return {}; }
  // The format every output value is on (a quantizer node), or null.
  virtual const Format* output_format() const { return nullptr; }
  // Inference only: whether the op can apply a ReLU to its output in the same pass (the
  // executor then skips the ReLU node that follows it). fused_relu is set by the executor
  // around such a forward and is false otherwise.
  virtual bool can_fuse_relu() const { return false; }
  bool fused_relu = false;
  // Inference only: whether the op's forward, right now, reads its input x exactly as
  // quantizer f would map it (a kernel that binarizes or encodes x itself), so that a
  // quantizer node to f feeding only this op may hand its input through.
  virtual bool quantizes_input_as(const Format& /*f*/) const { return false; }
  // Whether params[k].version identifies the weights' values (an op may keep a prepared
  // copy per version). False for an op inside a quantized wrapper, which swaps quantized
  // tensors in for the latent weights behind its back.
  bool versioned_weights = true;
  // The kernels of the primitives used by the last forward (empty before it, or for
  // ops that run lowbit's own loops).
  virtual std::vector<Kernel> kernels() const { return {}; }
  // Initialise parameters deterministically from a seed.
  virtual void init_params(uint64_t /*seed*/) {}
  int64_t count_params() const {
    int64_t n = 0;
    for (auto& p : params) n += p.value.size();
    return n;
  }
};

std::unique_ptr<Op> make_op(const std::string& kind, const Config& cfg, const std::vector<Shape>& in);

// Initialisers (Keras/PyTorch names): fill `t` given fan_in / fan_out.
void init_tensor(Tensor& t, const std::string& how, int64_t fan_in, int64_t fan_out, uint64_t seed);

// Padding for one spatial axis. 'same' follows TensorFlow: total = max((ceil(n/s)-1)*s
// + (k-1)*d + 1 - n, 0), with the extra pixel at the end.
struct Pad1 {
  int64_t lo, hi, out;
};
Pad1 pad1(const std::string& mode, int64_t explicit_pad, int64_t n, int64_t k, int64_t s, int64_t d,
          const char* op);

// Conv2D's geometry from its Keras arguments, checked: the one parser of them.
struct ConvGeometry {
  int64_t C, H, W, O, kh, kw, sh, sw, dh, dw, groups;
  Pad1 ph, pw;
};
ConvGeometry conv_geometry(const Config& cfg, const std::vector<Shape>& in);

}  // namespace lowbit
