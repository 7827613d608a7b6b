// Counter-based random numbers: value = hash(seed, stream, index). The same seed gives
// the same numbers whatever the thread count or the order of evaluation, which is what
// makes two fit() runs bit-identical.
#pragma once
#include <cmath>
#include <cstdint>

namespace lowbit {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint64_t hash3(uint64_t seed, uint64_t stream, uint64_t i) {
  return splitmix64(splitmix64(seed ^ splitmix64(stream)) + i);
}

// uniform in [0, 1) with 24 random bits: exact in float32
inline float uniform01(uint64_t seed, uint64_t stream, uint64_t i) {
  return float(hash3(seed, stream, i) >> 40) * (1.0f / 16777216.0f);
}

// standard normal by Box-Muller on two independent uniforms (computed in double)
inline double normal01(uint64_t seed, uint64_t stream, uint64_t i) {
  uint64_t h1 = hash3(seed, stream, 2 * i), h2 = hash3(seed, stream, 2 * i + 1);
  double u1 = (double(h1 >> 11) + 1.0) * (1.0 / 9007199254740992.0);  // (0, 1]
  double u2 = double(h2 >> 11) * (1.0 / 9007199254740992.0);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// A sequential generator for shuffles (Fisher-Yates needs uniform integers).
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(splitmix64(seed)) {}
  uint64_t next() { return splitmix64(state++); }
  // unbiased integer in [0, n) (Lemire's method)
  uint64_t below(uint64_t n) {
    unsigned __int128 m = (unsigned __int128)next() * n;
    uint64_t l = uint64_t(m);
    if (l < n) {
      uint64_t t = (0 - n) % n;
      while (l < t) {
        m = (unsigned __int128)next() * n;
        l = uint64_t(m);
      }
    }
    return uint64_t(m >> 64);
  }
};

}  // namespace lowbit
