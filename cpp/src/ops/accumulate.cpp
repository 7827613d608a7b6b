// Narrow-accumulator dot products (see accumulate.hpp for the definitions and order).
// Each loop nest is written once over an accumulator policy: FloatAcc rounds the exact
// (double) value of acc + a*b to a float or fixed-point grid (ScalarRounder, format.hpp); IntAcc adds k_a k_b in an
// integer register that saturates or wraps at every add.
#include "lowbit/accumulate.hpp"

#include <cmath>

namespace lowbit {
namespace {

struct FloatAcc {
  ScalarRounder round;
  const float *a, *b;
  double v = 0;
  void reset() { v = 0; }
  // a*b of two floats is exact in double, and so is the sum for any realistic exponent
  // gap: the only rounding is the accumulator's
  void mac(int64_t i, int64_t j) { v = round(v + double(a[i]) * double(b[j])); }
  float result(int64_t /*row*/) const { return float(v); }
};

struct IntAcc {
  int bits;
  Overflow overflow;
  const int64_t *a, *b;
  const float *sa, *sb;
  int64_t sb_rows;
  int64_t v = 0;
  void reset() { v = 0; }
  void mac(int64_t i, int64_t j) { v = overflow_int(v + a[i] * b[j], bits, overflow); }
  float result(int64_t row) const { return float(double(v) * double(sa[0]) * double(sb[sb_rows > 1 ? row : 0])); }
};

// k = x / step for values on an integer grid (rows of equal length, one step per row).
std::vector<int64_t> to_integers(const Tensor& t, const std::vector<float>& step) {
  std::vector<int64_t> k(size_t(t.size()));
  const int64_t rows = int64_t(step.size()), inner = t.size() / rows;
  for (int64_t r = 0; r < rows; ++r) {
    const double s = step[size_t(r)];
    for (int64_t i = r * inner; i < (r + 1) * inner; ++i)
      k[size_t(i)] = s > 0 ? int64_t(std::nearbyint(double(t.data()[i]) / s)) : 0;
  }
  return k;
}

template <class Acc>
void conv_forward(Acc proto, const ConvGeometry& g, int64_t N, float* z) {
  const int64_t O = g.O, Cg = g.C / g.groups, Og = O / g.groups, OH = g.ph.out, OW = g.pw.out;
#pragma omp parallel for schedule(static)
  for (int64_t no = 0; no < N * O; ++no) {
    Acc acc = proto;
    const int64_t n = no / O, o = no % O, c0 = (o / Og) * Cg;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        acc.reset();
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t ih = oh * g.sh - g.ph.lo + i * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t iw = ow * g.sw - g.pw.lo + j * g.dw;
              if (iw < 0 || iw >= g.W) continue;
              acc.mac(((n * g.C + c0 + c) * g.H + ih) * g.W + iw, ((o * Cg + c) * g.kh + i) * g.kw + j);
            }
          }
        z[(no * OH + oh) * OW + ow] = acc.result(o);
      }
  }
}

template <class Acc>
void dense_forward(Acc proto, int64_t N, int64_t K, int64_t M, float* z) {
#pragma omp parallel for schedule(static)
  for (int64_t nm = 0; nm < N * M; ++nm) {
    Acc acc = proto;
    const int64_t n = nm / M, m = nm % M;
    for (int64_t k = 0; k < K; ++k) acc.mac(n * K + k, k * M + m);
    z[nm] = acc.result(m);
  }
}

void check_ints(const IntOperands& ints, const char* what) {
  LB_CHECK(ints.step_a && ints.step_b && !ints.step_a->empty() && !ints.step_b->empty(), what,
           ": an Int accumulator needs input and weight formats on an integer grid (Int, Fixed, Binary, Ternary)");
}

}  // namespace

void accum_conv_forward(const Format& f, const ConvGeometry& g, const Tensor& x, const Tensor& w, Tensor& z,
                        const IntOperands& ints) {
  const int64_t N = x.dim(0);
  if (f.kind != FormatKind::integer) return conv_forward(FloatAcc{ScalarRounder(f), x.data(), w.data()}, g, N, z.data());
  check_ints(ints, "Conv2D");
  const auto ka = to_integers(x, *ints.step_a), kb = to_integers(w, *ints.step_b);
  conv_forward(IntAcc{f.bits, f.overflow, ka.data(), kb.data(), ints.step_a->data(), ints.step_b->data(),
                      int64_t(ints.step_b->size())},
               g, N, z.data());
}

void accum_dense_forward(const Format& f, const Tensor& x, const Tensor& w, Tensor& z, const IntOperands& ints) {
  const int64_t N = x.dim(0), K = w.dim(0), M = w.dim(1);
  if (f.kind != FormatKind::integer) return dense_forward(FloatAcc{ScalarRounder(f), x.data(), w.data()}, N, K, M, z.data());
  check_ints(ints, "Dense");
  const auto ka = to_integers(x, *ints.step_a), kb = to_integers(w, *ints.step_b);
  // a dense kernel (K, M) has no per-output-row storage: one weight step
  dense_forward(IntAcc{f.bits, f.overflow, ka.data(), kb.data(), ints.step_a->data(), ints.step_b->data(), 1}, N, K,
                M, z.data());
}

void accum_conv_backward_data(const Format& f, const ConvGeometry& g, const Tensor& dz, const Tensor& w, Tensor& dx) {
  const int64_t N = dz.dim(0), Cg = g.C / g.groups, Og = g.O / g.groups, OH = g.ph.out, OW = g.pw.out;
  const FloatAcc proto{ScalarRounder(f), dz.data(), w.data()};
#pragma omp parallel for schedule(static)
  for (int64_t nc = 0; nc < N * g.C; ++nc) {
    FloatAcc acc = proto;
    const int64_t n = nc / g.C, cc = nc % g.C, grp = cc / Cg, c = cc % Cg;
    for (int64_t ih = 0; ih < g.H; ++ih)
      for (int64_t iw = 0; iw < g.W; ++iw) {
        acc.reset();
        for (int64_t o = grp * Og; o < (grp + 1) * Og; ++o)
          for (int64_t i = 0; i < g.kh; ++i) {
            const int64_t th = ih + g.ph.lo - i * g.dh;  // = oh * sh
            if (th < 0 || th % g.sh) continue;
            const int64_t oh = th / g.sh;
            if (oh >= OH) continue;
            for (int64_t j = 0; j < g.kw; ++j) {
              const int64_t tw = iw + g.pw.lo - j * g.dw;
              if (tw < 0 || tw % g.sw) continue;
              const int64_t ow = tw / g.sw;
              if (ow >= OW) continue;
              acc.mac(((n * g.O + o) * OH + oh) * OW + ow, ((o * Cg + c) * g.kh + i) * g.kw + j);
            }
          }
        dx.data()[(nc * g.H + ih) * g.W + iw] = acc.result(0);
      }
  }
}

void accum_conv_backward_weights(const Format& f, const ConvGeometry& g, const Tensor& x, const Tensor& dz,
                                 Tensor& dw) {
  const int64_t N = x.dim(0), Cg = g.C / g.groups, Og = g.O / g.groups, OH = g.ph.out, OW = g.pw.out;
  const FloatAcc proto{ScalarRounder(f), dz.data(), x.data()};
#pragma omp parallel for schedule(static)
  for (int64_t oc = 0; oc < g.O * Cg; ++oc) {
    FloatAcc acc = proto;
    const int64_t o = oc / Cg, c = oc % Cg, cin = (o / Og) * Cg + c;
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        acc.reset();
        for (int64_t n = 0; n < N; ++n)
          for (int64_t oh = 0; oh < OH; ++oh) {
            const int64_t ih = oh * g.sh - g.ph.lo + i * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t ow = 0; ow < OW; ++ow) {
              const int64_t iw = ow * g.sw - g.pw.lo + j * g.dw;
              if (iw < 0 || iw >= g.W) continue;
              acc.mac(((n * g.O + o) * OH + oh) * OW + ow, ((n * g.C + cin) * g.H + ih) * g.W + iw);
            }
          }
        dw.data()[(oc * g.kh + i) * g.kw + j] = acc.result(0);
      }
  }
}

void accum_dense_backward_data(const Format& f, const Tensor& dz, const Tensor& w, Tensor& dx) {
  const int64_t N = dz.dim(0), K = w.dim(0), M = w.dim(1);
  const FloatAcc proto{ScalarRounder(f), dz.data(), w.data()};
#pragma omp parallel for schedule(static)
  for (int64_t nk = 0; nk < N * K; ++nk) {
    FloatAcc acc = proto;
    const int64_t n = nk / K, k = nk % K;
    for (int64_t m = 0; m < M; ++m) acc.mac(n * M + m, k * M + m);
    dx.data()[nk] = acc.result(0);
  }
}

void accum_dense_backward_weights(const Format& f, const Tensor& x, const Tensor& dz, Tensor& dw) {
  const int64_t N = x.dim(0), K = x.inner(), M = dz.inner();
  const FloatAcc proto{ScalarRounder(f), x.data(), dz.data()};
#pragma omp parallel for schedule(static)
  for (int64_t km = 0; km < K * M; ++km) {
    FloatAcc acc = proto;
    const int64_t k = km / M, m = km % M;
    for (int64_t n = 0; n < N; ++n) acc.mac(n * K + k, n * M + m);
    dw.data()[km] = acc.result(0);
  }
}

void accum_bias_backward(const Format& f, const float* dy, int64_t N, int64_t C, int64_t S, float* db) {
  static const float one = 1.f;
  for (int64_t c = 0; c < C; ++c) {
    FloatAcc acc{ScalarRounder(f), dy, &one};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t s = 0; s < S; ++s) acc.mac((n * C + c) * S + s, 0);
    db[c] = acc.result(0);
  }
}

}  // namespace lowbit
