// fp16 accumulation kernels (see accum_fp16.hpp): one RN16(acc + a b) per step.
//
// Why the paths agree bit for bit, for binary16 a, b, acc (finite; inf and NaN propagate
// alike through every path):
// * The simulation's float64 sum equals RN16 of the exact sum x = acc + ab. x is a
//   multiple of 2^-48, so it is exact in float64 when |x| < 2^5; above 2^17 both round to
//   inf. In between, RN16(RN64(x)) could differ from RN16(x) only if RN64(x) landed on a
//   binary16 midpoint or the overflow bound m (|m| <= 65520, a multiple of 2^-6) with x != m,
//   i.e. 0 < |x - m| <= 2^-38. acc - m is a nonzero multiple of 2^-6 (acc is no midpoint)
//   and ab = A B 2^g with integers A, B < 2^11; |x - m| <= 2^-38 needs |ab| > 2^-7, so
//   2^g > 2^-29, and x - m is a nonzero multiple of 2^-28: a contradiction.
// * ab is exact in float32 (22 significant bits, exponents -48 .. 31).
// * Round-to-odd (RO: truncate, then set the last bit if anything was dropped) to float32's
//   24 bits, then RN to binary16's 11 bits, is RN16(x): a binary16 midpoint has at most 12
//   bits, so it is a float32 with an even last bit; RO(x) is odd unless x is exact, hence
//   RO(x) lies strictly on x's side of every midpoint (also at the overflow bound and in
//   the subnormal range, where float32 still has >= 13 more bits).
// * avx512f: fp32 FMAs rounded up and down; if RU(x) != RD(x) (x inexact) they are
//   neighbours and RO(x) is the odd one: RD(x) if its last bit is set, else RU(x); an exact
//   x is RU(x), with RU's sign of a zero sum (RD's x + (-x) = -0, the simulation's +0).
// * portable, avx2: TwoSum gives x = s + e exactly (s = RN32(x)); if e != 0 and s is even, RO(x)
//   is s's neighbour towards e, one step of s's bit pattern.
// * avx512_fp16: VFMADD231PH rounds x once to binary16 (embedded round-to-nearest), with
//   binary16 subnormals (lowbit never sets MXCSR's DAZ/FTZ; the FP16 instructions are
//   documented to ignore them anyway).
// No float32 intermediate is subnormal (|ab| >= 2^-48), so DAZ/FTZ do not matter either,
// and a compiler contracting acc + a*b or p - bp into an FMA changes nothing: ab is exact.
#include "lowbit/accum_fp16.hpp"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include "lowbit/check.hpp"
#include "lowbit/float_round.hpp"
#include "lowbit/kernels.hpp"
#include "lowbit/simd.hpp"

#define LB_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LB_AVX512F __attribute__((target("avx512f")))
#define LB_AVX512FP16 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512fp16")))

namespace lowbit {
namespace fp16acc {
namespace {

Format half_format() {
  Format f;
  f.kind = FormatKind::minifloat, f.exp_bits = 5, f.man_bits = 10, f.bits = 16;
  return f;
}

std::atomic<int64_t> n_kernel{0}, n_simulated{0};
std::mutex setting_mutex;
std::string the_setting = "auto";


// ---- portable ------------------------------------------------------------------------
// RN16(acc + p) for binary16 acc and an exact float32 product p: TwoSum, round to odd,
// then FloatRound<float> (bits, not F16C, so that any compiler target runs it).
inline float ro_sum(float acc, float p) {
  const float s = acc + p, bp = s - acc;
  const float e = (acc - (s - bp)) + (p - bp);
  const uint32_t u = bits_of(s), eb = bits_of(e);
  // integer selects only, so that the loop vectorises: adjust (0/1) when e != 0, s is
  // even and finite; one step away from zero, or towards it when e and s differ in sign
  const uint32_t adjust = ((eb << 1) != 0 ? 1u : 0u) & (~u & 1u) & ((u & 0x7F800000u) != 0x7F800000u ? 1u : 0u);
  const uint32_t towards = (eb ^ u) >> 31;
  return from_bits(u + adjust - 2u * (adjust & towards));
}

// One step of n chains; a loop like mac_lanes of accumulate.cpp, which the compiler vectorises.
LB_CLONES void step_portable(const FloatRound<float>& q, float* __restrict acc, const float* __restrict a, float b,
                             int64_t n) {
  for (int64_t l = 0; l < n; ++l) acc[l] = q(ro_sum(acc[l], a[l] * b));
}

void chains_portable(float* acc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, int64_t n) {
  const FloatRound<float> q(half_format());
  for (int64_t k = 0; k < K; ++k) step_portable(q, acc, a + k * lda, b[k * ldb], n);
}

// ---- avx2: the portable step on 8 lanes, VCVTPS2PH (F16C) -------------------------------
LB_AVX2 inline __m256 step_avx2(__m256 c, __m256 a, __m256 b) {
  const __m256 p = _mm256_mul_ps(a, b), s = _mm256_add_ps(c, p), bp = _mm256_sub_ps(s, c);
  const __m256 e = _mm256_add_ps(_mm256_sub_ps(c, _mm256_sub_ps(s, bp)), _mm256_sub_ps(p, bp));
  const __m256i u = _mm256_castps_si256(s);
  // e != 0 (false for NaN: s is then inf or NaN and stays); s odd; +-1 (away from / towards zero)
  const __m256i inexact = _mm256_castps_si256(_mm256_cmp_ps(e, _mm256_setzero_ps(), _CMP_NEQ_OQ));
  const __m256i odd = _mm256_srai_epi32(_mm256_slli_epi32(u, 31), 31);
  const __m256i step =
      _mm256_or_si256(_mm256_srai_epi32(_mm256_xor_si256(_mm256_castps_si256(e), u), 31), _mm256_set1_epi32(1));
  const __m256i ro = _mm256_add_epi32(u, _mm256_andnot_si256(odd, _mm256_and_si256(inexact, step)));
  return _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_castsi256_ps(ro), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

template <int V>
LB_AVX2 void tile_avx2(float* acc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K) {
  __m256 c[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) c[v] = _mm256_loadu_ps(acc + 8 * v);
  for (int64_t k = 0; k < K; ++k) {
    const __m256 bk = _mm256_set1_ps(b[k * ldb]);
    const float* row = a + k * lda;
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) c[v] = step_avx2(c[v], _mm256_loadu_ps(row + 8 * v), bk);
  }
  for (int v = 0; v < V; ++v) _mm256_storeu_ps(acc + 8 * v, c[v]);
}

// Whole vectors in tiles of up to 4; the last n % 8 lanes on the portable loop.
LB_AVX2 void chains_avx2(float* acc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, int64_t n) {
  const int64_t whole = n / 8 * 8;
  int64_t l = 0;
  for (; l + 32 <= whole; l += 32) tile_avx2<4>(acc + l, a + l, lda, b, ldb, K);
  switch ((whole - l) / 8) {
    case 3: tile_avx2<3>(acc + l, a + l, lda, b, ldb, K); break;
    case 2: tile_avx2<2>(acc + l, a + l, lda, b, ldb, K); break;
    case 1: tile_avx2<1>(acc + l, a + l, lda, b, ldb, K); break;
    default: break;
  }
  if (whole < n) chains_portable(acc + whole, a + whole, lda, b, ldb, K, n - whole);
}

// ---- avx512f: fp32 FMAs with embedded rounding, VCVTPS2PH ------------------------------
LB_AVX512F inline __m512 step_avx512f(__m512 c, __m512 a, __m512 b) {
  constexpr int kUp = _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC, kDown = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
  const __m512 up = _mm512_fmadd_round_ps(a, b, c, kUp), down = _mm512_fmadd_round_ps(a, b, c, kDown);
  // round to odd: RD if its last bit is set, else RU (odd when inexact, x itself when exact)
  const __mmask16 odd = _mm512_test_epi32_mask(_mm512_castps_si512(down), _mm512_set1_epi32(1));
  const __m512 ro = _mm512_mask_blend_ps(odd, up, down);
  return _mm512_cvtph_ps(_mm512_cvtps_ph(ro, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// One tile: V vectors of 16 lanes (the last one masked) of NO outputs, through all K
// steps; the NO outputs share each loaded vector of a.
template <int V, int NO>
LB_AVX512F void tile_avx512f(float* acc, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                             int64_t ldbo, int64_t K, __mmask16 last) {
  __mmask16 m[V];
  __m512 c[NO][V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) m[v] = v == V - 1 ? last : __mmask16(0xFFFF);
#pragma GCC unroll 4
  for (int o = 0; o < NO; ++o)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) c[o][v] = _mm512_maskz_loadu_ps(m[v], acc + o * ldc + 16 * v);
  for (int64_t k = 0; k < K; ++k) {
    const float* row = a + k * lda;
    __m512 bk[NO];
#pragma GCC unroll 4
    for (int o = 0; o < NO; ++o) bk[o] = _mm512_set1_ps(b[o * ldbo + k * ldb]);
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      const __m512 av = _mm512_maskz_loadu_ps(m[v], row + 16 * v);
#pragma GCC unroll 4
      for (int o = 0; o < NO; ++o) c[o][v] = step_avx512f(c[o][v], av, bk[o]);
    }
  }
  for (int o = 0; o < NO; ++o)
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(acc + o * ldc + 16 * v, m[v], c[o][v]);
}

// n lanes in equal tiles of at most `most` vectors (784 = 7 x 112, not 6 x 128 + 16);
// calls tile(l, V, last mask) for each.
template <class Tile>
LB_AVX512F void tiles_avx512f(int64_t n, int64_t most, Tile&& tile) {
  const int64_t tiles = (n + 16 * most - 1) / (16 * most), per = ((n + tiles - 1) / tiles + 15) / 16 * 16;
  for (int64_t l = 0; l < n; l += per) {
    const int64_t rem = std::min(per, n - l), V = (rem + 15) / 16, tail = rem - 16 * (V - 1);
    tile(l, V, __mmask16((1u << tail) - 1));
  }
}

using TileFn = void (*)(float*, int64_t, const float*, int64_t, const float*, int64_t, int64_t, int64_t, __mmask16);
template <int NO, size_t... I>
constexpr std::array<TileFn, sizeof...(I)> tile_table(std::index_sequence<I...>) {
  return {&tile_avx512f<int(I) + 1, NO>...};  // entry V - 1: V vectors
}

// Four outputs at a time in tiles of up to 4 vectors (16 chains), the rest one at a time
// in tiles of up to 8: either way enough independent chains to cover a step's latency.
LB_AVX512F void chains_avx512f(float* acc, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb,
                               int64_t ldbo, int64_t K, int64_t n, int64_t outs) {
  static constexpr auto four = tile_table<4>(std::make_index_sequence<4>{});
  static constexpr auto one = tile_table<1>(std::make_index_sequence<8>{});
  const auto run = [&](int64_t o, int64_t most, const TileFn* table) {
    tiles_avx512f(n, most, [&](int64_t l, int64_t V, __mmask16 last) {
      table[V - 1](acc + o * ldc + l, ldc, a + l, lda, b + o * ldbo, ldb, ldbo, K, last);
    });
  };
  int64_t o = 0;
  for (; o + 4 <= outs; o += 4) run(o, 4, four.data());
  for (; o < outs; ++o) run(o, 8, one.data());
}

// ---- avx512_fp16: VFMADD231PH -----------------------------------------------------------
// 32 float32 lanes (two 16-lane masks) as one vector of binary16 (exact: they are binary16 values).
LB_AVX512FP16 inline __m512h load_half(const float* p, __mmask16 lo, __mmask16 hi) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256i l = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(lo, p), kRn);
  const __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(hi, p + 16), kRn);
  return _mm512_castsi512_ph(_mm512_inserti64x4(_mm512_castsi256_si512(l), h, 1));
}
LB_AVX512FP16 inline void store_half(float* p, __m512h v, __mmask16 lo, __mmask16 hi) {
  const __m512i i = _mm512_castph_si512(v);
  _mm512_mask_storeu_ps(p, lo, _mm512_cvtph_ps(_mm512_castsi512_si256(i)));
  _mm512_mask_storeu_ps(p + 16, hi, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(i, 1)));
}

template <int V>
LB_AVX512FP16 void tile_fp16(float* acc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K,
                             __mmask32 last) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  __mmask16 lo[V], hi[V];
  __m512h c[V];
  for (int v = 0; v < V; ++v) {
    const __mmask32 m = v == V - 1 ? last : __mmask32(0xFFFFFFFFu);
    lo[v] = __mmask16(m), hi[v] = __mmask16(m >> 16), c[v] = load_half(acc + 32 * v, lo[v], hi[v]);
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m512h bk = _mm512_set1_ph(_Float16(b[k * ldb]));
    const float* row = a + k * lda;
    for (int v = 0; v < V; ++v) c[v] = _mm512_fmadd_round_ph(load_half(row + 32 * v, lo[v], hi[v]), bk, c[v], kRn);
  }
  for (int v = 0; v < V; ++v) store_half(acc + 32 * v, c[v], lo[v], hi[v]);
}

LB_AVX512FP16 void chains_fp16(float* acc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K,
                               int64_t n) {
  for (int64_t l = 0; l < n; l += 128) {
    const int64_t rem = std::min<int64_t>(128, n - l), V = (rem + 31) / 32, tail = rem - 32 * (V - 1);
    const __mmask32 last = tail == 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << tail) - 1);
    switch (V) {
      case 4: tile_fp16<4>(acc + l, a + l, lda, b, ldb, K, last); break;
      case 3: tile_fp16<3>(acc + l, a + l, lda, b, ldb, K, last); break;
      case 2: tile_fp16<2>(acc + l, a + l, lda, b, ldb, K, last); break;
      default: tile_fp16<1>(acc + l, a + l, lda, b, ldb, K, last); break;
    }
  }
}

LB_CLONES int64_t count_not_half(const float* x, int64_t n) {
  const FloatRound<float> q(half_format());
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += (q(x[i]) != x[i]) & (x[i] == x[i]);
  return bad;
}

}  // namespace

const char* path_name(Path p) {
  switch (p) {
    case Path::simulate: return "simulate";
    case Path::portable: return "portable";
    case Path::avx2: return "avx2";
    case Path::avx512f: return "avx512f";
    default: return "avx512_fp16";
  }
}

bool avx2_supported() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool avx512f_supported() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

bool native_supported() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  return avx512f_supported() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512fp16");
#else
  return false;
#endif
}

Path best_path() {
  if (kernels::portable_forced()) return Path::portable;
  return native_supported()    ? Path::avx512_fp16
         : avx512f_supported() ? Path::avx512f
         : avx2_supported()    ? Path::avx2
                               : Path::portable;
}

void set_path(const std::string& name) {
  LB_CHECK(name == "auto" || name == "simulate" || name == "portable" || name == "avx2" || name == "avx512f" ||
               name == "avx512_fp16",
           "fp16 accumulation: unknown path '", name,
           "' (expected 'auto', 'simulate', 'portable', 'avx2', 'avx512f' or 'avx512_fp16')");
  LB_CHECK(name != "avx2" || avx2_supported(), "fp16 accumulation: path 'avx2' needs AVX2, FMA and F16C; this CPU lacks them");
  LB_CHECK(name != "avx512f" || avx512f_supported(), "fp16 accumulation: path 'avx512f' needs AVX-512F; this CPU lacks it");
  LB_CHECK(name != "avx512_fp16" || native_supported(),
           "fp16 accumulation: path 'avx512_fp16' needs AVX512-FP16 (with BW, VL); this CPU lacks it");
  std::lock_guard<std::mutex> lock(setting_mutex);
  the_setting = name;
}

std::string setting() {
  std::lock_guard<std::mutex> lock(setting_mutex);
  return the_setting;
}

Path current() {
  const std::string s = setting();
  if (s == "simulate") return Path::simulate;
  if (s == "portable") return Path::portable;
  if (s == "avx2") return Path::avx2;
  if (s == "avx512f") return Path::avx512f;
  if (s == "avx512_fp16") return Path::avx512_fp16;
  return best_path();
}

bool applies(const Format& f) {
  return f.kind == FormatKind::minifloat && f.exp_bits == 5 && f.man_bits == 10 && !f.saturate && !f.fn &&
         f.rounding == Rounding::nearest;
}

bool all_half(const float* x, int64_t n) { return count_not_half(x, n) == 0; }

void chains(Path p, float* acc, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t ldbo,
            int64_t K, int64_t n, int64_t outs) {
  if (p == Path::avx512f) return chains_avx512f(acc, ldc, a, lda, b, ldb, ldbo, K, n, outs);
  for (int64_t o = 0; o < outs; ++o) {
    if (p == Path::avx512_fp16) chains_fp16(acc + o * ldc, a, lda, b + o * ldbo, ldb, K, n);
    else if (p == Path::avx2) chains_avx2(acc + o * ldc, a, lda, b + o * ldbo, ldb, K, n);
    else chains_portable(acc + o * ldc, a, lda, b + o * ldbo, ldb, K, n);
  }
}

void count_call(bool kernel) { (kernel ? n_kernel : n_simulated).fetch_add(1, std::memory_order_relaxed); }
int64_t kernel_calls() { return n_kernel.load(); }
int64_t simulated_calls() { return n_simulated.load(); }

}  // namespace fp16acc
}  // namespace lowbit
