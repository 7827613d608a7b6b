// Narrow-accumulator dot products (see accumulate.hpp for the definitions and order).
//
// Every dot product is still one chain of roundings in the documented order, but many
// independent chains run side by side: the operands are laid out (im2col, transposes)
// so that one multiply-add step of all outputs of a row is a contiguous loop, mac_lanes,
// which the compiler vectorises (AVX-512 / AVX2 / portable clones). A padded or
// stride-skipped tap becomes a zero product; adding it leaves an accumulator that is
// already on its grid unchanged, so the result equals the one-chain-at-a-time definition.
#include "lowbit/accumulate.hpp"

#include <cmath>
#include <cstring>
#include <limits>

#include "lowbit/check.hpp"
#include "lowbit/simd.hpp"

namespace lowbit {
namespace {

// Rounders of an exact double onto an accumulator grid, written without branches so
// that a loop of them vectorises. Exactness: a*b of two floats is exact in double and
// so is acc + a*b for any realistic exponent gap; the only rounding is the accumulator's.

// MiniFloat / Float16 / BFloat16: round half to even on the double's bit pattern (a
// carry moves into the exponent as it should); below 2^emin, on the subnormal spacing
// s by the add-and-subtract of 2^52 s. Overflow gives inf, or the largest finite value
// for a saturating format; NaN stays NaN.
struct FloatRound {
  uint64_t drop, half, mask;
  double min_normal, magic, maxv, ovf;
  explicit FloatRound(const Format& f) {
    const int emin = 2 - (1 << (f.exp_bits - 1));
    drop = uint64_t(52 - f.man_bits);
    half = (uint64_t(1) << (drop - 1)) - 1, mask = ~((uint64_t(1) << drop) - 1);
    min_normal = std::ldexp(1.0, emin);
    magic = std::ldexp(1.0, emin - f.man_bits + 52);
    maxv = double(f.clip_value());  // the largest finite value, exact in float
    // overflow (format.hpp): saturate, or NaN for OCP "fn" (E4M3FN), inf for IEEE-like;
    // fn formats without a NaN code (FP6/FP4) always saturate
    ovf = f.saturate || (f.fn && !f.fn_nan) ? maxv
          : f.fn                            ? std::numeric_limits<double>::quiet_NaN()
                                            : std::numeric_limits<double>::infinity();
  }
  double operator()(double v) const {
    const double a = std::fabs(v);
    uint64_t u;
    std::memcpy(&u, &a, 8);
    u = (u + half + ((u >> drop) & 1u)) & mask;
    double normal;
    std::memcpy(&normal, &u, 8);
    const double sub = (a + magic) - magic;
    double r = a < min_normal ? sub : normal;
    r = r > maxv ? ovf : r;
    r = a != a ? a : r;
    return std::copysign(r, v);
  }
};

// Fixed(bits, msb): k = round(v / q) (nearest even or floor), saturated or wrapped into
// the bits-bit register; NaN stays NaN.
struct FixedRound {
  double q, inv_q, kmin, kmax;
  int shift;  // 64 - bits: wrap-around is the sign extension of the low bits
  bool floor_, wrap;
  explicit FixedRound(const Format& f)
      : q(std::ldexp(1.0, f.msb + 1 - f.bits)), inv_q(std::ldexp(1.0, f.bits - 1 - f.msb)),
        kmin(-std::ldexp(1.0, f.bits - 1)), kmax(std::ldexp(1.0, f.bits - 1) - 1), shift(64 - f.bits),
        floor_(f.rounding == Rounding::floor), wrap(f.overflow == Overflow::wrap) {}
  double operator()(double v) const {
    const double k = floor_ ? std::floor(v * inv_q) : std::nearbyint(v * inv_q);
    double r;
    if (wrap) {
      const int64_t ki = int64_t(k != k ? 0.0 : std::fmin(std::fmax(k, -9e18), 9e18));
      r = double(int64_t(uint64_t(ki) << shift) >> shift);
    } else {
      r = std::fmin(std::fmax(k, kmin), kmax);
    }
    return k != k ? v : r * q;
  }
};

// Int(bits) register of integer products k_a k_b, saturating or wrapping at every add.
struct IntRegister {
  int64_t lo, hi;
  int shift;
  bool wrap;
  explicit IntRegister(const Format& f)
      : lo(-(int64_t(1) << (f.bits - 1))), hi((int64_t(1) << (f.bits - 1)) - 1), shift(64 - f.bits),
        wrap(f.overflow == Overflow::wrap) {}
  int64_t operator()(int64_t v) const {
    return wrap ? int64_t(uint64_t(v) << shift) >> shift : (v < lo ? lo : (v > hi ? hi : v));
  }
};

// One multiply-add step of n independent chains: acc[l] = R(acc[l] + a[l] * b).
LB_CLONES void mac_lanes(const FloatRound& r, double* acc, const float* a, double b, int64_t n) {
  for (int64_t l = 0; l < n; ++l) acc[l] = r(acc[l] + double(a[l]) * b);
}
LB_CLONES void mac_lanes(const FixedRound& r, double* acc, const float* a, double b, int64_t n) {
  for (int64_t l = 0; l < n; ++l) acc[l] = r(acc[l] + double(a[l]) * b);
}
LB_CLONES void mac_lanes(const IntRegister& r, int64_t* acc, const int64_t* a, int64_t b, int64_t n) {
  for (int64_t l = 0; l < n; ++l) acc[l] = r(acc[l] + a[l] * b);
}

// Calls fn(rounder) with the rounder of a float or fixed-point accumulator format.
template <class Fn>
void with_float_rounder(const Format& f, Fn&& fn) {
  LB_CHECK(f.kind == FormatKind::minifloat || (f.kind == FormatKind::fixed && !f.msb_auto),
           "accumulator: expected a MiniFloat or a Fixed format with a given msb, got ", f.repr());
  if (f.kind == FormatKind::fixed) fn(FixedRound(f));
  else fn(FloatRound(f));
}

// The value types of a rounder's register and of its operands.
template <class R> struct Lanes { using acc = double; using operand = float; };
template <> struct Lanes<IntRegister> { using acc = int64_t; using operand = int64_t; };

// cols[(c, i, j), p] = x[c, p's tap (i, j)] of one image (C, H, W), 0 outside the image;
// p = (oh, ow) row-major. The rows are the forward sum's order.
template <class T>
void im2col(const ConvGeometry& g, const T* x, T* cols) {
  const int64_t OH = g.ph.out, OW = g.pw.out;
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        T* row = cols + ((c * g.kh + i) * g.kw + j) * OH * OW;
        for (int64_t oh = 0; oh < OH; ++oh) {
          const int64_t ih = oh * g.sh - g.ph.lo + i * g.dh;
          for (int64_t ow = 0; ow < OW; ++ow) {
            const int64_t iw = ow * g.sw - g.pw.lo + j * g.dw;
            row[oh * OW + ow] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? x[(c * g.H + ih) * g.W + iw] : T(0);
          }
        }
      }
}

// z[n, o, p] = sum over (c, i, j) of cols[(c, i, j), p] w[o, (c, i, j)]; `out(o, acc)`
// turns the accumulator row of output channel o into floats.
template <class R, class T, class Out>
void conv_forward(const R& r, const ConvGeometry& g, int64_t N, const T* x, const T* w, Out out) {
  using A = typename Lanes<R>::acc;
  const int64_t Cg = g.C / g.groups, Og = g.O / g.groups, K = Cg * g.kh * g.kw, P = g.ph.out * g.pw.out;
#pragma omp parallel
  {
    std::vector<T> cols(static_cast<size_t>(g.C * g.kh * g.kw * P));
    std::vector<A> acc(static_cast<size_t>(P));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      im2col(g, x + n * g.C * g.H * g.W, cols.data());
      for (int64_t o = 0; o < g.O; ++o) {
        const T* rows = cols.data() + (o / Og) * K * P;
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t k = 0; k < K; ++k) mac_lanes(r, acc.data(), rows + k * P, A(w[o * K + k]), P);
        out(n, o, acc.data(), P);
      }
    }
  }
}

// z[n, m] = sum over k of x[n, k] w[k, m].
template <class R, class T, class Out>
void dense_forward(const R& r, int64_t N, int64_t K, int64_t M, const T* x, const T* w, Out out) {
  using A = typename Lanes<R>::acc;
#pragma omp parallel
  {
    std::vector<A> acc(static_cast<size_t>(M));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t k = 0; k < K; ++k) mac_lanes(r, acc.data(), w + k * M, A(x[n * K + k]), M);
      out(n, 0, acc.data(), M);
    }
  }
}

// Writes a double accumulator row to float outputs at base + index.
auto float_rows(float* z, int64_t per_n, int64_t per_o) {
  return [=](int64_t n, int64_t o, const double* acc, int64_t len) {
    float* dst = z + n * per_n + o * per_o;
    for (int64_t l = 0; l < len; ++l) dst[l] = float(acc[l]);
  };
}
// Writes an integer register row times the operand steps (one for a; one for b, or one
// per output channel o) as floats.
auto int_rows(float* z, int64_t per_n, int64_t per_o, double step_a, const std::vector<float>& step_b) {
  return [=, &step_b](int64_t n, int64_t o, const int64_t* acc, int64_t len) {
    float* dst = z + n * per_n + o * per_o;
    const double s = step_a * double(step_b.size() > 1 ? step_b[size_t(o)] : step_b[0]);
    for (int64_t l = 0; l < len; ++l) dst[l] = float(double(acc[l]) * s);
  };
}

// k = x / step for values on an integer grid (rows of equal length, one step per row).
std::vector<int64_t> to_integers(const Tensor& t, const std::vector<float>& step) {
  std::vector<int64_t> k(static_cast<size_t>(t.size()));
  const int64_t rows = int64_t(step.size()), inner = t.size() / rows;
  for (int64_t r = 0; r < rows; ++r) {
    const double s = step[size_t(r)];
    for (int64_t i = r * inner; i < (r + 1) * inner; ++i)
      k[size_t(i)] = s > 0 ? int64_t(std::nearbyint(double(t.data()[i]) / s)) : 0;
  }
  return k;
}

void check_ints(const IntOperands& ints, const char* what) {
  LB_CHECK(ints.step_a && ints.step_b && !ints.step_a->empty() && !ints.step_b->empty(), what,
           ": an Int accumulator needs input and weight formats on an integer grid (Int, Fixed, Binary, Ternary)");
}

// (rows, cols) -> (cols, rows)
std::vector<float> transposed(const float* a, int64_t rows, int64_t cols) {
  std::vector<float> t(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[size_t(c * rows + r)] = a[r * cols + c];
  return t;
}

}  // namespace

void accum_conv_forward(const Format& f, const ConvGeometry& g, const Tensor& x, const Tensor& w, Tensor& z,
                        const IntOperands& ints) {
  const int64_t N = x.dim(0), P = g.ph.out * g.pw.out;
  if (f.kind != FormatKind::integer)
    return with_float_rounder(f, [&](const auto& r) {
      conv_forward(r, g, N, x.data(), w.data(), float_rows(z.data(), g.O * P, P));
    });
  check_ints(ints, "Conv2D");
  const auto ka = to_integers(x, *ints.step_a), kb = to_integers(w, *ints.step_b);
  conv_forward(IntRegister(f), g, N, ka.data(), kb.data(),
               int_rows(z.data(), g.O * P, P, (*ints.step_a)[0], *ints.step_b));
}

void accum_dense_forward(const Format& f, const Tensor& x, const Tensor& w, Tensor& z, const IntOperands& ints) {
  const int64_t N = x.dim(0), K = w.dim(0), M = w.dim(1);
  if (f.kind != FormatKind::integer)
    return with_float_rounder(f, [&](const auto& r) { dense_forward(r, N, K, M, x.data(), w.data(), float_rows(z.data(), M, 0)); });
  check_ints(ints, "Dense");
  const auto ka = to_integers(x, *ints.step_a), kb = to_integers(w, *ints.step_b);
  // a dense kernel (K, M) has no per-output-row storage: one weight step
  const std::vector<float> one_step{(*ints.step_b)[0]};
  dense_forward(IntRegister(f), N, K, M, ka.data(), kb.data(), int_rows(z.data(), M, 0, (*ints.step_a)[0], one_step));
}

// dx[n, c, h, w] = sum over (o, i, j) of dz[n, o, tap] w[o, c, i, j]: the rows
// taps[(o, i, j), (h, w)] hold the dz value that (h, w) receives through tap (i, j) of
// output channel o, or 0 where no output position reaches it (padding, stride).
void accum_conv_backward_data(const Format& f, const ConvGeometry& g, const Tensor& dz, const Tensor& w, Tensor& dx) {
  const int64_t N = dz.dim(0), Cg = g.C / g.groups, Og = g.O / g.groups, OH = g.ph.out, OW = g.pw.out;
  const int64_t HW = g.H * g.W, KK = g.kh * g.kw;
  with_float_rounder(f, [&](const auto& r) {
#pragma omp parallel
    {
      std::vector<float> taps(static_cast<size_t>(g.O * KK * HW));
      std::vector<double> acc(static_cast<size_t>(HW));
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        const float* dzn = dz.data() + n * g.O * OH * OW;
        for (int64_t o = 0; o < g.O; ++o)
          for (int64_t i = 0; i < g.kh; ++i)
            for (int64_t j = 0; j < g.kw; ++j) {
              float* row = taps.data() + ((o * g.kh + i) * g.kw + j) * HW;
              for (int64_t ih = 0; ih < g.H; ++ih) {
                const int64_t th = ih + g.ph.lo - i * g.dh;  // = oh * sh
                const bool hv = th >= 0 && th % g.sh == 0 && th / g.sh < OH;
                for (int64_t iw = 0; iw < g.W; ++iw) {
                  const int64_t tw = iw + g.pw.lo - j * g.dw;
                  const bool ok = hv && tw >= 0 && tw % g.sw == 0 && tw / g.sw < OW;
                  row[ih * g.W + iw] = ok ? dzn[(o * OH + th / g.sh) * OW + tw / g.sw] : 0.f;
                }
              }
            }
        for (int64_t cc = 0; cc < g.C; ++cc) {
          const int64_t grp = cc / Cg, c = cc % Cg;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t o = grp * Og; o < (grp + 1) * Og; ++o)
            for (int64_t ij = 0; ij < KK; ++ij)
              mac_lanes(r, acc.data(), taps.data() + (o * KK + ij) * HW, double(w.data()[(o * Cg + c) * KK + ij]), HW);
          float* dst = dx.data() + (n * g.C + cc) * HW;
          for (int64_t l = 0; l < HW; ++l) dst[l] = float(acc[size_t(l)]);
        }
      }
    }
  });
}

// dw[o, (c, i, j)] = sum over (n, p) of dz[n, o, p] cols_n[(c, i, j), p]: the chains of
// one output channel run side by side over (c, i, j), on the transposed im2col rows.
void accum_conv_backward_weights(const Format& f, const ConvGeometry& g, const Tensor& x, const Tensor& dz,
                                 Tensor& dw) {
  const int64_t N = x.dim(0), Cg = g.C / g.groups, Og = g.O / g.groups, P = g.ph.out * g.pw.out;
  const int64_t KC = g.C * g.kh * g.kw, K = Cg * g.kh * g.kw;
  std::vector<float> colsT(static_cast<size_t>(N * P * KC));  // (n, p, (c, i, j))
#pragma omp parallel
  {
    std::vector<float> cols(static_cast<size_t>(KC * P));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      im2col(g, x.data() + n * g.C * g.H * g.W, cols.data());
      const auto t = transposed(cols.data(), KC, P);
      std::copy(t.begin(), t.end(), colsT.begin() + n * P * KC);
    }
  }
  with_float_rounder(f, [&](const auto& r) {
#pragma omp parallel
    {
      std::vector<double> acc(static_cast<size_t>(K));
#pragma omp for schedule(static)
      for (int64_t o = 0; o < g.O; ++o) {
        const int64_t k0 = (o / Og) * K;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t p = 0; p < P; ++p)
            mac_lanes(r, acc.data(), colsT.data() + (n * P + p) * KC + k0, double(dz.data()[(n * g.O + o) * P + p]), K);
        for (int64_t k = 0; k < K; ++k) dw.data()[o * K + k] = float(acc[size_t(k)]);
      }
    }
  });
}

// dx[n, k] = sum over m of dz[n, m] w[k, m], on w transposed to (m, k).
void accum_dense_backward_data(const Format& f, const Tensor& dz, const Tensor& w, Tensor& dx) {
  const int64_t N = dz.dim(0), K = w.dim(0), M = w.dim(1);
  const auto wT = transposed(w.data(), K, M);
  with_float_rounder(f, [&](const auto& r) { dense_forward(r, N, M, K, dz.data(), wT.data(), float_rows(dx.data(), K, 0)); });
}

// dw[k, m] = sum over n of x[n, k] dz[n, m]: for each k, the chains of all m side by side.
void accum_dense_backward_weights(const Format& f, const Tensor& x, const Tensor& dz, Tensor& dw) {
  const int64_t N = x.dim(0), K = x.inner(), M = dz.inner();
  const auto xT = transposed(x.data(), N, K);  // (k, n)
  with_float_rounder(f, [&](const auto& r) { dense_forward(r, K, N, M, xT.data(), dz.data(), float_rows(dw.data(), M, 0)); });
}

// db[c] = sum over n, then s, of dy[n, c, s]: one chain per channel.
void accum_bias_backward(const Format& f, const float* dy, int64_t N, int64_t C, int64_t S, float* db) {
  with_float_rounder(f, [&](const auto& r) {
    for (int64_t c = 0; c < C; ++c) {
      double v = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t s = 0; s < S; ++s) v = r(v + double(dy[(n * C + c) * S + s]));
      db[c] = float(v);
    }
  });
}

}  // namespace lowbit
