// Round half to even of a float or double onto a MiniFloat grid (Float16, BFloat16, ...),
// written without branches so that a loop of it vectorises: the accumulators' rounding.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "format.hpp"

namespace lowbit {

inline uint32_t bits_of(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}
inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// In the grid's normal range: round half to even on T's bit pattern (a carry moves into
// the exponent as it should); below 2^emin, on the subnormal spacing s by the
// add-and-subtract of 2^digits s. Overflow gives inf, or the largest finite value for a
// saturating format, NaN for OCP "fn" with a NaN code; NaN stays NaN.
template <class T>
struct FloatRound {
  using U = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  static constexpr int kMan = std::numeric_limits<T>::digits - 1;  // 52 or 23 stored bits
  U drop, half, mask;
  T min_normal, magic, maxv, ovf;
  // m stored mantissa bits, smallest normal 2^emin, largest finite value maxv_, and the
  // value of an overflow (inf, maxv_ or NaN)
  FloatRound(int man_bits, int emin, T maxv_, T ovf_) : maxv(maxv_), ovf(ovf_) {
    drop = U(kMan - man_bits);
    half = drop ? (U(1) << (drop - 1)) - 1 : 0, mask = drop ? ~((U(1) << drop) - 1) : ~U(0);
    min_normal = std::ldexp(T(1), emin);
    magic = std::ldexp(T(1), emin - man_bits + kMan);
  }
  // The grid of f's exp_bits and man_bits (a MiniFloat, or a block format's elements);
  // fn formats without a NaN code (FP6/FP4) always saturate
  explicit FloatRound(const Format& f)
      : FloatRound(f.man_bits, 2 - (1 << (f.exp_bits - 1)), T(minifloat_max(f)),
                   f.saturate || (f.fn && !f.fn_nan) ? T(minifloat_max(f))
                   : f.fn                            ? std::numeric_limits<T>::quiet_NaN()
                                                     : std::numeric_limits<T>::infinity()) {}
  T operator()(T v) const {
    const T a = std::fabs(v);
    U u;
    std::memcpy(&u, &a, sizeof(T));
    // half to even: + (half - 1/2 ulp of the grid) + the kept mantissa's last bit; with
    // nothing dropped (T's own mantissa) the value stays
    u = (u + half + (drop ? (u >> drop) & 1u : 0u)) & mask;
    T normal;
    std::memcpy(&normal, &u, sizeof(T));
    const T sub = (a + magic) - magic;
    T r = a < min_normal ? sub : normal;
    r = r > maxv ? ovf : r;
    r = a != a ? a : r;
    return std::copysign(r, v);
  }
};

}  // namespace lowbit
