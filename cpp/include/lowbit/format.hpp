// The one table of number formats. A Format maps float32 values onto its grid
// (quantize) and gives the straight-through gradient rule used in the backward.
//
//   Float32                     identity
//   MiniFloat(e, m, saturate)   IEEE-like: bias 2^(e-1)-1, top exponent reserved,
//                               subnormals, round half to even; overflow -> inf, or
//                               the largest finite (2 - 2^-m) 2^(2^e - 2 - bias) when
//                               saturating. Float16 = (5, 10), BFloat16 = (8, 7).
//     encoding "fn" (OCP)       no infinities, the top exponent holds normals.
//                               fn_nan: one NaN code S.1..1.1..1 (FP8 E4M3FN), max
//                               (2 - 2^(1-m)) 2^(2^e - 1 - bias) = 448; overflow -> NaN
//                               unless saturating. Without it (FP6 E3M2/E2M3, FP4 E2M1)
//                               every code is finite, max (2 - 2^-m) 2^(2^e - 1 - bias),
//                               overflow and +-inf always -> +-max (as ml_dtypes); a NaN
//                               input stays NaN (no code for it; OCP leaves it open).
//     rounding                  nearest (half to even) or stochastic: the kept mantissa
//                               is truncated after adding uniform random bits below it
//                               (P(up) = distance / ulp); random bits from (seed, call
//                               number, element index), counter-based as Fixed's.
//   MX(element, block)          OCP MX v1.0: blocks of `block` values along the
//                               reduction axis share X = 2^(floor(log2 amax) - emax_elem)
//                               (E8M0, exponent clamped to [-127, 127]); elements
//                               round(v / X) in the element format with saturation.
//                               A block holding NaN or +-inf has X = NaN (all NaN);
//                               MXINT8 elements are k 2^-6, k in [-127, 127].
//   NVFP4                       blocks of 16 E2M1 elements, E4M3 block scale and an fp32
//                               tensor scale (float32 arithmetic in this order):
//                               genc = 2688 / amax_tensor (6 * 448; finite values only),
//                               s_b = E4M3(amax_block / 6 * genc), d = s_b / genc,
//                               y = E2M1(v / d) d; s_b = 0 gives +-0; NaN/inf blocks NaN.
//   Block axis: QuantState::axis says which axis the blocks run along (the reduction axis
//   of the layer's product, as MX hardware does): conv kernels (O, C, kh, kw) along
//   C kh kw, dense kernels (K, M) along K, activations (N, C, H, W) along C at each pixel
//   and (N, F) along F. Unset: the flat array in 32s (a partial last block per row).
//   Fixed(bits, msb, rounding)  S4 quantclip: A = 2^msb, q = 2A / 2^bits, levels k q,
//                               k in [-2^(bits-1), 2^(bits-1) - 1]; nearest (half even),
//                               floor (the seed's floor(x/q)) or stochastic floor(x/q + u)
//     signed=false              unsigned: q = A / 2^bits, k in [0, 2^bits - 1], the range
//                               [0, A) - all 2^bits levels for non-negative data (after a
//                               ReLU), where the signed grid spends half of them on x < 0
//   Int(bits, symmetric)        uniform affine integer grid with a data-dependent scale
//                               (S2 eq. 3.3-3.4), symmetric range +-(2^(b-1) - 1)
//   Binary(scale, hysteresis)   sign(x) (sign(0) = +1) times 1, mean|x| or per-channel mean|x|
//   Ternary(threshold)          {-a, 0, +a}; threshold 0.7 mean|x| by default (TWN)
//
// Overflow of Fixed (and of every integer accumulator): `saturate` clips k to
// [-2^(bits-1), 2^(bits-1) - 1]; `wrap` keeps the low `bits` bits of k as two's
// complement does (k -> ((k + 2^(bits-1)) mod 2^bits) - 2^(bits-1)).
//
// Accumulators (accum_format, grad_accum_format on conv/dense; see accumulate.hpp):
//   MiniFloat / Float16 / BFloat16  acc = round(acc + a*b): one rounding per fused
//                                   multiply-add, computed exactly in double first
//   Fixed(bits, msb)                acc = grid(acc + a*b) with the format's rounding and
//                                   overflow rule, msb fixed
//   Int(bits)                       an integer register: a and b are integers on the grids
//                                   of the layer's Int/Fixed/Binary/Ternary input and weight
//                                   formats (a = k_a s_a), acc += k_a k_b with saturation or
//                                   wrap-around at every add; z = acc s_a s_b
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace lowbit {

enum class FormatKind { float32, minifloat, fixed, integer, binary, ternary, block };
enum class BlockScale { e8m0, nvfp4 };
enum class Rounding { nearest, floor, stochastic };
enum class Ste { identity, clipped, hardtanh, approx_sign, none };
enum class ScaleMode { none, mean_abs, channel_mean_abs };
enum class Calibration { minmax, percentile, mse };
enum class Overflow { saturate, wrap };

struct Format {
  FormatKind kind = FormatKind::float32;
  int bits = 32;
  // minifloat
  int exp_bits = 8, man_bits = 23;
  bool saturate = false;
  bool fn = false, fn_nan = false;  // OCP "fn" encodings (see the table)
  // block formats: the element is the MiniFloat fields above, or an int8 (elem_int)
  int block = 32;
  BlockScale block_scale = BlockScale::e8m0;
  bool elem_int = false;
  // fixed
  int msb = 0;
  bool msb_auto = false;  // chosen by calibration; until then msb holds the last choice
  bool is_signed = true;  // false: unsigned, k in [0, 2^bits - 1], q = 2^(msb - bits) (ReLU outputs)
  Rounding rounding = Rounding::nearest;
  Overflow overflow = Overflow::saturate;  // fixed and integer accumulators
  uint64_t seed = 0;      // stochastic rounding stream
  // integer
  bool symmetric = true, per_channel = false;
  Calibration calibration = Calibration::minmax;
  // binary / ternary
  ScaleMode scale = ScaleMode::none;
  float hysteresis = 0.f;
  float threshold = -1.f;  // ternary: < 0 means 0.7 mean|x|
  Ste ste = Ste::identity;

  std::string repr() const;
  void validate() const;  // throws std::invalid_argument naming the argument
  float clip_value() const;  // |x| bound of the "clipped" STE for this format
};

// Per-tensor quantizer state kept across steps and saved with the weights:
// hysteresis signs (binary latent weights) and stochastic-rounding counter.
// Fixed(msb="auto") is dynamic fixed point (Courbariaux et al. 2014): while `track` is
// set (training), each call takes MSB = ceil(log2(max|x|)) of the tensor at hand, so
// nothing saturates; otherwise the last tracked MSB (or the calibrated one) is used.
struct QuantState {
  static constexpr int kUnset = -1000;
  std::vector<int8_t> last_sign;
  uint64_t counter = 0;
  int msb = kUnset;
  bool track = false;
  // Int activations: a running (EMA, momentum 0.99) max |x| (symmetric) or min and max
  // (asymmetric) tracked in training and used for the grid at inference, so that a
  // prediction does not depend on the batch it is in; weights (is_weight) always use their
  // own statistics. Unset: running_amax < 0, running_lo > running_hi.
  float running_amax = -1.f;
  float running_lo = 1.f, running_hi = -1.f;
  bool is_weight = false;
  // Grid step(s) of the last call for formats on an integer grid (Fixed q, Int s,
  // Binary alpha, Ternary a): one per channel row, or one. Integer accumulators read it.
  std::vector<float> step;
  // Block formats: the tensor is (outer, len, stride) with blocks along len, the
  // reduction axis; len = 0 means one row of the whole array.
  struct Axis {
    int64_t len = 0, stride = 1;
  } axis;
};

// Fixed's grid at a given MSB: values k q, k in [kmin, kmax].
struct FixedGrid {
  double q, inv_q, kmin, kmax;
};
inline FixedGrid fixed_grid(const Format& f, int msb) {
  const int e = f.bits - (f.is_signed ? 1 : 0);  // magnitude bits: A = 2^msb = 2^e q
  return {std::ldexp(1.0, msb - e), std::ldexp(1.0, e - msb), f.is_signed ? -std::ldexp(1.0, e) : 0.0,
          std::ldexp(1.0, e) - 1};
}

// Whether a format puts values on k * step with integer k (an Int accumulator can take it).
inline bool on_integer_grid(const Format& f) {
  return f.kind == FormatKind::fixed || f.kind == FormatKind::integer || f.kind == FormatKind::binary ||
         f.kind == FormatKind::ternary;
}
// k wrapped or saturated into a `bits`-bit two's-complement range.
inline int64_t overflow_int(int64_t k, int bits, Overflow o) {
  const int64_t lo = -(int64_t(1) << (bits - 1)), hi = (int64_t(1) << (bits - 1)) - 1;
  if (k >= lo && k <= hi) return k;
  if (o == Overflow::saturate) return k < lo ? lo : hi;
  const uint64_t m = (uint64_t(1) << bits) - 1;
  const uint64_t u = (uint64_t(k) - uint64_t(lo)) & m;
  return int64_t(u) + lo;
}

// Largest finite value of a MiniFloat (or of a block format's float element).
double minifloat_max(const Format& f);

// The grid Int puts x on (S2 eq. 3.3-3.4): q = (k - zp) s with
// k = clamp(nearbyint(x / s) + zp, kmin, kmax), computed in double. Moves the running
// range of an activation quantizer in training, as quantize() does (it calls this).
struct IntGrid {
  double s = 0, zp = 0, kmin = 0, kmax = 0;
};
IntGrid int_grid_of(const Format& f, const float* x, int64_t n, QuantState* st);

// y = Q(x) over n values laid out as `channels` rows (axis 0) for per-channel scales.
void quantize(const Format& f, const float* x, float* y, int64_t n, int64_t channels = 1,
              QuantState* state = nullptr);
// dx = STE(x, dy) for the format's gradient rule.
void ste_backward(const Format& f, const float* x, const float* dy, float* dx, int64_t n);

// S4 Equation 11: MSB = ceil(log2(max |percentile limit|)).
int msb_from_percentile(const float* x, int64_t n, double percentile);

}  // namespace lowbit
