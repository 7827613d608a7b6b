// Quantizers and their straight-through gradients (see format.hpp for the table).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "lowbit/check.hpp"
#include "lowbit/format.hpp"
#include "lowbit/rng.hpp"
#include "lowbit/simd.hpp"

namespace lowbit {

namespace {

const char* rounding_name(Rounding r) {
  return r == Rounding::nearest ? "nearest" : r == Rounding::floor ? "floor" : "stochastic";
}
const char* ste_name(Ste s) {
  switch (s) {
    case Ste::identity: return "identity";
    case Ste::clipped: return "clipped";
    case Ste::hardtanh: return "hardtanh";
    case Ste::approx_sign: return "approx_sign";
    default: return "none";
  }
}

double minifloat_max(int e, int m) {
  const int bias = (1 << (e - 1)) - 1, emax = (1 << e) - 2 - bias;
  return (2.0 - std::ldexp(1.0, -m)) * std::ldexp(1.0, emax);
}

LB_CLONES float max_abs(const float* x, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// The same rounding, vectorisable, on float32 bit patterns: in the target's normal range
// round-half-to-even to m mantissa bits is an integer add on the bits (a carry moves into
// the exponent as it should); below 2^emin the grid spacing is the fixed 2^(emin - m).
LB_CLONES void minifloat_f32(const float* x, float* y, int64_t n, int m, bool sat, float maxv, int emin) {
  const uint32_t drop = uint32_t(23 - m);
  const uint32_t half = drop ? (1u << (drop - 1)) - 1 : 0, mask = drop ? ~((1u << drop) - 1) : ~0u;
  const float min_normal = std::ldexp(1.0f, emin);
  const double sub_scale = std::ldexp(1.0, m - emin), sub_step = std::ldexp(1.0, emin - m);
  const float big = sat ? maxv : std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i], a = std::fabs(v);
    float r;
    if (a >= min_normal) {
      uint32_t u;
      std::memcpy(&u, &a, 4);
      u = (u + half + ((u >> drop) & 1u)) & mask;
      std::memcpy(&r, &u, 4);
    } else {  // target subnormals, zeros and NaN
      r = a != a ? a : float(std::nearbyint(double(a) * sub_scale) * sub_step);
    }
    y[i] = std::copysign(r > maxv ? big : r, v);
  }
}

// Integer grid k*s, k in [kmin, kmax], from one scale (and zero point).
double int_grid(const float* x, float* y, int64_t n, double s, double zp, double kmin, double kmax) {
  if (!(s > 0)) {
    for (int64_t i = 0; i < n; ++i) y[i] = 0.f;
    return 0.0;
  }
  for (int64_t i = 0; i < n; ++i) {
    double k = std::min(std::max(std::nearbyint(double(x[i]) / s) + zp, kmin), kmax);
    y[i] = float((k - zp) * s);
  }
  return s;
}

// Fixed point with nearest/floor rounding in float arithmetic: scaling by the power of
// two 1/q is exact and every k up to 2^24 is a float, so this equals the double path
// for bits <= 24 and vectorises.
LB_CLONES void fixed_f32(const float* x, float* y, int64_t n, float inv_q, float q, float kmin, float kmax,
                         bool floor_mode) {
  if (floor_mode)
    for (int64_t i = 0; i < n; ++i) y[i] = std::min(std::max(std::floor(x[i] * inv_q), kmin), kmax) * q;
  else
    for (int64_t i = 0; i < n; ++i) y[i] = std::min(std::max(std::nearbyint(x[i] * inv_q), kmin), kmax) * q;
}

double abs_percentile(const float* x, int64_t n, double p) {
  std::vector<float> a(x, x + n);
  for (auto& v : a) v = std::fabs(v);
  int64_t k = std::min<int64_t>(n - 1, int64_t(std::ceil(p / 100.0 * double(n))) - 1);
  k = std::max<int64_t>(k, 0);
  std::nth_element(a.begin(), a.begin() + k, a.end());
  return a[size_t(k)];
}

// Returns the grid step s.
double quantize_int(const Format& f, const float* x, float* y, int64_t n, QuantState* st = nullptr) {
  if (n == 0) return 0.0;
  if (f.symmetric) {
    const double qmax = std::ldexp(1.0, f.bits - 1) - 1;
    double amax = max_abs(x, n);
    if (f.calibration == Calibration::percentile) amax = abs_percentile(x, n, 99.99);
    if (st && !st->is_weight) {
      if (st->track)
        st->running_amax = st->running_amax < 0 ? float(amax) : 0.99f * st->running_amax + 0.01f * float(amax);
      else if (st->running_amax >= 0)
        amax = st->running_amax;
    }
    if (f.calibration == Calibration::mse && amax > 0) {
      // choose the clipping range among 100 candidates by the quantization MSE
      std::vector<float> tmp(static_cast<size_t>(n));
      double best = std::numeric_limits<double>::infinity(), best_a = amax;
      for (int c = 100; c >= 10; --c) {
        double a = amax * c / 100.0;
        int_grid(x, tmp.data(), n, a / qmax, 0, -qmax, qmax);
        double err = 0;
        for (int64_t i = 0; i < n; ++i) err += (double(tmp[size_t(i)]) - x[i]) * (double(tmp[size_t(i)]) - x[i]);
        if (err < best) best = err, best_a = a;
      }
      amax = best_a;
    }
    return int_grid(x, y, n, amax / qmax, 0, -qmax, qmax);
  }
  const double levels = std::ldexp(1.0, f.bits) - 1;
  double lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) lo = std::min(lo, double(x[i])), hi = std::max(hi, double(x[i]));
  double s = (hi - lo) / levels;
  double zp = s > 0 ? std::nearbyint(-lo / s) : 0;
  return int_grid(x, y, n, s, zp, 0, levels);  // (k - zp) s: still whole multiples of s
}

}  // namespace

void Format::validate() const {
  LB_CHECK(bits >= 1 && bits <= 32, "format: expected bits in [1, 32], got ", bits);
  if (kind == FormatKind::minifloat) {
    LB_CHECK(exp_bits >= 2 && exp_bits <= 8, "MiniFloat: expected exp_bits in [2, 8], got ", exp_bits);
    LB_CHECK(man_bits >= 0 && man_bits <= 23, "MiniFloat: expected man_bits in [0, 23], got ", man_bits);
  }
  if (kind == FormatKind::integer) LB_CHECK(bits >= 2, "Int: expected bits >= 2, got ", bits);
  if (kind == FormatKind::fixed) LB_CHECK(msb >= -126 && msb <= 127, "Fixed: expected msb in [-126, 127], got ", msb);
  LB_CHECK(hysteresis >= 0.f, "Binary: expected hysteresis >= 0, got ", hysteresis);
  LB_CHECK(overflow == Overflow::saturate || kind == FormatKind::fixed || kind == FormatKind::integer,
           "format: overflow='wrap' applies to Fixed and Int formats only");
}

std::string Format::repr() const {
  switch (kind) {
    case FormatKind::float32: return "Float32()";
    case FormatKind::minifloat:
      if (exp_bits == 5 && man_bits == 10 && !saturate) return "Float16()";
      if (exp_bits == 8 && man_bits == 7 && !saturate) return "BFloat16()";
      return str("MiniFloat(exp_bits=", exp_bits, ", man_bits=", man_bits, ", saturate=", saturate ? "True" : "False",
                 ")");
    case FormatKind::fixed:
      return str("Fixed(bits=", bits, ", msb=", msb_auto ? "'auto'" : std::to_string(msb), ", rounding='",
                 rounding_name(rounding), "', ste='", ste_name(ste), "'",
                 overflow == Overflow::wrap ? ", overflow='wrap'" : "", ")");
    case FormatKind::integer:
      return str("Int(bits=", bits, ", symmetric=", symmetric ? "True" : "False", ", calibration='",
                 calibration == Calibration::minmax ? "minmax" : calibration == Calibration::percentile ? "percentile" : "mse",
                 "'", overflow == Overflow::wrap ? ", overflow='wrap'" : "", ")");
    case FormatKind::binary:
      return str("Binary(scale=", scale == ScaleMode::none ? "None" : scale == ScaleMode::mean_abs ? "'mean_abs'" : "'channel_mean_abs'",
                 ", hysteresis=", hysteresis, ", ste='", ste_name(ste), "')");
    case FormatKind::ternary:
      return str("Ternary(threshold=", threshold < 0 ? std::string("None") : std::to_string(threshold), ", ste='",
                 ste_name(ste), "')");
  }
  return "";
}

float Format::clip_value() const {
  switch (kind) {
    case FormatKind::fixed: return float(std::ldexp(1.0, msb));
    case FormatKind::minifloat: return float(minifloat_max(exp_bits, man_bits));
    case FormatKind::binary:
    case FormatKind::ternary: return 1.f;
    default: return std::numeric_limits<float>::infinity();
  }
}

void quantize(const Format& f, const float* x, float* y, int64_t n, int64_t channels, QuantState* st) {
  switch (f.kind) {
    case FormatKind::float32:
      if (x != y) std::copy(x, x + n, y);
      return;
    case FormatKind::minifloat: {
      const int bias = (1 << (f.exp_bits - 1)) - 1;
      const float maxv = float(minifloat_max(f.exp_bits, f.man_bits));
      const int64_t chunk = 16384;
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t c = 0; c < (n + chunk - 1) / chunk; ++c)
        minifloat_f32(x + c * chunk, y + c * chunk, std::min(chunk, n - c * chunk), f.man_bits, f.saturate, maxv,
                      1 - bias);
      return;
    }
    case FormatKind::fixed: {
      int msb = f.msb;
      if (f.msb_auto && st) {
        if (st->track) {
          const float amax = max_abs(x, n);
          if (amax > 0.f && std::isfinite(amax)) st->msb = std::min(127, std::max(-126, int(std::ceil(std::log2(double(amax))))));
        }
        if (st->msb != QuantState::kUnset) msb = st->msb;
      }
      const double q = std::ldexp(1.0, msb + 1 - f.bits);
      const double kmin = -std::ldexp(1.0, f.bits - 1), kmax = std::ldexp(1.0, f.bits - 1) - 1;
      const uint64_t stream = st && f.rounding == Rounding::stochastic ? st->counter++ : 0;
      const double inv_q = std::ldexp(1.0, f.bits - 1 - msb);
      if (st) st->step.assign(1, float(q));
      const bool wrap = f.overflow == Overflow::wrap;
      if (!wrap && f.rounding != Rounding::stochastic && f.bits <= 24 && inv_q < 1e38 && q > 1e-38) {
        const int64_t chunk = 16384;  // parallel over chunks, each a vectorised loop
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t c = 0; c < (n + chunk - 1) / chunk; ++c)
          fixed_f32(x + c * chunk, y + c * chunk, std::min(chunk, n - c * chunk), float(inv_q), float(q), float(kmin),
                    float(kmax), f.rounding == Rounding::floor);
        return;
      }
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) {
        double v = double(x[i]) / q, k;
        if (f.rounding == Rounding::nearest) k = std::nearbyint(v);
        else if (f.rounding == Rounding::floor) k = std::floor(v);
        else k = std::floor(v + double(uniform01(f.seed, stream, uint64_t(i))));
        if (std::isnan(v)) {
          y[i] = x[i];
          continue;
        }
        y[i] = wrap ? float(double(overflow_int(int64_t(std::min(std::max(k, -9e18), 9e18)), f.bits, f.overflow)) * q)
                    : float(std::min(std::max(k, kmin), kmax) * q);
      }
      return;
    }
    case FormatKind::integer: {
      if (!f.per_channel || channels <= 1) {
        const double s = quantize_int(f, x, y, n, st);
        if (st) st->step.assign(1, float(s));
        return;
      }
      const int64_t inner = n / channels;
      if (st) st->step.resize(size_t(channels));
      for (int64_t c = 0; c < channels; ++c) {
        const double s = quantize_int(f, x + c * inner, y + c * inner, inner);
        if (st) st->step[size_t(c)] = float(s);
      }
      return;
    }
    case FormatKind::binary: {
      const int64_t rows = f.scale == ScaleMode::channel_mean_abs ? std::max<int64_t>(channels, 1) : 1;
      const int64_t inner = n / rows;
      const bool hyst = st && f.hysteresis > 0.f;
      if (hyst && int64_t(st->last_sign.size()) != n) {
        st->last_sign.resize(size_t(n));
        for (int64_t i = 0; i < n; ++i) st->last_sign[size_t(i)] = x[i] < 0.f ? -1 : 1;
      }
      if (st) st->step.resize(size_t(rows));
      for (int64_t r = 0; r < rows; ++r) {
        double alpha = 1.0;
        if (f.scale != ScaleMode::none) {  // XNOR-Net: alpha = ||x||_1 / n
          double s = 0;
          for (int64_t i = r * inner; i < (r + 1) * inner; ++i) s += std::fabs(double(x[i]));
          alpha = inner ? s / double(inner) : 0.0;
        }
        if (st) st->step[size_t(r)] = float(alpha);
        for (int64_t i = r * inner; i < (r + 1) * inner; ++i) {
          int8_t sg = x[i] < 0.f ? -1 : 1;  // sign(0) = +1 (also for -0)
          if (hyst) {  // keep the previous sign inside (-t, t): S1 Figure 21
            int8_t& last = st->last_sign[size_t(i)];
            if (x[i] > f.hysteresis) last = 1;
            else if (x[i] < -f.hysteresis) last = -1;
            sg = last;
          }
          y[i] = float(sg * alpha);
        }
      }
      return;
    }
    case FormatKind::ternary: {
      double mean_abs = 0;
      for (int64_t i = 0; i < n; ++i) mean_abs += std::fabs(double(x[i]));
      mean_abs = n ? mean_abs / double(n) : 0;
      const double t = f.threshold < 0 ? 0.7 * mean_abs : double(f.threshold);
      double s = 0;
      int64_t cnt = 0;
      for (int64_t i = 0; i < n; ++i)
        if (std::fabs(double(x[i])) > t) s += std::fabs(double(x[i])), ++cnt;
      const float a = cnt ? float(s / double(cnt)) : 0.f;  // TWN: mean |x| over the kept weights
      if (st) st->step.assign(1, a);
      for (int64_t i = 0; i < n; ++i) y[i] = std::fabs(double(x[i])) > t ? (x[i] < 0 ? -a : a) : 0.f;
      return;
    }
  }
}

void ste_backward(const Format& f, const float* x, const float* dy, float* dx, int64_t n) {
  switch (f.ste) {
    case Ste::identity:
      if (dx != dy) std::copy(dy, dy + n, dx);
      return;
    case Ste::clipped: {
      const float c = f.clip_value();
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) dx[i] = std::fabs(x[i]) <= c ? dy[i] : 0.f;
      return;
    }
    case Ste::hardtanh:
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) dx[i] = std::fabs(x[i]) <= 1.f ? dy[i] : 0.f;
      return;
    case Ste::approx_sign:  // Bi-Real Net: d/dx of the piecewise quadratic sign, 2 - 2|x| inside [-1, 1]
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * std::max(0.f, 2.f - 2.f * std::fabs(x[i]));
      return;
    case Ste::none:
      std::fill(dx, dx + n, 0.f);
      return;
  }
}

int msb_from_percentile(const float* x, int64_t n, double percentile) {
  LB_CHECK(n > 0, "msb_from_percentile: empty input");
  LB_CHECK(percentile > 0 && percentile <= 100, "msb_from_percentile: expected percentile in (0, 100], got ",
           percentile);
  std::vector<float> a(x, x + n);
  std::sort(a.begin(), a.end());
  auto at = [&](double p) {  // linear interpolation, as numpy.percentile
    double pos = p / 100.0 * double(n - 1);
    int64_t lo = int64_t(std::floor(pos));
    int64_t hi = std::min<int64_t>(lo + 1, n - 1);
    return double(a[size_t(lo)]) + (pos - double(lo)) * (double(a[size_t(hi)]) - double(a[size_t(lo)]));
  };
  double limit = std::max(std::fabs(at(100.0 - percentile)), std::fabs(at(percentile)));
  if (limit <= 0) return 0;
  return int(std::ceil(std::log2(limit)));
}

}  // namespace lowbit
