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

// Where and how a tile's results go. Lane j < jmax of row r is y[r * ld + j], or, with
// wp > 0 (convolution), lane j is output position (j / wp, j % wp); only columns < ow
// are outputs (wp > ow on the stride-1 padded-width grid), at y[r * ld + (j / wp) * ow + j % wp].
// The padding correction depends on the output row only through its class (which
// kernel rows fall in the padding): corr[((r * classes) + row_class[j / wp]) * wp + j % wp].
struct Epilogue {
  float* y;  // with `tile`, a [rows][32] buffer of the block's lanes (all of them, unmapped)
  int64_t ld, jmax;
  const float* scale;  // never null (ones / zeros when the caller gave none)
  const float* bias;
  bool per_lane;  // scale/bias indexed by lane j (dense) or by row r (conv)
  int32_t kbits;
  int64_t wp = 0, ow = 0;
  const int32_t* corr = nullptr;
  const int32_t* row_class = nullptr;
  int64_t classes = 0;
  const uint8_t* touches = nullptr;  // [class][column]: 1 where some channel's correction is not 0
  bool tile = false;
  const int32_t* lane_kbits = nullptr;  // per lane of the block, instead of kbits (wide words, see binary_conv2d)
  int32_t correction(int64_t r, int64_t j) const {
    return corr ? corr[(r * classes + row_class[j / wp]) * wp + j % wp] : 0;
  }
};

inline float affine(int32_t d, float s, float b) {
  const float t = float(d) * s;
  return t + b;
}

// ---- portable path -------------------------------------------------------------
// Q + koff[k] is the k-th reduction word of the block's 32 lanes.

__attribute__((target_clones("popcnt", "default")))
void tile_portable(const uint64_t* P, int64_t ldp, int rows, const uint64_t* Q, const int64_t* koff, int64_t kw,
                   int64_t r0, int64_t j0, const Epilogue& e) {
  uint32_t acc[kRows][kLanes] = {};
  for (int64_t k = 0; k < kw; ++k) {
    const uint64_t* q = Q + koff[k];
    for (int i = 0; i < rows; ++i) {
      const uint64_t a = P[i * ldp + k];
      for (int l = 0; l < kLanes; ++l) acc[i][l] += uint32_t(__builtin_popcountll(a ^ q[l]));
    }
  }
  for (int i = 0; i < rows; ++i) {
    const int64_t r = r0 + i;
    for (int l = 0; l < kLanes && j0 + l < e.jmax; ++l) {
      const int64_t j = j0 + l, at = e.per_lane ? j : r;
      if (e.wp && j % e.wp >= e.ow) continue;
      const int32_t d = (e.lane_kbits ? e.lane_kbits[l] : e.kbits) - 2 * int32_t(acc[i][l]) - e.correction(r, j);
      const int64_t yi = e.tile ? l : e.wp ? (j / e.wp) * e.ow + j % e.wp : j;
      e.y[r * e.ld + yi] = affine(d, e.scale[at], e.bias[at]);
    }
  }
}

void rows_portable(const uint64_t* P, int64_t rows, int64_t ldp, const uint64_t* Q, const int64_t* koff,
                   int64_t kw, int64_t j0, const Epilogue& e) {
  for (int64_t r = 0; r < rows; r += kRows)
    tile_portable(P + r * ldp, ldp, int(std::min<int64_t>(kRows, rows - r)), Q, koff, kw, r, j0, e);
}

// ---- native path: AVX-512 VPOPCNTDQ ---------------------------------------------

// The stores of one 8-lane vector: up to 3 runs (output rows), each a mask, an offset
// from lane j to its output index and one from lane j to its correction; `corr` says
// whether any of its lanes has one (only those next to the padding do).
struct LaneRuns {
  int n = 0;
  bool corr = false;
  __mmask8 mask[3];
  int64_t shift[3], corr_shift[3];
};

LaneRuns lane_runs(const Epilogue& e, int64_t j) {
  LaneRuns lr;
  const int64_t end = std::min(j + 8, e.jmax);
  if (!e.wp) {
    if (end > j) lr.mask[0] = __mmask8((1u << (end - j)) - 1), lr.shift[0] = lr.corr_shift[0] = 0, lr.n = 1;
    return lr;
  }
  for (int64_t row = j / e.wp; row * e.wp < end && lr.n < 3; ++row) {
    const int64_t lo = std::max(j, row * e.wp), hi = std::min(end, row * e.wp + e.ow);
    if (hi <= lo) continue;
    lr.mask[lr.n] = __mmask8(((1u << (hi - j)) - 1) & ~((1u << (lo - j)) - 1));
    lr.corr_shift[lr.n] = e.corr ? (e.row_class[row] - row) * e.wp : 0;
    if (e.corr)
      for (int64_t l = lo; l < hi && !lr.corr; ++l) lr.corr = e.touches[e.row_class[row] * e.wp + l - row * e.wp];
    lr.shift[lr.n++] = -row * (e.wp - e.ow);
  }
  return lr;
}

// What a task's 4 lane vectors share across all rows: their store runs and, with
// per-lane affine (dense), their scale and bias.
struct LanePlan {
  LaneRuns runs[4];
  __m256 scale[4], bias[4];
};

template <int R, bool PerLane, bool Corr, bool Tile>
LB_NATIVE inline void tile_native(const uint64_t* P, int64_t ldp, const uint64_t* Q, const int64_t* koff, int64_t kw,
                                  int64_t r0, int64_t j0, const Epilogue& e, const LanePlan& plan) {
  // Loops over i and v are unrolled so that the accumulators live in registers.
  __m512i acc[R][4];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_si512();
  for (int64_t k = 0; k < kw; ++k) {
    const uint64_t* q = Q + koff[k];
    const __m512i q0 = _mm512_loadu_si512(q), q1 = _mm512_loadu_si512(q + 8), q2 = _mm512_loadu_si512(q + 16),
                  q3 = _mm512_loadu_si512(q + 24);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m512i a = _mm512_set1_epi64(int64_t(P[i * ldp + k]));
      acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(a, q0)));
      acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(a, q1)));
      acc[i][2] = _mm512_add_epi64(acc[i][2], _mm512_popcnt_epi64(_mm512_xor_si512(a, q2)));
      acc[i][3] = _mm512_add_epi64(acc[i][3], _mm512_popcnt_epi64(_mm512_xor_si512(a, q3)));
    }
  }
  __m512i kb[4];
  for (int v = 0; v < 4; ++v)
    kb[v] = e.lane_kbits ? _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.lane_kbits + 8 * v)))
                         : _mm512_set1_epi64(e.kbits);
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const int64_t r = r0 + i;
    float* yr = e.y + r * e.ld + (Tile ? 0 : j0);
    const int32_t* cr = Corr ? e.corr + r * e.classes * e.wp + j0 : nullptr;
    const __m256 rs = _mm256_set1_ps(PerLane ? 1.f : e.scale[r]), rb = _mm256_set1_ps(PerLane ? 0.f : e.bias[r]);
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const LaneRuns& lr = plan.runs[v];
      __m256i d = _mm512_cvtepi64_epi32(_mm512_sub_epi64(kb[v], _mm512_slli_epi64(acc[i][v], 1)));
      if (Corr && lr.corr)  // per run: the row of the class table of that output row
        for (int t = 0; t < lr.n; ++t)
          d = _mm256_sub_epi32(d, _mm256_maskz_loadu_epi32(lr.mask[t], cr + 8 * v + lr.corr_shift[t]));
      const __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(d), PerLane ? plan.scale[v] : rs),
                                     PerLane ? plan.bias[v] : rb);
      if (Tile) _mm256_storeu_ps(yr + 8 * v, y);
      else
        for (int t = 0; t < lr.n; ++t) _mm256_mask_storeu_ps(yr + 8 * v + lr.shift[t], lr.mask[t], y);
    }
  }
}

template <bool PerLane, bool Corr, bool Tile>
LB_NATIVE void rows_native_t(const uint64_t* P, int64_t rows, int64_t ldp, const uint64_t* Q, const int64_t* koff,
                             int64_t kw, int64_t j0, const Epilogue& e, const LanePlan& plan) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows)
    tile_native<kRows, PerLane, Corr, Tile>(P + r * ldp, ldp, Q, koff, kw, r, j0, e, plan);
  const uint64_t* p = P + r * ldp;
  switch (rows - r) {
    case 5: tile_native<5, PerLane, Corr, Tile>(p, ldp, Q, koff, kw, r, j0, e, plan); break;
    case 4: tile_native<4, PerLane, Corr, Tile>(p, ldp, Q, koff, kw, r, j0, e, plan); break;
    case 3: tile_native<3, PerLane, Corr, Tile>(p, ldp, Q, koff, kw, r, j0, e, plan); break;
    case 2: tile_native<2, PerLane, Corr, Tile>(p, ldp, Q, koff, kw, r, j0, e, plan); break;
    case 1: tile_native<1, PerLane, Corr, Tile>(p, ldp, Q, koff, kw, r, j0, e, plan); break;
    default: break;
  }
}

LB_NATIVE void rows_native(const uint64_t* P, int64_t rows, int64_t ldp, const uint64_t* Q, const int64_t* koff,
                           int64_t kw, int64_t j0, const Epilogue& e) {
  LanePlan plan;
  for (int v = 0; v < 4; ++v) {
    const int64_t j = j0 + 8 * v;
    plan.runs[v] = lane_runs(e, j);
    if (e.per_lane && j < e.jmax) {
      const __mmask8 m = e.jmax - j >= 8 ? __mmask8(0xFF) : __mmask8((1u << (e.jmax - j)) - 1);
      plan.scale[v] = _mm256_maskz_loadu_ps(m, e.scale + j);
      plan.bias[v] = _mm256_maskz_loadu_ps(m, e.bias + j);
    }
  }
  if (e.per_lane) rows_native_t<true, false, false>(P, rows, ldp, Q, koff, kw, j0, e, plan);
  else if (e.corr && e.tile) rows_native_t<false, true, true>(P, rows, ldp, Q, koff, kw, j0, e, plan);
  else if (e.corr) rows_native_t<false, true, false>(P, rows, ldp, Q, koff, kw, j0, e, plan);
  else if (e.tile) rows_native_t<false, false, true>(P, rows, ldp, Q, koff, kw, j0, e, plan);
  else rows_native_t<false, false, false>(P, rows, ldp, Q, koff, kw, j0, e, plan);
}

void rows_xnor(Path p, const uint64_t* P, int64_t rows, int64_t ldp, const uint64_t* Q, const int64_t* koff,
               int64_t kw, int64_t j0, const Epilogue& e) {
  if (p == Path::native) rows_native(P, rows, ldp, Q, koff, kw, j0, e);
  else rows_portable(P, rows, ldp, Q, koff, kw, j0, e);
}

// ---- channel-blocked output ---------------------------------------------------------
// A task's tile ([O][32 lanes], every lane) into nChw16c: lane l is output position pos[l],
// or dropped (-1). Natively 8 channels x 8 lanes at a time, transposed in registers:
// a lane's 8 channels are 32 contiguous bytes of its 16-channel block.
void tile_to_blocked_portable(const float* tile, int64_t O, const int64_t* pos, int64_t P, float* y) {
  for (int64_t o = 0; o < O; ++o)
    for (int64_t l = 0; l < kLanes; ++l)
      if (pos[l] >= 0) y[((o / 16) * P + pos[l]) * 16 + o % 16] = tile[o * kLanes + l];
}

LB_NATIVE void tile_to_blocked_native(const float* tile, int64_t O, const int64_t* pos, int64_t P, float* y) {
  for (int64_t c8 = 0; c8 < O; c8 += 8) {
    float* yc = y + (c8 / 16) * P * 16 + c8 % 16;
    for (int v = 0; v < 4; ++v) {
      __m256 r[8], t[8], u[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(tile + (c8 + i) * kLanes + 8 * v);
      for (int i = 0; i < 4; ++i)  // t[2i], t[2i+1]: rows 2i, 2i+1 interleaved
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]), t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      for (int h = 0; h < 2; ++h) {  // u[4h + k]: column k (and k + 4) of rows 4h .. 4h + 3
        u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
      }
      for (int k = 0; k < 4; ++k)  // lanes k and k + 4: all 8 rows
        r[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20), r[k + 4] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
      for (int k = 0; k < 8; ++k)
        if (pos[8 * v + k] >= 0) _mm256_storeu_ps(yc + pos[8 * v + k] * 16, r[k]);
    }
  }
}

// ---- wide words (C <= 32) ---------------------------------------------------------
// In place, ascending: word q <- words q .. q + ppw - 1 (of one plane), word t shifted
// by t C bits. A step reads only words it has not written yet.
void widen_portable(uint64_t* img, int64_t n, int64_t ppw, int64_t C) {
  for (int64_t q = 0; q < n; ++q) {
    uint64_t v = img[q];
    for (int64_t t = 1; t < ppw && q + t < n; ++t) v |= img[q + t] << (t * C);
    img[q] = v;
  }
}
LB_NATIVE void widen_native(uint64_t* img, int64_t n, int64_t ppw, int64_t C) {
  int64_t q = 0;
  for (; q + 8 + ppw <= n; q += 8) {  // all loads of a step before its store
    __m512i v = _mm512_loadu_si512(img + q);
    for (int64_t t = 1; t < ppw; ++t)
      v = _mm512_or_si512(v, _mm512_sll_epi64(_mm512_loadu_si512(img + q + t), _mm_cvtsi64_si128(t * C)));
    _mm512_storeu_si512(img + q, v);
  }
  widen_portable(img + q, n - q, ppw, C);
}
void widen(Path p, uint64_t* img, int64_t n, int64_t ppw, int64_t C) {
  if (p == Path::native) widen_native(img, n, ppw, C);
  else widen_portable(img, n, ppw, C);
}

// kbits + 2 sum_k popcount(Q_k & ~mask_k) per lane of a block: the masked slots' share of
// every output channel's count (the weights are 0 there, so it is the input's popcount).
__attribute__((target_clones("popcnt", "default")))
void masked_counts_portable(const uint64_t* Q, const int64_t* koff, const uint64_t* kmask, int64_t kw, int32_t kbits,
                            int32_t* out) {
  for (int64_t l = 0; l < kLanes; ++l) {
    int32_t extra = 0;
    for (int64_t k = 0; k < kw; ++k) extra += __builtin_popcountll(Q[koff[k] + l] & ~kmask[k]);
    out[l] = kbits + 2 * extra;
  }
}
LB_NATIVE void masked_counts_native(const uint64_t* Q, const int64_t* koff, const uint64_t* kmask, int64_t kw,
                                    int32_t kbits, int32_t* out) {
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  for (int64_t k = 0; k < kw; ++k) {
    const __m512i m = _mm512_set1_epi64(int64_t(~kmask[k]));
    for (int v = 0; v < 4; ++v)
      acc[v] = _mm512_add_epi64(acc[v], _mm512_popcnt_epi64(_mm512_and_si512(_mm512_loadu_si512(Q + koff[k] + 8 * v), m)));
  }
  for (int v = 0; v < 4; ++v)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8 * v),
                        _mm512_cvtepi64_epi32(_mm512_add_epi64(_mm512_set1_epi64(kbits), _mm512_slli_epi64(acc[v], 1))));
}
void masked_counts(Path p, const uint64_t* Q, const int64_t* koff, const uint64_t* kmask, int64_t kw, int32_t kbits,
                   int32_t* out) {
  if (p == Path::native) masked_counts_native(Q, koff, kmask, kw, kbits, out);
  else masked_counts_portable(Q, koff, kmask, kw, kbits, out);
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

// One NCHW image into zero-padded planes of words: bit c % 64 of plane c / 64 at
// (h + pt, w + pl) of a (Hp, Wp) grid. The padding words stay 0 (= +1, see corr).
struct Planes {
  int64_t H, W, C, Wp, plane, pt, pl;
  uint64_t* at(uint64_t* img, int64_t c, int64_t h, int64_t w) const {
    return img + (c / 64) * plane + (h + pt) * Wp + (w + pl);
  }
};

void pack_image_portable(const float* x, const Planes& g, uint64_t* img) {
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w)
        if (x[(c * g.H + h) * g.W + w] < 0.f) *g.at(img, c, h, w) |= uint64_t(1) << (c % 64);
}

// 8 positions x 8 channels at a time: a compare mask per channel (8 position bits),
// spread by PDEP to one bit per byte, shifted to the channel's bit: byte p of the
// result is byte (c % 64) / 8 of position p's word.
// Channel groups outermost: 8 input rows stream through, while the byte stores land in
// the image's planes, which stay in cache. The 8 streams are each prefetched 2 KiB ahead:
// the hardware prefetcher alone left the loop waiting on its loads at a third of the
// memory bandwidth (64->64 at 56x56, batch 16: pack 1.36 -> about 0.6 ms).
LB_NATIVE void pack_image_native(const float* x, const Planes& g, uint64_t* img) {
  constexpr int64_t kAhead = 512;  // floats
  const __m256 zero = _mm256_setzero_ps();
  const int64_t HW = g.H * g.W;
  for (int64_t c0 = 0; c0 < g.C; c0 += 8) {
    const int nc = int(std::min<int64_t>(8, g.C - c0));
    const float* xc = x + c0 * HW;
    for (int64_t h = 0; h < g.H; ++h) {
      uint8_t* o = reinterpret_cast<uint8_t*>(g.at(img, c0, h, 0)) + (c0 % 64) / 8;
      for (int64_t w0 = 0; w0 < g.W; w0 += 8) {
        const int n = int(std::min<int64_t>(8, g.W - w0));
        const __mmask8 valid = __mmask8((1u << n) - 1);
        const float* xp = xc + h * g.W + w0;
        for (int j = 0; j < nc; ++j) _mm_prefetch(reinterpret_cast<const char*>(xp + j * HW + kAhead), _MM_HINT_T0);
        uint64_t spread = 0;
        for (int j = 0; j < nc; ++j) {
          const unsigned m = _mm256_mask_cmp_ps_mask(valid, _mm256_maskz_loadu_ps(valid, xp + j * HW), zero, _CMP_LT_OQ);
          spread |= _pdep_u64(m, 0x0101010101010101ull) << j;
        }
        for (int p = 0; p < n; ++p) o[8 * (w0 + p)] = uint8_t(spread >> (8 * p));
      }
    }
  }
}

// The same planes from an nChw16c image: the 16 channels of block cb at a pixel are
// contiguous, so their signs are one compare mask, bits 16 (cb % 4) .. +15 of the word.
void pack_blocked_portable(const float* x, const Planes& g, uint64_t* img) {
  for (int64_t cb = 0; cb < g.C / 16; ++cb)
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w) {
        const float* v = x + ((cb * g.H + h) * g.W + w) * 16;
        uint64_t bits = 0;
        for (int c = 0; c < 16; ++c) bits |= uint64_t(v[c] < 0.f) << c;
        *g.at(img, cb * 16, h, w) |= bits << (16 * (cb % 4));
      }
}

LB_NATIVE void pack_blocked_native(const float* x, const Planes& g, uint64_t* img) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t cb = 0; cb < g.C / 16; ++cb)
    for (int64_t h = 0; h < g.H; ++h) {
      const float* v = x + (cb * g.H + h) * g.W * 16;
      uint16_t* o = reinterpret_cast<uint16_t*>(g.at(img, cb * 16, h, 0)) + cb % 4;  // little endian
      for (int64_t w = 0; w < g.W; ++w)
        o[4 * w] = uint16_t(_mm512_cmp_ps_mask(_mm512_loadu_ps(v + 16 * w), zero, _CMP_LT_OQ));
    }
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
  // Per block of 32 units and word of 64 inputs: 64 rows of 32 floats in, 32 words out.
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t lanes = std::min<int64_t>(kLanes, units - blk * kLanes);
    for (int64_t kw = 0; kw < b.kwords; ++kw) {
      uint64_t* words = b.bits.data() + (blk * b.kwords + kw) * kLanes;
      for (int64_t bit = 0; bit < 64 && kw * 64 + bit < fan_in; ++bit) {
        const float* row = w + (kw * 64 + bit) * units + blk * kLanes;
        for (int64_t l = 0; l < lanes; ++l) words[l] |= uint64_t(row[l] < 0.f) << bit;
      }
    }
  }
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
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t t = 0; t < taps; ++t)
        if (w[(o * C + c) * taps + t] < 0.f) {
          b.bits[size_t(o * b.kwords + t * cw + c / 64)] |= uint64_t(1) << (c % 64);
          b.tap_sum[size_t(o * taps + t)] -= 2;
        }
  if (C <= 32 && kw > 1) {  // the wide layout: tap j of kernel row i in word j / ppw, slot j % ppw
    b.ppw = 64 / C;
    const int64_t wpr = (kw + b.ppw - 1) / b.ppw;
    b.wide_kwords = kh * wpr;
    b.wide.assign(size_t(O * b.wide_kwords), 0);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j)
            if (w[((o * C + c) * kh + i) * kw + j] < 0.f)
              b.wide[size_t(o * b.wide_kwords + i * wpr + j / b.ppw)] |= uint64_t(1) << ((j % b.ppw) * C + c);
  }
  return b;
}

namespace {
// The caller's scale and bias, or ones and zeros.
struct Affine {
  std::vector<float> own;
  const float *scale, *bias;
  Affine(const float* s, const float* b, int64_t n) : scale(s), bias(b) {
    if (s && b) return;
    own.assign(size_t(2 * n), 0.f);
    std::fill(own.begin(), own.begin() + n, 1.f);
    if (!s) scale = own.data();
    if (!b) bias = own.data() + n;
  }
};

std::vector<int64_t> lane_block_offsets(int64_t kw) {
  std::vector<int64_t> koff(static_cast<size_t>(kw));
  for (int64_t k = 0; k < kw; ++k) koff[size_t(k)] = k * kLanes;
  return koff;
}
}  // namespace

void binary_dense(const float* x, int64_t N, const BinaryWeights& w, const float* scale, const float* bias,
                  float* y, Path p) {
  LB_CHECK(!w.conv, "binary_dense: got convolution weights");
  std::vector<uint64_t> xp(size_t(N * w.kwords));
  pack_signs(x, N, w.in_channels, xp.data(), p);
  const Affine a(scale, bias, w.out_channels);
  const Epilogue e{y, w.out_channels, w.out_channels, a.scale, a.bias, true, int32_t(w.kbits)};
  const std::vector<int64_t> koff = lane_block_offsets(w.kwords);
  const int64_t blocks = (w.out_channels + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b)
    rows_xnor(p, xp.data(), N, w.kwords, w.bits.data() + b * w.kwords * kLanes, koff.data(), w.kwords, b * kLanes, e);
}

// Stride 1 needs no gather: on the padded-width grid (position j = oh * Wp + ow) tap
// (i, j') of every lane sits at the same offset i*dh*Wp + j'*dw in the padded planes,
// so a block of 32 consecutive grid positions reads 32 consecutive words per reduction
// word. Lanes with ow >= OW are computed and dropped (2 of 16 columns at 14x14, pad 1).
// Other strides gather each block's receptive fields into [kwords][32] first.
void binary_conv2d(const float* x, const ConvShape& s, const BinaryWeights& w, const float* scale,
                   const float* bias, float* y, Path p) {
  LB_CHECK(w.conv, "binary_conv2d: got dense weights");
  LB_CHECK(s.C == w.in_channels, "binary_conv2d: input has ", s.C, " channels, the kernel expects ", w.in_channels);
  LB_CHECK(s.sh >= 1 && s.sw >= 1 && s.dh >= 1 && s.dw >= 1 && s.pt >= 0 && s.pb >= 0 && s.pl >= 0 && s.pr >= 0,
           "binary_conv2d: expected strides and dilations >= 1 and paddings >= 0");
  LB_CHECK(!s.blocked || s.C % 16 == 0, "binary_conv2d: a blocked (nChw16c) input needs C % 16 == 0, got C = ", s.C);
  LB_CHECK(!s.blocked_out || w.out_channels % 16 == 0,
           "binary_conv2d: a blocked (nChw16c) output needs O % 16 == 0, got O = ", w.out_channels);
  const int64_t ekh = (w.kh - 1) * s.dh + 1, ekw = (w.kw - 1) * s.dw + 1;
  LB_CHECK(s.H + s.pt + s.pb >= ekh && s.W + s.pl + s.pr >= ekw, "binary_conv2d: input ", s.H, "x", s.W,
           " (padded) is smaller than the kernel extent ", ekh, "x", ekw);
  const int64_t OH = (s.H + s.pt + s.pb - ekh) / s.sh + 1, OW = (s.W + s.pl + s.pr - ekw) / s.sw + 1;
  const int64_t P = OH * OW, cw = words_for(s.C), taps = w.kh * w.kw, O = w.out_channels;
  const int64_t Hp = s.H + s.pt + s.pb, Wp = s.W + s.pl + s.pr;
  const Planes g{s.H, s.W, s.C, Wp, Hp * Wp, s.pt, s.pl};
  const int64_t image = cw * g.plane;
  const bool direct = s.sh == 1 && s.sw == 1;
  const int64_t grid = direct ? OH * Wp : P;  // lane positions per image
  // few channels (C <= 32): a word holds ppw neighbouring pixels, so that the taps of a
  // kernel row share words (16 channels, 3x3: 3 words per lane instead of 9)
  const bool wide = !w.wide.empty() && s.dw == 1;
  const int64_t ppw = wide ? w.ppw : 1;
  const int64_t pblocks = (grid + kLanes - 1) / kLanes;

  // Input signs in padded planes, plus slack: the last block's dropped lanes read past
  // the last plane.
  std::vector<uint64_t> xp(size_t(s.N * image + kLanes + ekw + Wp), 0);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.N; ++n) {
    const float* xn = x + n * s.C * s.H * s.W;
    uint64_t* img = xp.data() + n * image;
    if (s.blocked) {
      if (p == Path::native) pack_blocked_native(xn, g, img);
      else pack_blocked_portable(xn, g, img);
    } else {
      if (p == Path::native) pack_image_native(xn, g, img);
      else pack_image_portable(xn, g, img);
    }
    if (wide) widen(p, img, g.plane, ppw, s.C);
  }

  // Padding correction (integer, before the epilogue's scale): per output channel,
  // class of output row (the set of kernel rows in the padding) and grid column.
  const int64_t row = direct ? Wp : OW;
  std::vector<int32_t> corr, row_class(static_cast<size_t>(OH));
  std::vector<uint8_t> touches;
  int64_t classes = 0;
  if (s.pt || s.pb || s.pl || s.pr) {
    std::vector<uint64_t> class_rows;  // bit i: kernel row i reads padding
    for (int64_t oh = 0; oh < OH; ++oh) {
      uint64_t m = 0;
      for (int64_t i = 0; i < w.kh; ++i) {
        const int64_t ih = oh * s.sh - s.pt + i * s.dh;
        if (ih < 0 || ih >= s.H) m |= uint64_t(1) << std::min<int64_t>(i, 63);
      }
      auto it = std::find(class_rows.begin(), class_rows.end(), m);
      row_class[size_t(oh)] = int32_t(it - class_rows.begin());
      if (it == class_rows.end()) class_rows.push_back(m);
    }
    classes = int64_t(class_rows.size());
    corr.assign(size_t(O * classes * row), 0);
    for (int64_t rc = 0; rc < classes; ++rc)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t i = 0; i < w.kh; ++i)
          for (int64_t j = 0; j < w.kw; ++j) {
            const int64_t iw = ow * s.sw - s.pl + j * s.dw;
            if (!((class_rows[size_t(rc)] >> std::min<int64_t>(i, 63)) & 1) && iw >= 0 && iw < s.W) continue;
            for (int64_t o = 0; o < O; ++o)
              corr[size_t((o * classes + rc) * row + ow)] += w.tap_sum[size_t(o * taps + i * w.kw + j)];
          }
    touches.assign(size_t(classes * row), 0);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t k = 0; k < classes * row; ++k) touches[size_t(k)] |= corr[size_t(o * classes * row + k)] != 0;
  }

  const Affine a(scale, bias, O);

  // Reduction word k of lane position j: the word of plane kplane[k] kin[k] input rows and
  // kcol[k] columns from the lane's receptive field's corner; narrow, k = (tap, c / 64);
  // wide, k = (kernel row, j / ppw) with the slots of taps past the row's end masked out.
  const int64_t kwords = wide ? w.wide_kwords : w.kwords, wpr = wide ? (w.kw + ppw - 1) / ppw : 0;
  std::vector<int64_t> kplane, kin, kcol;
  std::vector<uint64_t> kmask;
  for (int64_t i = 0; i < w.kh; ++i)
    if (wide)
      for (int64_t t = 0; t < wpr; ++t) {
        const int64_t used = std::min(ppw, w.kw - t * ppw) * s.C;
        kplane.push_back(0), kin.push_back(i * s.dh), kcol.push_back(t * ppw);
        kmask.push_back(used >= 64 ? ~uint64_t(0) : (uint64_t(1) << used) - 1);
      }
    else
      for (int64_t j = 0; j < w.kw; ++j)
        for (int64_t c = 0; c < cw; ++c)
          kplane.push_back(c), kin.push_back(i * s.dh), kcol.push_back(j * s.dw), kmask.push_back(~uint64_t(0));
  std::vector<int64_t> koff = lane_block_offsets(kwords);  // gathered blocks: [kwords][32]
  if (direct)  // stride 1: at a fixed offset from the lane's own word
    for (int64_t k = 0; k < kwords; ++k) koff[size_t(k)] = kplane[size_t(k)] * g.plane + kin[size_t(k)] * Wp + kcol[size_t(k)];

#pragma omp parallel
  {
    std::vector<uint64_t> q(direct ? 0 : size_t(kwords * kLanes));
    std::vector<float> tile(s.blocked_out ? size_t(O * kLanes) : 0);
    int64_t pos[kLanes];
    int32_t lane_kbits[kLanes];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < s.N * pblocks; ++t) {
      const int64_t n = t / pblocks, pb = t % pblocks;
      const uint64_t* xn = xp.data() + n * image;
      const uint64_t* Q = xn + pb * kLanes;
      if (!direct) {
        int64_t oh = pb * kLanes / OW, ow = pb * kLanes % OW;  // lane l's position, stepped: no division per lane
        for (int64_t l = 0; l < kLanes; ++l) {
          const bool in = pb * kLanes + l < P;
          for (int64_t k = 0; k < kwords; ++k)
            q[size_t(k * kLanes + l)] =
                in ? xn[kplane[size_t(k)] * g.plane + (oh * s.sh + kin[size_t(k)]) * Wp + ow * s.sw + kcol[size_t(k)]] : 0;
          if (++ow == OW) ow = 0, ++oh;
        }
        Q = q.data();
      }
      // Wide words: the masked slots (weights 0 there) add popcount(q & ~mask) to every
      // output channel's count alike; d = kbits - 2 (count - that) per lane.
      if (wide) masked_counts(p, Q, koff.data(), kmask.data(), kwords, int32_t(w.kbits), lane_kbits);
      Epilogue e{y + n * O * P, P, grid, a.scale, a.bias, false, int32_t(w.kbits), row, OW};
      if (wide) e.lane_kbits = lane_kbits;
      if (!corr.empty())
        e.corr = corr.data(), e.row_class = row_class.data(), e.classes = classes, e.touches = touches.data();
      if (s.blocked_out) {  // the block's lanes into a tile, then into nChw16c
        e.y = tile.data(), e.ld = kLanes, e.tile = true;
        for (int64_t l = 0, r = pb * kLanes / row, c = pb * kLanes % row; l < kLanes; ++l) {
          pos[l] = pb * kLanes + l < grid && c < OW ? r * OW + c : -1;
          if (++c == row) c = 0, ++r;
        }
      }
      rows_xnor(p, wide ? w.wide.data() : w.bits.data(), O, kwords, Q, koff.data(), kwords, pb * kLanes, e);
      if (s.blocked_out) {
        if (p == Path::native) tile_to_blocked_native(tile.data(), O, pos, P, y + n * O * P);
        else tile_to_blocked_portable(tile.data(), O, pos, P, y + n * O * P);
      }
    }
  }
}

namespace {
LB_NATIVE double peak_native(double seconds) {
  constexpr int kChains = 12;
  __m512i v[kChains];
  for (int i = 0; i < kChains; ++i) v[i] = _mm512_set1_epi64(int64_t(0x9E3779B97F4A7C15ull * uint64_t(i + 1)));
  using clock = std::chrono::steady_clock;
  // Best of many ~1 ms windows: on a shared machine the thread may be descheduled in
  // some of them, and the peak is what the unit does while it runs.
  double best = 0, total = 0;
  while (total < seconds) {
    const auto t0 = clock::now();
    for (int r = 0; r < 16384; ++r)
      for (int i = 0; i < kChains; ++i) v[i] = _mm512_popcnt_epi64(v[i]);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    total += dt;
    best = std::max(best, 16384.0 * kChains * 512.0 / dt);
  }
  __m512i s = v[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_epi64(s, v[i]);
  volatile int64_t sink = _mm512_reduce_add_epi64(s);
  (void)sink;
  return best;
}
}  // namespace

double popcount_peak_bits_per_s(double seconds) {
  LB_CHECK(binary_native_supported(), "popcount_peak: needs AVX-512 VPOPCNTDQ; this CPU lacks it");
  return peak_native(seconds);
}

}  // namespace kernels
}  // namespace lowbit
