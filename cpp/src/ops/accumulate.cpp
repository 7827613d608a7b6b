// Narrow-accumulator dot products (see accumulate.hpp for the definitions and order).
//
// Every dot product is still one chain of roundings in the documented order, but many
// independent chains run side by side: the operands are laid out (im2col, transposes)
// so that one multiply-add step of all outputs of a row is a contiguous loop, mac_lanes,
// which the compiler vectorises (AVX-512 / AVX2 / portable clones). A padded or
// stride-skipped tap becomes a zero product; adding it leaves an accumulator that is
// already on its grid unchanged, so the result equals the one-chain-at-a-time definition.
#include "lowbit/accumulate.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#include "lowbit/accum_fp16.hpp"
#include "lowbit/check.hpp"
#include "lowbit/float_round.hpp"
#include "lowbit/simd.hpp"

namespace lowbit {
namespace {

// Rounders of an exact double onto an accumulator grid, written without branches so
// that a loop of them vectorises. Exactness: a*b of two floats is exact in double and
// so is acc + a*b for any realistic exponent gap; the only rounding is the accumulator's.
// MiniFloat / Float16 / BFloat16: FloatRound<double> (float_round.hpp).

// Fixed(bits, msb): k = round(v / q) (nearest even or floor), saturated or wrapped into
// the bits-bit register; NaN stays NaN.
struct FixedRound {
  double q, inv_q, kmin, kmax;
  int shift;  // 64 - bits: wrap-around is the sign extension of the low bits
  bool floor_, wrap;
  explicit FixedRound(const Format& f) : FixedRound(f, fixed_grid(f, f.msb)) {}
  FixedRound(const Format& f, const FixedGrid& g)
      : q(g.q), inv_q(g.inv_q), kmin(g.kmin), kmax(g.kmax), shift(64 - f.bits),
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
LB_CLONES void mac_lanes(const FloatRound<double>& r, double* acc, const float* a, double b, int64_t n) {
  for (int64_t l = 0; l < n; ++l) acc[l] = r(acc[l] + double(a[l]) * b);
}
LB_CLONES void mac_lanes(const FixedRound& r, double* acc, const float* a, double b, int64_t n) {
  for (int64_t l = 0; l < n; ++l) acc[l] = r(acc[l] + double(a[l]) * b);
}
LB_CLONES void mac_lanes(const IntRegister& r, int64_t* acc, const int64_t* a, int64_t b, int64_t n) {
  for (int64_t l = 0; l < n; ++l) acc[l] = r(acc[l] + a[l] * b);
}

// binary16 chains on an fp16 kernel (accum_fp16.hpp): float registers and operands.
struct HalfChains {
  fp16acc::Path path;
};

// The value types of a rounder's register and of its operands.
template <class R> struct Lanes { using acc = double; using operand = float; };
template <> struct Lanes<IntRegister> { using acc = int64_t; using operand = int64_t; };
template <> struct Lanes<HalfChains> { using acc = float; using operand = float; };

// K multiply-add steps of n chains for each of `outs` outputs o, k ascending:
//   acc[o ldc + l] = R(acc[o ldc + l] + a[k lda + l] * b[o ldbo + k ldb])
// (the outputs share the rows of a; a kernel loads them once for several outputs).
template <class R, class A, class T>
void dot_rows(const R& r, A* acc, int64_t ldc, const T* a, int64_t lda, const T* b, int64_t ldb, int64_t ldbo,
              int64_t K, int64_t n, int64_t outs = 1) {
  for (int64_t o = 0; o < outs; ++o)
    for (int64_t k = 0; k < K; ++k) mac_lanes(r, acc + o * ldc, a + k * lda, A(b[o * ldbo + k * ldb]), n);
}
void dot_rows(const HalfChains& r, float* acc, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
              int64_t ldbo, int64_t K, int64_t n, int64_t outs = 1) {
  fp16acc::chains(r.path, acc, ldc, a, lda, b, ldb, ldbo, K, n, outs);
}
constexpr int64_t kOuts = 4;  // outputs per dot_rows call where they share rows

// Calls fn(rounder) with the rounder of a float or fixed-point accumulator format.
template <class Fn>
void with_float_rounder(const Format& f, Fn&& fn) {
  LB_CHECK(f.kind == FormatKind::minifloat || (f.kind == FormatKind::fixed && !f.msb_auto && f.is_signed),
           "accumulator: expected a MiniFloat or a signed Fixed format with a given msb, got ", f.repr());
  if (f.kind == FormatKind::fixed) fn(FixedRound(f));
  else fn(FloatRound<double>(f));
}

// The same, on an fp16 kernel when f is Float16 and every operand tensor holds binary16
// values only (then the kernel's chains equal the simulation's bit for bit).
struct Operand {
  const float* data;
  int64_t n;
};
template <class Fn>
void with_rounder(const Format& f, std::initializer_list<Operand> operands, Fn&& fn) {
  if (fp16acc::applies(f)) {
    const fp16acc::Path p = fp16acc::current();
    bool kernel = p != fp16acc::Path::simulate;
    for (const Operand& o : operands) kernel = kernel && fp16acc::all_half(o.data, o.n);
    fp16acc::count_call(kernel);
    if (kernel) return fn(HalfChains{p});
  }
  with_float_rounder(f, fn);
}

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
    std::vector<A> acc(static_cast<size_t>(kOuts * P));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      im2col(g, x + n * g.C * g.H * g.W, cols.data());
      for (int64_t grp = 0; grp < g.groups; ++grp)
        for (int64_t o = grp * Og; o < (grp + 1) * Og; o += kOuts) {
          const int64_t outs = std::min(kOuts, (grp + 1) * Og - o);
          std::fill(acc.begin(), acc.end(), A(0));
          dot_rows(r, acc.data(), P, cols.data() + grp * K * P, P, w + o * K, 1, K, K, P, outs);
          for (int64_t j = 0; j < outs; ++j) out(n, o + j, acc.data() + j * P, P);
        }
    }
  }
}

// z[n, m] = sum over k of x[n, k] w[k, m].
template <class R, class T, class Out>
void dense_forward(const R& r, int64_t N, int64_t K, int64_t M, const T* x, const T* w, Out out) {
  using A = typename Lanes<R>::acc;
  const int64_t blocks = (N + kOuts - 1) / kOuts;
#pragma omp parallel
  {
    std::vector<A> acc(static_cast<size_t>(kOuts * M));
#pragma omp for schedule(static)
    for (int64_t nb = 0; nb < blocks; ++nb) {
      const int64_t n = nb * kOuts, outs = std::min(kOuts, N - n);
      std::fill(acc.begin(), acc.end(), A(0));
      dot_rows(r, acc.data(), M, w, M, x + n * K, 1, K, K, M, outs);
      for (int64_t j = 0; j < outs; ++j) out(n + j, 0, acc.data() + j * M, M);
    }
  }
}

// Writes a float or double accumulator row to float outputs at base + index.
auto float_rows(float* z, int64_t per_n, int64_t per_o) {
  return [=](int64_t n, int64_t o, const auto* acc, int64_t len) {
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
    return with_rounder(f, {{x.data(), x.size()}, {w.data(), w.size()}}, [&](const auto& r) {
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
    return with_rounder(f, {{x.data(), x.size()}, {w.data(), w.size()}}, [&](const auto& r) {
      dense_forward(r, N, K, M, x.data(), w.data(), float_rows(z.data(), M, 0));
    });
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
  with_rounder(f, {{dz.data(), dz.size()}, {w.data(), w.size()}}, [&](const auto& r) {
    using A = typename Lanes<std::decay_t<decltype(r)>>::acc;
#pragma omp parallel
    {
      std::vector<float> taps(static_cast<size_t>(g.O * KK * HW)), wc(static_cast<size_t>(kOuts * Og * KK));
      std::vector<A> acc(static_cast<size_t>(kOuts * HW));
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        const float* dzn = dz.data() + n * g.O * OH * OW;
        for (int64_t o = 0; o < g.O; ++o)
          for (int64_t i = 0; i < g.kh; ++i)
            for (int64_t j = 0; j < g.kw; ++j) {
              // output (oh, ow) reaches input (oh sh - pad + i dh, ow sw - pad + j dw)
              float* row = taps.data() + ((o * g.kh + i) * g.kw + j) * HW;
              std::fill(row, row + HW, 0.f);
              for (int64_t oh = 0; oh < OH; ++oh) {
                const int64_t ih = oh * g.sh - g.ph.lo + i * g.dh;
                if (ih < 0 || ih >= g.H) continue;
                for (int64_t ow = 0; ow < OW; ++ow) {
                  const int64_t iw = ow * g.sw - g.pw.lo + j * g.dw;
                  if (iw >= 0 && iw < g.W) row[ih * g.W + iw] = dzn[(o * OH + oh) * OW + ow];
                }
              }
            }
        for (int64_t grp = 0; grp < g.groups; ++grp)
          for (int64_t c0 = 0; c0 < Cg; c0 += kOuts) {
            const int64_t outs = std::min(kOuts, Cg - c0);
            // the (o, i, j) weights of input channel c in a row: one chain of Og KK steps
            for (int64_t j = 0; j < outs; ++j)
              for (int64_t o = 0; o < Og; ++o)
                std::copy_n(w.data() + ((grp * Og + o) * Cg + c0 + j) * KK, KK, wc.begin() + (j * Og + o) * KK);
            std::fill(acc.begin(), acc.end(), A(0));
            dot_rows(r, acc.data(), HW, taps.data() + grp * Og * KK * HW, HW, wc.data(), 1, Og * KK, Og * KK, HW,
                     outs);
            for (int64_t j = 0; j < outs; ++j)
              float_rows(dx.data(), 0, HW)(0, n * g.C + grp * Cg + c0 + j, acc.data() + j * HW, HW);
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
  with_rounder(f, {{x.data(), x.size()}, {dz.data(), dz.size()}}, [&](const auto& r) {
    using A = typename Lanes<std::decay_t<decltype(r)>>::acc;
    // images outermost: the transposed columns of image n (P KC values) serve every
    // output channel while in cache; the chains' state for all (o, k) stays in acc
    std::vector<A> acc(static_cast<size_t>(g.O * K), A(0));
    const int64_t per_group = (Og + kOuts - 1) / kOuts;
#pragma omp parallel
    for (int64_t n = 0; n < N; ++n) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < g.groups * per_group; ++t) {
        const int64_t grp = t / per_group, o = grp * Og + (t % per_group) * kOuts;
        const int64_t outs = std::min(kOuts, (grp + 1) * Og - o);
        dot_rows(r, acc.data() + o * K, K, colsT.data() + n * P * KC + grp * K, KC, dz.data() + (n * g.O + o) * P, 1,
                 P, P, K, outs);
      }
    }
    float_rows(dw.data(), 0, 0)(0, 0, acc.data(), g.O * K);
  });
}

// dx[n, k] = sum over m of dz[n, m] w[k, m], on w transposed to (m, k).
void accum_dense_backward_data(const Format& f, const Tensor& dz, const Tensor& w, Tensor& dx) {
  const int64_t N = dz.dim(0), K = w.dim(0), M = w.dim(1);
  const auto wT = transposed(w.data(), K, M);
  with_rounder(f, {{dz.data(), dz.size()}, {wT.data(), int64_t(wT.size())}},
               [&](const auto& r) { dense_forward(r, N, M, K, dz.data(), wT.data(), float_rows(dx.data(), K, 0)); });
}

// dw[k, m] = sum over n of x[n, k] dz[n, m]: for each k, the chains of all m side by side.
void accum_dense_backward_weights(const Format& f, const Tensor& x, const Tensor& dz, Tensor& dw) {
  const int64_t N = x.dim(0), K = x.inner(), M = dz.inner();
  const auto xT = transposed(x.data(), N, K);  // (k, n)
  with_rounder(f, {{xT.data(), int64_t(xT.size())}, {dz.data(), dz.size()}},
               [&](const auto& r) { dense_forward(r, K, N, M, xT.data(), dz.data(), float_rows(dw.data(), M, 0)); });
}

// db[c] = sum over n, then s, of dy[n, c, s] (times 1, exact): one chain per channel, the
// chains of all channels side by side on dy transposed to ((n, s), c).
void accum_bias_backward(const Format& f, const float* dy, int64_t N, int64_t C, int64_t S, float* db) {
  std::vector<float> dyT(static_cast<size_t>(N * S * C));
  for (int64_t n = 0; n < N; ++n) {
    const auto t = transposed(dy + n * C * S, C, S);
    std::copy(t.begin(), t.end(), dyT.begin() + n * S * C);
  }
  const float one = 1.f;
  with_rounder(f, {{dyT.data(), int64_t(dyT.size())}}, [&](const auto& r) {
    std::vector<typename Lanes<std::decay_t<decltype(r)>>::acc> acc(static_cast<size_t>(C));
    dot_rows(r, acc.data(), C, dyT.data(), C, &one, 0, 0, N * S, C);
    float_rows(db, 0, 0)(0, 0, acc.data(), C);
  });
}

}  // namespace lowbit
