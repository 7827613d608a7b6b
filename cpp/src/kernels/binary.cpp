// Binary x binary xnor-popcount GEMM and convolution (see kernels.hpp for the math).
//
// One micro-kernel serves both layers: rows of a "broadcast" operand P ([rows][kw]
// words) against a block of 32 lanes of a "lane" operand Q ([kw][32] words):
//     acc[i][l] += popcount(P[i][k] xor Q[k][l])
// Dense: P = packed inputs (rows = batch), Q = packed weights (lanes = units), so the
// output tile is row-major (N, units). Conv: P = packed weights (rows = output channels),
// Q = the packed input gathered per output position (lanes = positions of one image), so
// the tile lands in NCHW directly and the padding correction is a per-(channel,
// position) table. Lanes along the output need no horizontal reductions, and the
// reduction axis needs no alignment beyond 64 bits.
//
// The epilogue rounds twice in fp32, float(d) * scale then + bias, exactly as a
// simulated layer followed by a scale and a bias add: no FMA contraction here.
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "lowbit/check.hpp"
#include "lowbit/kernels.hpp"

#define LB_NATIVE __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,bmi2,popcnt")))

namespace lowbit {
namespace kernels {

bool binary_native_supported() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("bmi2") &&
         __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

bool portable_forced() {
  const char* v = std::getenv("LOWBIT_PORTABLE_KERNELS");
  return v && *v && std::strcmp(v, "0") != 0;
}

Path binary_path() { return !portable_forced() && binary_native_supported() ? Path::native : Path::portable; }

Path resolve_path(const std::string& name) {
  if (name == "auto") return binary_path();
  if (name == "portable") return Path::portable;
  LB_CHECK(name == "native", "kernels: unknown path '", name, "' (expected 'auto', 'native' or 'portable')");
  LB_CHECK(binary_native_supported(),
           "kernels: path='native' needs AVX-512 with VPOPCNTDQ (F, BW, DQ, VL) and BMI2; this CPU lacks them");
  return Path::native;
}

const char* path_name(Path p) { return p == Path::native ? "avx512_vpopcntdq" : "portable"; }

namespace {

constexpr int kRows = 6;  // rows per micro-tile: 6 x 4 accumulators of 8 lanes

// Where and how a tile's results go: y[r * ld + j] for lanes j < jmax.
struct Epilogue {
  float* y;
  int64_t ld, jmax;
  const float* scale;
  const float* bias;
  bool per_lane;          // scale/bias indexed by lane j (dense) or by row r (conv)
  const int32_t* corr;    // [r * ld + j] subtracted from the dot, or null
  int32_t kbits;
};

inline float affine(int32_t d, float s, float b) {
  const float t = float(d) * s;
  return t + b;
}

// ---- portable path -------------------------------------------------------------

__attribute__((target_clones("popcnt", "default")))
void tile_portable(const uint64_t* P, int64_t ldp, int rows, const uint64_t* Q, int64_t kw, int64_t r0,
                   int64_t j0, const Epilogue& e) {
  uint32_t acc[kRows][kLanes] = {};
  for (int64_t k = 0; k < kw; ++k) {
    const uint64_t* q = Q + k * kLanes;
    for (int i = 0; i < rows; ++i) {
      const uint64_t a = P[i * ldp + k];
      for (int l = 0; l < kLanes; ++l) acc[i][l] += uint32_t(__builtin_popcountll(a ^ q[l]));
    }
  }
  for (int i = 0; i < rows; ++i) {
    const int64_t r = r0 + i;
    for (int l = 0; l < kLanes && j0 + l < e.jmax; ++l) {
      const int64_t j = j0 + l, at = e.per_lane ? j : r;
      int32_t d = e.kbits - 2 * int32_t(acc[i][l]);
      if (e.corr) d -= e.corr[r * e.ld + j];
      e.y[r * e.ld + j] = affine(d, e.scale ? e.scale[at] : 1.f, e.bias ? e.bias[at] : 0.f);
    }
  }
}

void rows_portable(const uint64_t* P, int64_t rows, int64_t ldp, const uint64_t* Q, int64_t kw, int64_t j0,
                   const Epilogue& e) {
  for (int64_t r = 0; r < rows; r += kRows)
    tile_portable(P + r * ldp, ldp, int(std::min<int64_t>(kRows, rows - r)), Q, kw, r, j0, e);
}

// ---- native path: AVX-512 VPOPCNTDQ ---------------------------------------------

template <int R>
LB_NATIVE inline void tile_native(const uint64_t* P, int64_t ldp, const uint64_t* Q, int64_t kw, int64_t r0,
                                  int64_t j0, const Epilogue& e) {
  __m512i acc[R][4];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_si512();
  for (int64_t k = 0; k < kw; ++k) {
    const uint64_t* q = Q + k * kLanes;
    const __m512i q0 = _mm512_loadu_si512(q), q1 = _mm512_loadu_si512(q + 8), q2 = _mm512_loadu_si512(q + 16),
                  q3 = _mm512_loadu_si512(q + 24);
    for (int i = 0; i < R; ++i) {
      const __m512i a = _mm512_set1_epi64(int64_t(P[i * ldp + k]));
      acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(a, q0)));
      acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(a, q1)));
      acc[i][2] = _mm512_add_epi64(acc[i][2], _mm512_popcnt_epi64(_mm512_xor_si512(a, q2)));
      acc[i][3] = _mm512_add_epi64(acc[i][3], _mm512_popcnt_epi64(_mm512_xor_si512(a, q3)));
    }
  }
  const __m512i kb = _mm512_set1_epi64(e.kbits);
  for (int i = 0; i < R; ++i) {
    const int64_t r = r0 + i;
    for (int v = 0; v < 4; ++v) {
      const int64_t j = j0 + 8 * v;
      if (j >= e.jmax) break;
      const __mmask8 m = e.jmax - j >= 8 ? __mmask8(0xFF) : __mmask8((1u << (e.jmax - j)) - 1);
      __m256i d = _mm512_cvtepi64_epi32(_mm512_sub_epi64(kb, _mm512_slli_epi64(acc[i][v], 1)));
      if (e.corr) d = _mm256_sub_epi32(d, _mm256_maskz_loadu_epi32(m, e.corr + r * e.ld + j));
      __m256 s, b;
      if (e.per_lane) {
        s = e.scale ? _mm256_maskz_loadu_ps(m, e.scale + j) : _mm256_set1_ps(1.f);
        b = e.bias ? _mm256_maskz_loadu_ps(m, e.bias + j) : _mm256_setzero_ps();
      } else {
        s = _mm256_set1_ps(e.scale ? e.scale[r] : 1.f);
        b = _mm256_set1_ps(e.bias ? e.bias[r] : 0.f);
      }
      _mm256_mask_storeu_ps(e.y + r * e.ld + j, m, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(d), s), b));
    }
  }
}

LB_NATIVE void rows_native(const uint64_t* P, int64_t rows, int64_t ldp, const uint64_t* Q, int64_t kw, int64_t j0,
                           const Epilogue& e) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) tile_native<kRows>(P + r * ldp, ldp, Q, kw, r, j0, e);
  const uint64_t* p = P + r * ldp;
  switch (rows - r) {
    case 5: tile_native<5>(p, ldp, Q, kw, r, j0, e); break;
    case 4: tile_native<4>(p, ldp, Q, kw, r, j0, e); break;
    case 3: tile_native<3>(p, ldp, Q, kw, r, j0, e); break;
    case 2: tile_native<2>(p, ldp, Q, kw, r, j0, e); break;
    case 1: tile_native<1>(p, ldp, Q, kw, r, j0, e); break;
    default: break;
  }
}

void rows_xnor(Path p, const uint64_t* P, int64_t rows, int64_t ldp, const uint64_t* Q, int64_t kw, int64_t j0,
               const Epilogue& e) {
  if (p == Path::native) rows_native(P, rows, ldp, Q, kw, j0, e);
  else rows_portable(P, rows, ldp, Q, kw, j0, e);
}

// ---- sign packing -----------------------------------------------------------------

void pack_rows_portable(const float* x, int64_t rows, int64_t n, uint64_t* out) {
  const int64_t nw = words_for(n);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    uint64_t* o = out + r * nw;
    for (int64_t w = 0; w < nw; ++w) {
      uint64_t bits = 0;
      for (int64_t b = 0; b < 64 && w * 64 + b < n; ++b) bits |= uint64_t(xr[w * 64 + b] < 0.f) << b;
      o[w] = bits;
    }
  }
}

LB_NATIVE void pack_rows_native(const float* x, int64_t rows, int64_t n, uint64_t* out) {
  const int64_t nw = words_for(n);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    for (int64_t w = 0; w < nw; ++w) {
      uint64_t bits = 0;
      for (int q = 0; q < 4; ++q) {
        const int64_t at = w * 64 + 16 * q, left = n - at;
        if (left <= 0) break;
        const __mmask16 valid = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(valid, xr + at);
        bits |= uint64_t(_mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_LT_OQ)) << (16 * q);
      }
      out[r * nw + w] = bits;
    }
  }
}

// NCHW floats of one image -> [HW][cw] words (bit c % 64 of word c / 64 = x[c] < 0).
void pack_image_portable(const float* x, int64_t C, int64_t HW, uint64_t* out) {
  const int64_t cw = words_for(C);
  std::fill(out, out + HW * cw, uint64_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const float* xc = x + c * HW;
    uint64_t* o = out + c / 64;
    const uint64_t bit = uint64_t(1) << (c % 64);
    for (int64_t p = 0; p < HW; ++p)
      if (xc[p] < 0.f) o[p * cw] |= bit;
  }
}

// 8 positions x 8 channels at a time: a compare mask per channel (8 position bits),
// spread by PDEP to one bit per byte, shifted to the channel's bit: byte p of the
// result is then byte (c % 64) / 8 of position p's word.
LB_NATIVE void pack_image_native(const float* x, int64_t C, int64_t HW, uint64_t* out) {
  const int64_t cw = words_for(C);
  std::fill(out, out + HW * cw, uint64_t(0));
  const __m256 zero = _mm256_setzero_ps();
  int64_t p0 = 0;
  for (; p0 + 8 <= HW; p0 += 8) {
    uint8_t* o = reinterpret_cast<uint8_t*>(out + p0 * cw);
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      uint64_t spread = 0;
      for (int64_t j = 0; j < 8 && c0 + j < C; ++j) {
        const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + (c0 + j) * HW + p0), zero, _CMP_LT_OQ));
        spread |= _pdep_u64(uint64_t(m), 0x0101010101010101ull) << j;
      }
      const int64_t byte = c0 / 8;  // byte index within a position's cw words
      for (int p = 0; p < 8; ++p) o[p * cw * 8 + byte] = uint8_t(spread >> (8 * p));
    }
  }
  for (int64_t c = 0; c < C && p0 < HW; ++c)
    for (int64_t p = p0; p < HW; ++p)
      if (x[c * HW + p] < 0.f) out[p * cw + c / 64] |= uint64_t(1) << (c % 64);
}

}  // namespace

void pack_signs(const float* x, int64_t rows, int64_t n, uint64_t* out, Path p) {
  if (p == Path::native) pack_rows_native(x, rows, n, out);
  else pack_rows_portable(x, rows, n, out);
}

BinaryWeights pack_dense_weights(const float* w, int64_t fan_in, int64_t units) {
  LB_CHECK(fan_in >= 1 && units >= 1, "binary dense: expected a non-empty (fan_in, units) kernel, got (", fan_in,
           ", ", units, ")");
  BinaryWeights b;
  b.out_channels = units, b.in_channels = fan_in, b.kbits = fan_in, b.kwords = words_for(fan_in);
  const int64_t blocks = (units + kLanes - 1) / kLanes;
  b.bits.assign(size_t(blocks * b.kwords * kLanes), 0);
  for (int64_t k = 0; k < fan_in; ++k)
    for (int64_t u = 0; u < units; ++u)
      if (w[k * units + u] < 0.f)
        b.bits[size_t(((u / kLanes) * b.kwords + k / 64) * kLanes + u % kLanes)] |= uint64_t(1) << (k % 64);
  return b;
}

BinaryWeights pack_conv_weights(const float* w, int64_t O, int64_t C, int64_t kh, int64_t kw) {
  LB_CHECK(O >= 1 && C >= 1 && kh >= 1 && kw >= 1, "binary conv2d: expected a non-empty OIHW kernel, got (", O,
           ", ", C, ", ", kh, ", ", kw, ")");
  BinaryWeights b;
  b.conv = true;
  b.out_channels = O, b.in_channels = C, b.kh = kh, b.kw = kw;
  const int64_t taps = kh * kw, cw = words_for(C);
  b.kwords = taps * cw, b.kbits = C * taps;
  b.bits.assign(size_t(O * b.kwords), 0);
  b.tap_sum.assign(size_t(O * taps), int32_t(C));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t t = 0; t < taps; ++t)
        if (w[(o * C + c) * taps + t] < 0.f) {
          b.bits[size_t(o * b.kwords + t * cw + c / 64)] |= uint64_t(1) << (c % 64);
          b.tap_sum[size_t(o * taps + t)] -= 2;
        }
  return b;
}

void binary_dense(const float* x, int64_t N, const BinaryWeights& w, const float* scale, const float* bias,
                  float* y, Path p) {
  LB_CHECK(!w.conv, "binary_dense: got convolution weights");
  std::vector<uint64_t> xp(size_t(N * w.kwords));
  pack_signs(x, N, w.in_channels, xp.data(), p);
  const Epilogue e{y, w.out_channels, w.out_channels, scale, bias, true, nullptr, int32_t(w.kbits)};
  const int64_t blocks = (w.out_channels + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b)
    rows_xnor(p, xp.data(), N, w.kwords, w.bits.data() + b * w.kwords * kLanes, w.kwords, b * kLanes, e);
}

void binary_conv2d(const float* x, const ConvShape& s, const BinaryWeights& w, const float* scale,
                   const float* bias, float* y, Path p) {
  LB_CHECK(w.conv, "binary_conv2d: got dense weights");
  LB_CHECK(s.C == w.in_channels, "binary_conv2d: input has ", s.C, " channels, the kernel expects ", w.in_channels);
  const int64_t ekh = (w.kh - 1) * s.dh + 1, ekw = (w.kw - 1) * s.dw + 1;
  LB_CHECK(s.H + s.pt + s.pb >= ekh && s.W + s.pl + s.pr >= ekw, "binary_conv2d: input ", s.H, "x", s.W,
           " (padded) is smaller than the kernel extent ", ekh, "x", ekw);
  const int64_t OH = (s.H + s.pt + s.pb - ekh) / s.sh + 1, OW = (s.W + s.pl + s.pr - ekw) / s.sw + 1;
  const int64_t P = OH * OW, HW = s.H * s.W, cw = words_for(s.C), taps = w.kh * w.kw, O = w.out_channels;
  const int64_t pblocks = (P + kLanes - 1) / kLanes;

  // Input signs, position-major: xp[n][h][w][cw].
  std::vector<uint64_t> xp(size_t(s.N * HW * cw));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.N; ++n) {
    if (p == Path::native) pack_image_native(x + n * s.C * HW, s.C, HW, xp.data() + n * HW * cw);
    else pack_image_portable(x + n * s.C * HW, s.C, HW, xp.data() + n * HW * cw);
  }

  // Padding correction corr[o][pos] (integer, before the epilogue's scale).
  std::vector<int32_t> corr;
  if (s.pt || s.pb || s.pl || s.pr) {
    corr.assign(size_t(O * P), 0);
    std::vector<int64_t> padded;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        padded.clear();
        for (int64_t i = 0; i < w.kh; ++i)
          for (int64_t j = 0; j < w.kw; ++j) {
            const int64_t ih = oh * s.sh - s.pt + i * s.dh, iw = ow * s.sw - s.pl + j * s.dw;
            if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) padded.push_back(i * w.kw + j);
          }
        if (padded.empty()) continue;
        for (int64_t o = 0; o < O; ++o) {
          int32_t c = 0;
          for (int64_t t : padded) c += w.tap_sum[size_t(o * taps + t)];
          corr[size_t(o * P + oh * OW + ow)] = c;
        }
      }
  }

  // Per (image, block of 32 positions): gather the block's receptive fields (a padded
  // tap reads word 0 = all +1, undone by corr), then all output channels against it.
#pragma omp parallel
  {
    std::vector<uint64_t> q(size_t(w.kwords * kLanes));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < s.N * pblocks; ++t) {
      const int64_t n = t / pblocks, pb = t % pblocks;
      const uint64_t* xn = xp.data() + n * HW * cw;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t pos = pb * kLanes + l;
        const int64_t oh = pos / OW, ow = pos % OW;
        for (int64_t i = 0; i < w.kh; ++i)
          for (int64_t j = 0; j < w.kw; ++j) {
            const int64_t ih = oh * s.sh - s.pt + i * s.dh, iw = ow * s.sw - s.pl + j * s.dw;
            const bool in = pos < P && ih >= 0 && ih < s.H && iw >= 0 && iw < s.W;
            uint64_t* qk = q.data() + ((i * w.kw + j) * cw) * kLanes + l;
            for (int64_t c = 0; c < cw; ++c) qk[c * kLanes] = in ? xn[(ih * s.W + iw) * cw + c] : 0;
          }
      }
      const Epilogue e{y + n * O * P, P, P, scale, bias, false, corr.empty() ? nullptr : corr.data(),
                       int32_t(w.kbits)};
      rows_xnor(p, w.bits.data(), O, w.kwords, q.data(), w.kwords, pb * kLanes, e);
    }
  }
}

namespace {
LB_NATIVE double peak_native(double seconds) {
  constexpr int kChains = 12;
  __m512i v[kChains];
  for (int i = 0; i < kChains; ++i) v[i] = _mm512_set1_epi64(int64_t(0x9E3779B97F4A7C15ull * uint64_t(i + 1)));
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  int64_t rounds = 0;
  double dt = 0;
  do {
    for (int r = 0; r < 4096; ++r)
      for (int i = 0; i < kChains; ++i) v[i] = _mm512_popcnt_epi64(v[i]);
    rounds += 4096;
    dt = std::chrono::duration<double>(clock::now() - t0).count();
  } while (dt < seconds);
  __m512i s = v[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_epi64(s, v[i]);
  volatile int64_t sink = _mm512_reduce_add_epi64(s);
  (void)sink;
  return double(rounds) * kChains * 512.0 / dt;
}
}  // namespace

double popcount_peak_bits_per_s(double seconds) {
  LB_CHECK(binary_native_supported(), "popcount_peak: needs AVX-512 VPOPCNTDQ; this CPU lacks it");
  return peak_native(seconds);
}

}  // namespace kernels
}  // namespace lowbit
