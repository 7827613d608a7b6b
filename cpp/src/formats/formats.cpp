// Quantizers and their straight-through gradients (see format.hpp for the table).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "lowbit/check.hpp"
#include "lowbit/float_round.hpp"
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

// max |x| over the non-NaN values, on the bit patterns: |x| orders as its bits do, and an
// integer max reduction vectorises (a float one would need -ffast-math)
LB_CLONES float max_abs(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    u &= 0x7FFFFFFFu;
    u &= -uint32_t(u <= 0x7F800000u);  // NaN: skipped
    m = std::max(m, u);
  }
  float r;
  std::memcpy(&r, &m, 4);
  return r;
}

// Rounding onto a minifloat (or MXINT8) element grid on float32 bit patterns, vectorisable:
// FloatRound<float>'s round half to even, plus the block formats' shortcut and stochastic
// rounding. MXINT8's k 2^-6, |k| <= 127, is the subnormal rule with spacing 2^-6 (the ulp
// of 2^17) below a "smallest normal" 2^17 that only values beyond the saturation reach.
struct ElemRounder : FloatRound<float> {
  uint32_t magic_bits = 0, exp_mask = 0x7F800000u;
  float sub_scale1 = 1, sub_scale2 = 1, sub_step1 = 1, sub_step2 = 1;  // 2^(m - emin), 2^(emin - m) in two factors

  explicit ElemRounder(const Format& f)
      : FloatRound<float>(f.elem_int ? FloatRound<float>(23, 17, 127.f / 64.f, 127.f / 64.f) : FloatRound<float>(f)) {
    if (f.elem_int) exp_mask = 0;
    magic_bits = bits_of(magic);
    const int e = 23 - std::ilogb(magic);  // subnormal spacing 2^-e, e = m - emin
    sub_scale1 = std::ldexp(1.f, e / 2), sub_scale2 = std::ldexp(1.f, e - e / 2);
    sub_step1 = 1.f / sub_scale1, sub_step2 = 1.f / sub_scale2;
  }
  // The same for elements of block formats (|v| < 2^(emax + 1), exp_bits <= 5), in fewer
  // operations: C = 2^(E + 23 - m) for |v| in [2^E, 2^(E+1)), or 2^(emin + 23 - m) below
  // 2^emin, has the grid spacing as its ulp, so (|v| + C) - C is the float adder's round
  // half to even onto the grid (a carry into the next binade included).
  float round_small(float v) const {
    const float a = std::fabs(v);
    uint32_t u;
    std::memcpy(&u, &a, 4);
    const float c = from_bits(std::max((u & exp_mask) + (drop << 23), magic_bits));
    const float r = (a + c) - c;
    return std::copysign(r > maxv ? ovf : r, v);
  }
  // h: 32 uniform random bits. Rounds away from zero with probability (distance to the
  // grid point below |v|) / spacing: in the normal range `drop` random bits are added
  // below the kept mantissa; below 2^emin f = |v| / spacing goes up from floor(f) when
  // u < f - floor(f), u uniform on 23 bits. Float operations only (exact: powers of two in
  // two steps, as 2^(m - emin) may exceed float's range), so the loop vectorises.
  float stochastic(float v, uint32_t h) const {
    const float a = std::fabs(v);
    uint32_t u;
    std::memcpy(&u, &a, 4);
    const float rn = from_bits((u + (h & ~mask)) & mask);
    // floor(f) for f < 2^23 by the adder (std::floor here would stop the vectoriser)
    const float f = (a * sub_scale1) * sub_scale2, kn = (f + 8388608.f) - 8388608.f, k = kn > f ? kn - 1.f : kn;
    const float u01 = from_bits(0x3F800000u | (h >> 9)) - 1.f;
    const float rs = ((k + (u01 < f - k ? 1.f : 0.f)) * sub_step1) * sub_step2;
    float r = a >= min_normal ? rn : rs;
    r = a <= std::numeric_limits<float>::max() ? r : a;  // NaN and inf as they are
    return std::copysign(r > maxv ? ovf : r, v);
  }
};

LB_CLONES void minifloat_f32(const float* x, float* y, int64_t n, const ElemRounder& rounder) {
  const ElemRounder q = rounder;
  for (int64_t i = 0; i < n; ++i) y[i] = q(x[i]);
}

// Counter-based 32 random bits for stochastic rounding of floats: murmur3's finaliser of
// (stream key, index), vectorisable (32-bit multiplies). key = 32 bits of hash3(seed, call).
inline uint32_t hash32(uint32_t key, uint32_t i) {
  uint32_t h = key ^ (i * 0x9E3779B9u);
  h ^= h >> 16, h *= 0x85EBCA6Bu, h ^= h >> 13, h *= 0xC2B2AE35u, h ^= h >> 16;
  return h;
}
uint32_t stream_key(uint64_t seed, uint64_t stream) { return uint32_t(hash3(seed, stream, 0) >> 32); }

// y = q.stochastic(x) with the random bits of global indices i0, i0 + 1, ...
LB_CLONES void minifloat_sr(const float* x, float* y, int64_t n, const ElemRounder& rounder, uint32_t key,
                            int64_t i0) {
  const ElemRounder q = rounder;
  for (int64_t i = 0; i < n; ++i) y[i] = q.stochastic(x[i], hash32(key, uint32_t(i0 + i)));
}

// ---- block formats (MX, NVFP4) ----
uint32_t abs_bits(float v) { return bits_of(v) & 0x7FFFFFFFu; }  // |v| as an integer: NaN patterns sort above inf
// floor(log2 a) of a normal a from its bits; -127 for subnormals and 0 (for the MX scale
// exactly right: its exponent floor(log2 a) - emax <= -127 clamps to -127 there anyway)
int floor_log2(uint32_t u) { return int(u >> 23) - 127; }

// Decode scale d and encode scale e of a block whose largest |x| has the bits `am`:
// MX y = d q(x e) with e = 1/d exactly (powers of two); NVFP4 y = d q(x / d) e with e = 1,
// or e = 0 (and d = 1) for a block that becomes zeros. A NaN or inf in the block gives d = e = NaN.
struct BlockScales {
  int emax_elem;  // MX: exponent of the element's largest normal
  float genc;     // NVFP4: tensor encode scale 2688 / amax_tensor; < 0 for MX
  ElemRounder e4m3;
  // MX: E8M0 X = 2^(floor(log2 amax) - emax), exponent in [-127, 127]; branch-free
  // (integer selects only, so a loop over blocks vectorises; 2^-127 is the one subnormal)
  void mx(uint32_t am, float& d, float& e) const {
    const int x = std::min(127, std::max(-127, floor_log2(am) - emax_elem));
    const bool bad = am >= 0x7F800000u;
    const uint32_t db = x >= -126 ? uint32_t(x + 127) << 23 : 0x00400000u;
    const uint32_t eb = x <= 126 ? uint32_t(127 - x) << 23 : 0x00400000u;
    d = from_bits(bad ? 0x7FC00000u : db), e = from_bits(bad ? 0x7FC00000u : eb);
  }
  // NVFP4: E4M3 block scale relative to the fp32 tensor scale; branch-free like mx()
  void nv(uint32_t am, float& d, float& e) const {
    const float sb = e4m3(from_bits(am) / 6.f * genc);
    const bool bad = am >= 0x7F800000u;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float dd = (sb > 0 ? sb : genc) / genc;  // 1 for a block of zeros; no division under a select
    d = bad ? nan : dd, e = bad ? nan : sb > 0 ? 1.f : 0.f;  // y = q(x / d) d e: e = 0 gives +-0
  }
  void operator()(uint32_t am, float& d, float& e) const {
    if (genc < 0) mx(am, d, e);
    else nv(am, d, e);
  }
};

// Both sides of every choice are computed and one selected (no speculation of float
// operations needed), so the loops vectorise; hence also the two loops per `divide`.

// One block of contiguous values; N > 0 fixes the count at compile time (full blocks of
// the usual 16 and 32 unroll into a few vector operations), N = 0 takes `cnt`.
template <int N>
inline void one_block(const float* __restrict x, float* __restrict y, int64_t cnt, const BlockScales& s, bool divide,
                      const ElemRounder& q) {
  const int64_t m = N ? N : cnt;
  uint32_t am = 0;
  for (int64_t i = 0; i < m; ++i) am = std::max(am, abs_bits(x[i]));
  float d, e;
  s(am, d, e);
  if (divide)
    for (int64_t i = 0; i < m; ++i)
      y[i] = q.round_small(x[i] / d) * d * e;  // no select: a division under one is not vectorised
  else
    for (int64_t i = 0; i < m; ++i) y[i] = q.round_small(x[i] * e) * d;
}

// d, e of n blocks from their maxima: one loop per kind, so that each vectorises (NVFP4
// divides by its scale, MX multiplies).
inline void scales(const BlockScales& s, bool nv, const uint32_t* am, float* d, float* e, int64_t n) {
  if (nv)
    for (int64_t j = 0; j < n; ++j) s.nv(am[j], d[j], e[j]);
  else
    for (int64_t j = 0; j < n; ++j) s.mx(am[j], d[j], e[j]);
}

// Full blocks of B (16 or 32) in chunks of up to 64 blocks: the maxima, then the scales,
// then the elements, each a loop over the chunk without per-block scalar work (a row of
// 1024 values is 32 MX blocks, one chunk). Returns how many values it did.
template <int B, bool kDivide>
__attribute__((always_inline)) inline int64_t full_blocks(const float* __restrict x, float* __restrict y, int64_t n, const BlockScales& s,
                           const ElemRounder& q) {
  constexpr int64_t K = 64;
  uint32_t am[K];
  float d[K], e[K];
  const int64_t blocks = n / B;
  for (int64_t k0 = 0; k0 < blocks; k0 += K) {
    const int64_t kn = std::min(K, blocks - k0);
    const float* xc = x + k0 * B;
    float* yc = y + k0 * B;
    for (int64_t k = 0; k < kn; ++k) {
      uint32_t m = 0;
      for (int64_t i = 0; i < B; ++i) m = std::max(m, abs_bits(xc[k * B + i]));
      am[k] = m;
    }
    scales(s, kDivide, am, d, e, kn);
    for (int64_t k = 0; k < kn; ++k)
      for (int64_t i = 0; i < B; ++i) {
        const float v = xc[k * B + i];
        yc[k * B + i] = kDivide ? q.round_small(v / d[k]) * d[k] * e[k] : q.round_small(v * e[k]) * d[k];
      }
  }
  return blocks * B;
}

// A row of `n` contiguous values in blocks of B (the last one partial).
LB_CLONES void blocks_row(const float* __restrict x, float* __restrict y, int64_t n, int64_t B,
                          const BlockScales& s, bool divide, const ElemRounder& rounder) {
  const ElemRounder q = rounder;  // a local copy: its fields stay in registers
  int64_t b0 = 0;
  if (B == 32 && !divide) b0 = full_blocks<32, false>(x, y, n, s, q);
  else if (B == 16 && divide) b0 = full_blocks<16, true>(x, y, n, s, q);
  else if (B == 16) b0 = full_blocks<16, false>(x, y, n, s, q);
  for (; b0 < n; b0 += B) {
    const int64_t cnt = std::min(B, n - b0);
    if (cnt == 32) one_block<32>(x + b0, y + b0, cnt, s, divide, q);
    else if (cnt == 16) one_block<16>(x + b0, y + b0, cnt, s, divide, q);
    else one_block<0>(x + b0, y + b0, cnt, s, divide, q);
  }
}
// The same with stochastic rounding of the elements (random bits of global index i0 + ...).
LB_CLONES void blocks_row_sr(const float* __restrict x, float* __restrict y, int64_t n, int64_t B,
                             const BlockScales& s, bool divide, const ElemRounder& rounder, uint32_t key, int64_t i0) {
  const ElemRounder q = rounder;
  for (int64_t b0 = 0; b0 < n; b0 += B) {
    const int64_t cnt = std::min(B, n - b0);
    uint32_t am = 0;
    for (int64_t i = b0; i < b0 + cnt; ++i) am = std::max(am, abs_bits(x[i]));
    float d, e;
    s(am, d, e);
    if (divide)
      for (int64_t i = b0; i < b0 + cnt; ++i)
        y[i] = q.stochastic(x[i] / d, hash32(key, uint32_t(i0 + i))) * d * e;
    else
      for (int64_t i = b0; i < b0 + cnt; ++i) y[i] = q.stochastic(x[i] * e, hash32(key, uint32_t(i0 + i))) * d;
  }
}
LB_CLONES uint32_t finite_amax_bits(const float* x, int64_t n) {
  uint32_t am = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = abs_bits(x[i]);
    // inf and NaN (u >= 0x7F800000) carry into the sign bit: an all-ones mask drops them
    // (shifts and ands only, so the reduction vectorises)
    const uint32_t non_finite = uint32_t(int32_t(u + 0x00800000u) >> 31);
    am = std::max(am, u & ~non_finite);
  }
  return am;
}

// The per-column block maxima of a tile, then each column's scales d, e (see scales()).
LB_CLONES void tile_scales(const float* __restrict x, int64_t rows, int64_t cols, int64_t stride, const BlockScales& s,
                           bool divide, uint32_t* __restrict am, float* __restrict d, float* __restrict e) {
  for (int64_t j = 0; j < cols; ++j) am[j] = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) am[j] = std::max(am[j], abs_bits(x[r * stride + j]));
  scales(s, divide, am, d, e, cols);
}

// One block row of a strided axis: `rows` values along the axis (row stride `stride`) for
// each of `cols` contiguous columns, each column its own block.
LB_CLONES void blocks_tile(const float* __restrict x, float* __restrict y, int64_t rows, int64_t cols, int64_t stride,
                           const BlockScales& s, bool divide, const ElemRounder& rounder, uint32_t* __restrict am,
                           float* __restrict d, float* __restrict e) {
  const ElemRounder q = rounder;
  tile_scales(x, rows, cols, stride, s, divide, am, d, e);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * stride;
    float* yr = y + r * stride;
    if (divide)
      for (int64_t j = 0; j < cols; ++j)
        yr[j] = q.round_small(xr[j] / d[j]) * d[j] * e[j];
    else
      for (int64_t j = 0; j < cols; ++j) yr[j] = q.round_small(xr[j] * e[j]) * d[j];
  }
}
// The same with stochastic rounding of the elements (random bits of global index i0 + ...).
LB_CLONES void blocks_tile_sr(const float* __restrict x, float* __restrict y, int64_t rows, int64_t cols,
                              int64_t stride, const BlockScales& s, bool divide, const ElemRounder& rounder,
                              uint32_t* __restrict am, float* __restrict d, float* __restrict e, uint32_t key,
                              int64_t i0) {
  const ElemRounder q = rounder;
  tile_scales(x, rows, cols, stride, s, divide, am, d, e);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * stride;
    float* yr = y + r * stride;
    const uint32_t ir = uint32_t(i0 + r * stride);
    if (divide)
      for (int64_t j = 0; j < cols; ++j)
        yr[j] = q.stochastic(xr[j] / d[j], hash32(key, ir + uint32_t(j))) * d[j] * e[j];
    else
      for (int64_t j = 0; j < cols; ++j) yr[j] = q.stochastic(xr[j] * e[j], hash32(key, ir + uint32_t(j))) * d[j];
  }
}

void quantize_blocks(const Format& f, const float* x, float* y, int64_t n, QuantState* st) {
  if (n == 0) return;
  const int64_t len = st && st->axis.len > 0 ? st->axis.len : n;
  const int64_t stride = st && st->axis.len > 0 ? std::max<int64_t>(st->axis.stride, 1) : 1;
  LB_CHECK(n % (len * stride) == 0, f.repr(), ": a block axis of length ", len, " and stride ", stride,
           " does not tile a tensor of ", n, " values");
  const ElemRounder q(f);
  Format e4m3;
  e4m3.kind = FormatKind::minifloat, e4m3.exp_bits = 4, e4m3.man_bits = 3, e4m3.fn = e4m3.fn_nan = true;
  e4m3.saturate = true;
  BlockScales scales{f.elem_int ? 0 : floor_log2(abs_bits(q.maxv)), -1.f, ElemRounder(e4m3)};
  const bool nv = f.block_scale == BlockScale::nvfp4;
  if (nv) {  // tensor scale from the finite values
    const uint32_t am = finite_amax_bits(x, n);
    scales.genc = am ? 2688.f / from_bits(am) : 0.f;
    if (!(scales.genc > 0 && scales.genc <= std::numeric_limits<float>::max())) scales.genc = 0.f;
  }
  const int64_t outer = n / (len * stride), B = f.block, nb = (len + B - 1) / B;
  if (nv && scales.genc == 0.f) {  // an all-zero (or all-tiny) tensor: +-0
    for (int64_t i = 0; i < n; ++i) y[i] = std::isfinite(x[i]) ? std::copysign(0.f, x[i]) : std::nanf("");
    return;
  }
  const bool sr = f.rounding == Rounding::stochastic;
  const uint32_t key = sr ? stream_key(f.seed, st ? st->counter++ : 0) : 0;
  if (stride == 1) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t o = 0; o < outer; ++o) {
      if (sr) blocks_row_sr(x + o * len, y + o * len, len, B, scales, nv, q, key, o * len);
      else blocks_row(x + o * len, y + o * len, len, B, scales, nv, q);
    }
    return;
  }
#pragma omp parallel if (n > 65536)
  {
    std::vector<uint32_t> am(static_cast<size_t>(stride));
    std::vector<float> d(static_cast<size_t>(stride)), e(static_cast<size_t>(stride));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < outer * nb; ++t) {
      const int64_t o = t / nb, b = t % nb, rows = std::min(B, len - b * B);
      const int64_t off = (o * len + b * B) * stride;
      if (!sr) {
        blocks_tile(x + off, y + off, rows, stride, stride, scales, nv, q, am.data(), d.data(), e.data());
        continue;
      }
      blocks_tile_sr(x + off, y + off, rows, stride, stride, scales, nv, q, am.data(), d.data(), e.data(), key, off);
    }
  }
}

// Integer grid k*s, k in [kmin, kmax], from one scale (and zero point).
// k = clamp(nearbyint(x / s) + zp, kmin, kmax), y = (k - zp) s in double, as the format
// defines it; each element alone, so vectorised and threaded it gives the same values
LB_CLONES void int_grid_run(const float* x, float* y, int64_t n, double s, double zp, double kmin, double kmax) {
  for (int64_t i = 0; i < n; ++i) {
    double k = std::min(std::max(std::nearbyint(double(x[i]) / s) + zp, kmin), kmax);
    y[i] = float((k - zp) * s);
  }
}

double int_grid(const float* x, float* y, int64_t n, double s, double zp, double kmin, double kmax) {
  if (!(s > 0)) {
    for (int64_t i = 0; i < n; ++i) y[i] = 0.f;
    return 0.0;
  }
  const int64_t chunk = 16384;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i0 = 0; i0 < n; i0 += chunk)
    int_grid_run(x + i0, y + i0, std::min(chunk, n - i0), s, zp, kmin, kmax);
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
  const IntGrid g = int_grid_of(f, x, n, st);
  return int_grid(x, y, n, g.s, g.zp, g.kmin, g.kmax);
}

}  // namespace

IntGrid int_grid_of(const Format& f, const float* x, int64_t n, QuantState* st) {
  if (n == 0) return {};
  // inference with a running range: the batch's own statistics are not needed
  const bool running = st && !st->is_weight && !st->track;
  if (f.symmetric) {
    const double qmax = std::ldexp(1.0, f.bits - 1) - 1;
    double amax;
    if (running && st->running_amax >= 0) {
      amax = st->running_amax;
    } else {
      amax = f.calibration == Calibration::percentile ? abs_percentile(x, n, 99.99) : max_abs(x, n);
      if (st && !st->is_weight && st->track)
        st->running_amax = st->running_amax < 0 ? float(amax) : 0.99f * st->running_amax + 0.01f * float(amax);
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
    return {amax / qmax, 0, -qmax, qmax};
  }
  const double levels = std::ldexp(1.0, f.bits) - 1;
  double lo = 0, hi = 0;
  if (running && st->running_lo <= st->running_hi) {
    lo = st->running_lo, hi = st->running_hi;
  } else {
    for (int64_t i = 0; i < n; ++i) lo = std::min(lo, double(x[i])), hi = std::max(hi, double(x[i]));
    if (st && !st->is_weight && st->track) {
      const bool first = st->running_lo > st->running_hi;
      st->running_lo = first ? float(lo) : 0.99f * st->running_lo + 0.01f * float(lo);
      st->running_hi = first ? float(hi) : 0.99f * st->running_hi + 0.01f * float(hi);
    }
  }
  double s = (hi - lo) / levels;
  double zp = s > 0 ? std::nearbyint(-lo / s) : 0;
  return {s, zp, 0, levels};  // (k - zp) s: still whole multiples of s
}

double minifloat_max(const Format& f) {
  const int e = f.exp_bits, m = f.man_bits, bias = (1 << (e - 1)) - 1;
  if (!f.fn) return (2.0 - std::ldexp(1.0, -m)) * std::ldexp(1.0, (1 << e) - 2 - bias);
  // fn: the top exponent holds normals; with a NaN code its all-ones mantissa is taken
  return (2.0 - std::ldexp(1.0, f.fn_nan ? 1 - m : -m)) * std::ldexp(1.0, (1 << e) - 1 - bias);
}

void Format::validate() const {
  LB_CHECK(bits >= 1 && bits <= 32, "format: expected bits in [1, 32], got ", bits);
  if (kind == FormatKind::minifloat) {
    LB_CHECK(exp_bits >= 2 && exp_bits <= 8, "MiniFloat: expected exp_bits in [2, 8], got ", exp_bits);
    LB_CHECK(man_bits >= 0 && man_bits <= 23, "MiniFloat: expected man_bits in [0, 23], got ", man_bits);
  }
  if (kind == FormatKind::minifloat || (kind == FormatKind::block && !elem_int)) {
    LB_CHECK(!fn_nan || man_bits >= 1, "MiniFloat: encoding 'fn' with a NaN code needs man_bits >= 1");
    LB_CHECK(!fn || exp_bits >= 1, "MiniFloat: encoding 'fn' needs exp_bits >= 1");
  }
  if (kind == FormatKind::block) {
    LB_CHECK(block >= 1 && block <= 4096, "MX: expected block in [1, 4096], got ", block);
    LB_CHECK(elem_int || (exp_bits >= 2 && exp_bits <= 5 && man_bits >= 0 && man_bits <= 10), "MX: expected a float "
             "element with exp_bits in [2, 5] and man_bits in [0, 10], got (", exp_bits, ", ", man_bits, ")");
  }
  LB_CHECK(rounding != Rounding::floor || kind == FormatKind::fixed, "format: rounding='floor' applies to Fixed only");
  LB_CHECK(rounding != Rounding::stochastic || kind == FormatKind::fixed || kind == FormatKind::minifloat ||
               kind == FormatKind::block,
           "format: rounding='stochastic' applies to Fixed, MiniFloat and block formats");
  if (kind == FormatKind::integer) LB_CHECK(bits >= 2, "Int: expected bits >= 2, got ", bits);
  if (kind == FormatKind::fixed) LB_CHECK(msb >= -126 && msb <= 127, "Fixed: expected msb in [-126, 127], got ", msb);
  LB_CHECK(is_signed || kind == FormatKind::fixed, "format: signed=False applies to Fixed only");
  LB_CHECK(is_signed || overflow == Overflow::saturate, "Fixed: overflow='wrap' is two's complement; it needs signed=True");
  LB_CHECK(hysteresis >= 0.f, "Binary: expected hysteresis >= 0, got ", hysteresis);
  LB_CHECK(overflow == Overflow::saturate || kind == FormatKind::fixed || kind == FormatKind::integer,
           "format: overflow='wrap' applies to Fixed and Int formats only");
}

std::string Format::repr() const {
  switch (kind) {
    case FormatKind::float32: return "Float32()";
    case FormatKind::minifloat:
    {
      const std::string sr = rounding == Rounding::stochastic ? str(", rounding='stochastic', seed=", seed) : "";
      if (exp_bits == 5 && man_bits == 10 && !saturate && !fn) return str("Float16(", sr.empty() ? "" : sr.substr(2), ")");
      if (exp_bits == 8 && man_bits == 7 && !saturate && !fn) return str("BFloat16(", sr.empty() ? "" : sr.substr(2), ")");
      return str("MiniFloat(exp_bits=", exp_bits, ", man_bits=", man_bits, ", saturate=", saturate ? "True" : "False",
                 fn ? ", encoding='fn'" : "", fn && fn_nan != (1 + exp_bits + man_bits == 8) ? (fn_nan ? ", nan=True" : ", nan=False") : "",
                 sr, ")");
    }
    case FormatKind::block: {
      const std::string sr = rounding == Rounding::stochastic ? str(", rounding='stochastic', seed=", seed) : "";
      const std::string elem = elem_int ? "'int8'" : str("(", exp_bits, ", ", man_bits, ")");
      if (block_scale == BlockScale::nvfp4) return str("NVFP4(block=", block, sr, ")");
      return str("MX(element=", elem, ", block=", block, sr, ")");
    }
    case FormatKind::fixed:
      return str("Fixed(bits=", bits, ", msb=", msb_auto ? "'auto'" : std::to_string(msb), ", rounding='",
                 rounding_name(rounding), "', ste='", ste_name(ste), "'", is_signed ? "" : ", signed=False",
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
    case FormatKind::minifloat: return float(minifloat_max(*this));
    case FormatKind::binary:
    case FormatKind::ternary: return 1.f;
    default: return std::numeric_limits<float>::infinity();
  }
}

// y = -a where x < 0, else +a (sign(0) = sign(-0) = sign(NaN) = +1)
LB_CLONES void signs_times(const float* x, float* y, int64_t n, float a) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < 0.f ? -a : a;
}

void quantize(const Format& f, const float* x, float* y, int64_t n, int64_t channels, QuantState* st) {
  switch (f.kind) {
    case FormatKind::float32:
      if (x != y) std::copy(x, x + n, y);
      return;
    case FormatKind::minifloat: {
      const ElemRounder q(f);
      if (f.rounding == Rounding::stochastic) {
        const uint32_t key = stream_key(f.seed, st ? st->counter++ : 0);
        const int64_t chunk = 16384;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t c = 0; c < (n + chunk - 1) / chunk; ++c)
          minifloat_sr(x + c * chunk, y + c * chunk, std::min(chunk, n - c * chunk), q, key, c * chunk);
        return;
      }
      const int64_t chunk = 16384;
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t c = 0; c < (n + chunk - 1) / chunk; ++c)
        minifloat_f32(x + c * chunk, y + c * chunk, std::min(chunk, n - c * chunk), q);
      return;
    }
    case FormatKind::block:
      quantize_blocks(f, x, y, n, st);
      return;
    case FormatKind::fixed: {
      int msb = f.msb;
      if (f.msb_auto && st) {
        if (st->track) {
          const float amax = max_abs(x, n);
          if (amax > 0.f && std::isfinite(amax)) st->msb = std::min(127, std::max(-126, int(std::ceil(std::log2(double(amax))))));
        }
        if (st->msb != QuantState::kUnset) msb = st->msb;
      }
      const FixedGrid g = fixed_grid(f, msb);
      const double q = g.q, inv_q = g.inv_q, kmin = g.kmin, kmax = g.kmax;
      const uint64_t stream = st && f.rounding == Rounding::stochastic ? st->counter++ : 0;
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
        if (!hyst) {  // float(+-alpha) = +-float(alpha)
          signs_times(x + r * inner, y + r * inner, inner, float(alpha));
          continue;
        }
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
      const float c = f.clip_value(), lo = f.is_signed ? -c : 0.f;  // unsigned Fixed: the range is [0, A]
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) dx[i] = x[i] >= lo && x[i] <= c ? dy[i] : 0.f;
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
