// The one table of number formats. A Format maps float32 values onto its grid
// (quantize) and gives the straight-through gradient rule used in the backward.
//
//   Float32                     identity
//   MiniFloat(e, m, saturate)   IEEE-like: bias 2^(e-1)-1, top exponent reserved,
//                               subnormals, round half to even; overflow -> inf, or
//                               the largest finite (2 - 2^-m) 2^(2^e - 2 - bias) when
//                               saturating. Float16 = (5, 10), BFloat16 = (8, 7).
//   Fixed(bits, msb, rounding)  S4 quantclip: A = 2^msb, q = 2A / 2^bits, levels k q,
//                               k in [-2^(bits-1), 2^(bits-1) - 1]; nearest (half even),
//                               floor (the seed's floor(x/q)) or stochastic floor(x/q + u)
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

enum class FormatKind { float32, minifloat, fixed, integer, binary, ternary };
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
  // fixed
  int msb = 0;
  bool msb_auto = false;  // chosen by calibration; until then msb holds the last choice
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
  // Int activations: a running (EMA, momentum 0.99) max |x| tracked in training and used
  // for the scale at inference; weights (is_weight) always use their own statistics.
  float running_amax = -1.f;
  bool is_weight = false;
  // Grid step(s) of the last call for formats on an integer grid (Fixed q, Int s,
  // Binary alpha, Ternary a): one per channel row, or one. Integer accumulators read it.
  std::vector<float> step;
};

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

// y = Q(x) over n values laid out as `channels` rows (axis 0) for per-channel scales.
void quantize(const Format& f, const float* x, float* y, int64_t n, int64_t channels = 1,
              QuantState* state = nullptr);
// dx = STE(x, dy) for the format's gradient rule.
void ste_backward(const Format& f, const float* x, const float* dy, float* dx, int64_t n);

// S4 Equation 11: MSB = ceil(log2(max |percentile limit|)).
int msb_from_percentile(const float* x, int64_t n, double percentile);

}  // namespace lowbit
