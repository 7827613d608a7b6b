#include <Eigen/Core>
#include <cmath>
#include <cstring>

#include "lowbit/dnnl_util.hpp"
#include "lowbit/ops.hpp"
#include "lowbit/rng.hpp"
#include "lowbit/simd.hpp"

namespace lowbit {

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}
dnnl::stream& cpu_stream() {
  static dnnl::stream s(cpu_engine());
  return s;
}

void channel_sums(const float* dy, int64_t N, int64_t C, int64_t S, float* out) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<Eigen::VectorXf> o(out, C);
  o.setZero();
  for (int64_t n = 0; n < N; ++n) o += Eigen::Map<const Mat>(dy + n * C * S, C, S).rowwise().sum();
}

void channel_sums_blocked(const float* dy, int64_t N, int64_t C, int64_t S, float* out) {
  using Blk = Eigen::Matrix<float, Eigen::Dynamic, 16, Eigen::RowMajor>;
  const int64_t CB = C / 16;
  Eigen::Map<Eigen::VectorXf>(out, C).setZero();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t cb = 0; cb < CB; ++cb)
      Eigen::Map<Eigen::Matrix<float, 1, 16>>(out + cb * 16) +=
          Eigen::Map<const Blk>(dy + (n * CB + cb) * S * 16, S, 16).colwise().sum();
}

namespace {
// y[i] += v or *= v over one channel's plane (NCHW), or y[16 s + c] by v[c] over a
// block's pixels (nChw16c). Cloned per ISA: a lambda per element ran 4 wide (SSE2), and
// the bias pass was 8 % of a bf16 ResNet-20 predict.
LB_CLONES void plane_op(float* y, int64_t n, float v, bool mul) {
  if (mul)
    for (int64_t i = 0; i < n; ++i) y[i] *= v;
  else
    for (int64_t i = 0; i < n; ++i) y[i] += v;
}
LB_CLONES void block_op(float* y, int64_t S, const float* v16, bool mul) {
  float v[16];
  std::memcpy(v, v16, sizeof v);
  if (mul)
    for (int64_t s = 0; s < S; ++s)
      for (int c = 0; c < 16; ++c) y[s * 16 + c] *= v[c];
  else
    for (int64_t s = 0; s < S; ++s)
      for (int c = 0; c < 16; ++c) y[s * 16 + c] += v[c];
}
// y[i] op= v[i]: a dense layer's row (S = 1)
LB_CLONES void row_op(float* y, int64_t n, const float* v, bool mul) {
  if (mul)
    for (int64_t i = 0; i < n; ++i) y[i] *= v[i];
  else
    for (int64_t i = 0; i < n; ++i) y[i] += v[i];
}
void channel_op(float* y, const float* v, int64_t N, int64_t C, int64_t S, bool blocked, bool mul) {
  if (S == 1 && !blocked) {
#pragma omp parallel for schedule(static) if (N * C > 65536)
    for (int64_t n = 0; n < N; ++n) row_op(y + n * C, C, v, mul);
    return;
  }
  if (blocked) {
    const int64_t CB = C / 16;
#pragma omp parallel for schedule(static) if (N * C * S > 65536)
    for (int64_t nb = 0; nb < N * CB; ++nb) block_op(y + nb * S * 16, S, v + (nb % CB) * 16, mul);
    return;
  }
#pragma omp parallel for schedule(static) if (N * C * S > 65536)
  for (int64_t nc = 0; nc < N * C; ++nc) plane_op(y + nc * S, S, v[nc % C], mul);
}
}  // namespace

void add_channel_bias(float* y, const float* b, int64_t N, int64_t C, int64_t S, bool blocked) {
  channel_op(y, b, N, C, S, blocked, false);
}
void mul_channel_scale(float* y, const float* a, int64_t N, int64_t C, int64_t S, bool blocked) {
  channel_op(y, a, N, C, S, blocked, true);
}

std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

int64_t Config::i(const std::string& k, int64_t def) const {
  auto it = ints.find(k);
  if (it == ints.end()) return def;
  LB_CHECK(it->second.size() == 1, "argument '", k, "': expected one integer, got ", it->second.size());
  return it->second[0];
}
std::vector<int64_t> Config::iv(const std::string& k, size_t n, std::vector<int64_t> def) const {
  auto it = ints.find(k);
  if (it == ints.end()) return def;
  auto v = it->second;
  if (v.size() == 1 && n > 1) v.assign(n, v[0]);
  LB_CHECK(v.size() == n, "argument '", k, "': expected ", n, " integers, got ", v.size());
  return v;
}
double Config::f(const std::string& k, double def) const {
  auto it = floats.find(k);
  if (it != floats.end()) return it->second;
  auto jt = ints.find(k);
  if (jt != ints.end() && jt->second.size() == 1) return double(jt->second[0]);
  return def;
}
std::string Config::s(const std::string& k, const std::string& def) const {
  auto it = strs.find(k);
  return it == strs.end() ? def : it->second;
}

Pad1 pad1(const std::string& mode, int64_t explicit_pad, int64_t n, int64_t k, int64_t s, int64_t d,
          const char* op) {
  LB_CHECK(s >= 1, op, ": expected strides >= 1, got ", s);
  LB_CHECK(d >= 1, op, ": expected dilation_rate >= 1, got ", d);
  LB_CHECK(k >= 1, op, ": expected kernel/pool size >= 1, got ", k);
  int64_t ke = (k - 1) * d + 1;  // effective kernel extent
  Pad1 p{0, 0, 0};
  if (mode == "same") {
    int64_t out = (n + s - 1) / s;
    int64_t total = std::max<int64_t>((out - 1) * s + ke - n, 0);
    p.lo = total / 2;
    p.hi = total - p.lo;
  } else if (mode == "valid") {
  } else if (mode == "explicit") {
    LB_CHECK(explicit_pad >= 0, op, ": expected padding >= 0, got ", explicit_pad);
    p.lo = p.hi = explicit_pad;
  } else {
    LB_CHECK(false, op, ": unknown padding '", mode, "' (expected 'valid', 'same' or an integer)");
  }
  int64_t span = n + p.lo + p.hi - ke;
  LB_CHECK(span >= 0, op, ": input size ", n, " is smaller than the kernel extent ", ke,
           " with padding '", mode, "'");
  p.out = span / s + 1;
  return p;
}

ConvGeometry conv_geometry(const Config& cfg, const std::vector<Shape>& in) {
  LB_CHECK(in.size() == 1, "Conv2D: expected 1 input, got ", in.size());
  LB_CHECK(in[0].size() == 3, "Conv2D: expected input shape (C, H, W), got ", shape_str(in[0]));
  ConvGeometry g;
  g.C = in[0][0], g.H = in[0][1], g.W = in[0][2];
  g.O = cfg.i("filters", 0);
  LB_CHECK(g.O >= 1, "Conv2D: expected filters >= 1, got ", g.O);
  auto k = cfg.iv("kernel_size", 2, {0, 0});
  auto s = cfg.iv("strides", 2, {1, 1});
  auto d = cfg.iv("dilation_rate", 2, {1, 1});
  g.kh = k[0], g.kw = k[1], g.sh = s[0], g.sw = s[1], g.dh = d[0], g.dw = d[1];
  g.groups = cfg.i("groups", 1);
  LB_CHECK(g.groups >= 1 && g.C % g.groups == 0 && g.O % g.groups == 0, "Conv2D: groups=", g.groups,
           " must divide input channels ", g.C, " and filters ", g.O);
  std::string mode = cfg.ints.count("padding") ? "explicit" : cfg.s("padding", "valid");
  auto p = cfg.iv("padding", 2, {0, 0});
  g.ph = pad1(mode, p[0], g.H, g.kh, g.sh, g.dh, "Conv2D");
  g.pw = pad1(mode, p[1], g.W, g.kw, g.sw, g.dw, "Conv2D");
  return g;
}

void init_tensor(Tensor& t, const std::string& how, int64_t fan_in, int64_t fan_out, uint64_t seed) {
  const int64_t n = t.size();
  float* w = t.data();
  auto uniform = [&](double limit) {
    for (int64_t i = 0; i < n; ++i) w[i] = float((2.0 * uniform01(seed, 1, uint64_t(i)) - 1.0) * limit);
  };
  if (how == "zeros") {
    t.zero();
  } else if (how == "ones") {
    for (int64_t i = 0; i < n; ++i) w[i] = 1.f;
  } else if (how == "glorot_uniform") {  // Keras default: U(-l, l), l = sqrt(6/(fan_in+fan_out))
    uniform(std::sqrt(6.0 / double(fan_in + fan_out)));
  } else if (how == "he_uniform") {  // l = sqrt(6/fan_in)
    uniform(std::sqrt(6.0 / double(fan_in)));
  } else if (how == "he_normal") {
    // Keras: truncated normal (|z| < 2), stddev = sqrt(2/fan_in) / .8796 so the variance stays 2/fan_in
    double sd = std::sqrt(2.0 / double(fan_in)) / 0.87962566103423978;
    for (int64_t i = 0; i < n; ++i) {
      double z;
      uint64_t j = 0;
      do z = normal01(seed, 2 + j++, uint64_t(i));
      while (std::fabs(z) >= 2.0);
      w[i] = float(z * sd);
    }
  } else if (how == "torch") {  // PyTorch's default for conv/linear weight and bias: U(-1/sqrt(fan_in), ..)
    uniform(1.0 / std::sqrt(double(fan_in)));
  } else {
    LB_CHECK(false, "unknown initializer '", how,
             "' (expected glorot_uniform, he_normal, he_uniform, torch, zeros, ones)");
  }
}

}  // namespace lowbit
