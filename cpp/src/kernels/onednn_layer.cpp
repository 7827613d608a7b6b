// The engine's layer kernels (see kernels.hpp): the dispatch, and the oneDNN int8 and
// bf16/f16 layers. A family runs natively when oneDNN builds a non-reference primitive for
// it on this CPU (and, for int8, the CPU has VNNI: without it oneDNN's u8 x s8 pairs go
// through 16-bit saturating adds and its weights are halved to 7 bits, so z would not be
// the simulated one); otherwise the layer stays simulated.
#include <atomic>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define LB_AVX512_CODES 1
#endif
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>

#include "lowbit/accum_fp16.hpp"
#include "lowbit/dnnl_util.hpp"
#include "lowbit/kernels.hpp"
#include "lowbit/simd.hpp"

namespace lowbit {
namespace kernels {

std::unique_ptr<LayerKernel> make_binary_layer(const std::string& kind, const Config& cfg,
                                               const std::vector<Shape>& in);

namespace {

using namespace dnnl;

std::atomic<bool> g_engine_kernels{true};
std::atomic<int64_t> g_calls[4], g_preparations{0};

bool is_minifloat(const Format& f, int e, int m) {
  return f.kind == FormatKind::minifloat && f.exp_bits == e && f.man_bits == m && !f.fn && !f.saturate &&
         f.rounding == Rounding::nearest;
}

// The family a layer with these formats belongs to, if any.
bool family_of(const Format& in, const Format& w, Family* out) {
  if (in.kind == FormatKind::binary && w.kind == FormatKind::binary) {
    *out = Family::binary;
    return in.scale == ScaleMode::none;  // weight scales go into the epilogue
  }
  // int8: inputs on an integer grid of at most 8 bits - Int, or a signed Fixed with a given
  // MSB that rounds to nearest (step 2^(msb - bits + 1): its codes are the Fixed
  // quantizer's) - times symmetric Int weights or Binary ones (codes +-1, alpha the scale)
  const bool fixed_in = in.kind == FormatKind::fixed && in.is_signed && !in.msb_auto && in.bits <= 8 &&
                        in.rounding == Rounding::nearest && in.overflow == Overflow::saturate;
  if ((in.kind == FormatKind::integer || fixed_in) && (w.kind == FormatKind::integer || w.kind == FormatKind::binary)) {
    *out = Family::int8;
    return in.bits <= 8 && (w.kind == FormatKind::binary || (w.bits <= 8 && w.symmetric));
  }
  for (Family f : {Family::bf16, Family::fp16}) {
    const int e = f == Family::bf16 ? 8 : 5, m = f == Family::bf16 ? 7 : 10;
    if (is_minifloat(in, e, m) && is_minifloat(w, e, m)) {
      *out = f;
      return true;
    }
  }
  return false;
}

// Int codes k = clamp(nearbyint(x / s) + zp, kmin, kmax) in double, as the Int quantizer
// computes them (int_grid_of), as bytes (s8 codes in two's complement). |x / s| is capped
// at 2^50 first (beyond it k saturates anyway) so that adding 1.5 * 2^52 rounds half to even.
LB_CLONES void int_codes_exact(const float* x, int64_t n, const IntGrid& g, uint8_t* out) {
  const double s = g.s, zp = g.zp, lo = g.kmin, hi = g.kmax, big = 6755399441055744.0, cap = 1125899906842624.0;
  for (int64_t i = 0; i < n; ++i) {
    double v = std::min(std::max(double(x[i]) / s, -cap), cap);
    v = (v + big) - big;
    out[i] = uint8_t(int32_t(std::min(std::max(v + zp, lo), hi)));
  }
}

// The same codes in float: v = x * fl(1/s) is within |v| 2^-22.9 of x / s, so for
// |v| <= 1024 it rounds the same way unless x / s lies within 1e-4 of a half integer
// (returns true: the caller redoes those values exactly); beyond 512 k saturates anyway
// (|k| <= 255 + zp <= 510).
// (This file compiles with -fno-trapping-math so that these selects vectorise.)
LB_CLONES bool int_codes_f32_loop(const float* x, int64_t n, float inv, float zp, float lo, float hi, uint8_t* out) {
  int near = 0;
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i] * inv;
    v = v < -1024.f ? -1024.f : v > 1024.f ? 1024.f : v;
    const float r = (v + 12582912.f) - 12582912.f;  // round half to even (|v| < 2^22)
    near |= std::fabs(std::fabs(v - r) - 0.5f) < 1e-4f;
    float k = r + zp;
    k = k < lo ? lo : k > hi ? hi : k;
    out[i] = uint8_t(int32_t(k));
  }
  return near != 0;
}

#if LB_AVX512_CODES
// The same operations 16 at a time, for the multiples of 16 (the loop above does the
// tail): GCC's AVX-512 clone of that loop uses 8-wide vectors and blends, and was the
// largest single cost of an int8 ResNet-20 predict (15 %). roundscale rounds half to even
// like the 1.5 * 2^23 add; min/max with the value second keep a NaN a NaN, as the
// loop's comparisons do, and vpmovdb keeps the low byte, as uint8_t(int32_t(k)) does.
__attribute__((target("avx512f"))) int64_t int_codes_f32_avx512(const float* x, int64_t n, float inv, float zp,
                                                                 float lo, float hi, uint8_t* out, bool* near) {
  const __m512 vinv = _mm512_set1_ps(inv), vmin = _mm512_set1_ps(-1024.f), vmax = _mm512_set1_ps(1024.f),
               half = _mm512_set1_ps(0.5f), tol = _mm512_set1_ps(1e-4f), vzp = _mm512_set1_ps(zp),
               vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  __mmask16 ties = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_min_ps(vmax, _mm512_max_ps(vmin, _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv)));
    const __m512 r = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    ties |= _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(_mm512_abs_ps(_mm512_sub_ps(v, r)), half)), tol, _CMP_LT_OQ);
    const __m512 k = _mm512_min_ps(vhi, _mm512_max_ps(vlo, _mm512_add_ps(r, vzp)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(k)));
  }
  *near = ties != 0;
  return i;
}

#endif

bool int_codes_f32(const float* x, int64_t n, float inv, float zp, float lo, float hi, uint8_t* out) {
  int64_t done = 0;
  bool near = false;
#if LB_AVX512_CODES
  static const bool avx512 = fp16acc::avx512f_supported();
  if (avx512) done = int_codes_f32_avx512(x, n, inv, zp, lo, hi, out, &near);
#endif
  return int_codes_f32_loop(x + done, n - done, inv, zp, lo, hi, out + done) || near;
}

void int_codes(const float* x, int64_t n, const IntGrid& g, uint8_t* out) {
  const float inv = float(1.0 / g.s);
  if (!std::isfinite(inv)) return int_codes_exact(x, n, g, out);
  for (int64_t i0 = 0; i0 < n; i0 += 256) {  // short runs: a near tie redoes few values
    const int64_t m = std::min<int64_t>(256, n - i0);
    if (int_codes_f32(x + i0, m, inv, float(g.zp), float(g.kmin), float(g.kmax), out + i0))
      int_codes_exact(x + i0, m, g, out + i0);
  }
}

bool has_vnni() {
  using I = cpu_isa;
  switch (get_effective_cpu_isa()) {
    case I::avx2_vnni: case I::avx2_vnni_2: case I::avx512_core_vnni: case I::avx512_core_bf16:
    case I::avx512_core_fp16: case I::avx512_core_amx: case I::avx512_core_amx_fp16: return true;
    default: return false;
  }
}

// Geometry of the layer: a convolution (groups 1) or a (K -> M) product.
struct Geo {
  bool conv = false;
  int64_t C = 0, H = 0, W = 0, O = 0, kh = 1, kw = 1, OH = 1, OW = 1;
  dims strides, dil, pad_l, pad_r;
};

class OnednnLayer : public LayerKernel {
 public:
  OnednnLayer(Family fam, const Geo& g, const Format& in_f, bool per_channel_w, bool with_bias)
      : fam_(fam), g_(g), in_f_(in_f), asym_(fam == Family::int8 && !in_f.symmetric), with_bias_(with_bias) {
    const bool i8 = fam == Family::int8;
    src_dt_ = i8 ? (asym_ ? dt::u8 : dt::s8) : fam == Family::bf16 ? dt::bf16 : dt::f16;
    wei_dt_ = i8 ? dt::s8 : src_dt_;
    w_scale_.assign(size_t(per_channel_w ? g.O : 1), 0.f);
    prims(1);  // throws when oneDNN has no (non-reference) implementation
  }

  Family family() const override { return fam_; }
  std::string impl() const override { return "onednn:" + impl_; }
  // int8 encodes x on the Int grid itself; bf16/f16: the f32 -> bf16/f16 reorder rounds to
  // nearest even, as the format does
  bool needs_quantized_input() const override { return false; }

  void set_weights(const Tensor& wq, const std::vector<float>& w_step) override {
    wq_ = Tensor(wq.shape);
    if (fam_ != Family::int8) {
      std::memcpy(wq_.data(), wq.data(), size_t(wq.size()) * 4);
      return;
    }
    // codes k = w_q / s exactly (w_q = float(k s), |k| <= 127): the same grid, as integers
    const int64_t rows = int64_t(w_scale_.size()), per = wq.size() / rows;
    wcodes_.resize(size_t(wq.size()));
    for (int64_t r = 0; r < rows; ++r) {
      const float s = w_step.empty() ? 0.f : w_step[size_t(w_step.size() == 1 ? 0 : r)];
      w_scale_[size_t(r)] = s;
      const float inv = s > 0 ? 1.f / s : 0.f;
      for (int64_t i = r * per; i < (r + 1) * per; ++i) wcodes_[size_t(i)] = int8_t(rne(wq.data()[i] * inv));
    }
  }

  void forward(const Tensor& x, QuantState& in_st, const float* bias, Tensor& z) override {
    Prims& p = prims(x.dim(0));
    auto& e = cpu_engine();
    memory src;
    std::unordered_map<int, memory> args;
    if (fam_ == Family::int8) {
      const IntGrid grid = in_f_.kind == FormatKind::fixed ? fixed_int_grid(in_f_)  // the simulated layer's grid
                                                           : int_grid_of(in_f_, x.data(), x.size(), &in_st);
      in_st.step.assign(1, float(grid.s));
      src = encode(x, grid, p.pd.src_desc());
      x_scale_ = float(grid.s);
      x_zp_ = int32_t(grid.zp);
      args.insert({DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, memory({{1}, dt::f32, tag::x}, e, &x_scale_)});
      args.insert({DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS,
                   memory({{int64_t(w_scale_.size())}, dt::f32, tag::x}, e, w_scale_.data())});
      if (asym_) args.insert({DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, memory({{1}, dt::s32, tag::x}, e, &x_zp_)});
    } else {
      src = s_src_.in(p.pd.src_desc(), mem(user_md(x), x));
    }
    if (p.wei_version != weights_version) {  // once per weight version and batch size
      dims wd = g_.conv ? dims{g_.O, g_.C, g_.kh, g_.kw} : dims{g_.C, g_.O};
      const tag wt = g_.conv ? tag::oihw : tag::ab;
      memory user = fam_ == Family::int8 ? memory({wd, dt::s8, wt}, e, wcodes_.data()) : mem(md(wd, wt), wq_);
      p.wei = memory(p.pd.weights_desc(), e);
      reorder(user, p.wei).execute(cpu_stream(), user, p.wei);
      p.wei_version = weights_version;
    }
    // NHWC z (the int8 convolutions' layout) goes to nChw16c by a copy: runs of 16 channels
    // of a pixel are 64 contiguous bytes in both, where oneDNN's reorder to NCHW transposes;
    // batch norm, ReLU, Add and the next layer's encode then read blocks.
    const memory::dims zd = p.pd.dst_desc().get_dims();
    const bool via_nhwc = z.blocked && g_.conv && can_block(z.shape) && p.pd.dst_desc() == md(zd, tag::acdb);
    z.blocked = via_nhwc || (z.blocked && g_.conv && can_block(z.shape) && p.pd.dst_desc() == md(zd, tag::nChw16c));
    auto user_dst = mem(user_md(z), z);
    // with 16 output channels, NHWC is nChw16c: the primitive writes z itself
    const bool nhwc_is_blocked = via_nhwc && zd[1] == 16;
    auto d = nhwc_is_blocked ? memory(p.pd.dst_desc(), e, z.data())
             : via_nhwc      ? dst_ws_.get(p.pd.dst_desc())
                             : s_dst_.out(p.pd.dst_desc(), user_dst);
    args.insert({{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, p.wei}, {DNNL_ARG_DST, d}});
    if (with_bias_) args.insert({DNNL_ARG_BIAS, memory(p.bias, e, const_cast<float*>(bias))});
    p.prim.execute(cpu_stream(), args);
    if (nhwc_is_blocked) return;
    if (via_nhwc) nhwc_to_blocked(static_cast<const float*>(d.get_data_handle()), zd[0], zd[1], zd[2] * zd[3], z.data());
    else s_dst_.done(d, user_dst);
  }

 private:
  struct Prims {
    primitive_desc pd;
    primitive prim;
    memory::desc bias;
    memory wei;
    uint64_t wei_version = ~uint64_t(0);
  };
  Family fam_;
  Geo g_;
  Format in_f_;
  bool asym_, with_bias_;
  dt src_dt_, wei_dt_;
  std::map<int64_t, Prims> cache_;
  std::string impl_;
  Tensor wq_;
  std::vector<int8_t> wcodes_;
  std::vector<float> w_scale_;
  float x_scale_ = 0;
  int32_t x_zp_ = 0;
  Workspace codes_ws_, dst_ws_;
  Staged s_src_, s_dst_;

  // Fixed's grid as Int codes: k q, k in [kmin, kmax], no zero point
  static IntGrid fixed_int_grid(const Format& f) {
    const FixedGrid g = fixed_grid(f, f.msb);
    return {g.q, 0, g.kmin, g.kmax};
  }

  // round half to even in float arithmetic (|v| < 2^22), which vectorises
  static float rne(float v) { return (v + 12582912.f) - 12582912.f; }

  // y (N, C/16, S, 16) from z (N, S, C), C a multiple of 16
  static void nhwc_to_blocked(const float* z, int64_t N, int64_t C, int64_t S, float* y) {
    const int64_t CB = C / 16;
#pragma omp parallel for schedule(static) if (N * C * S > 65536)
    for (int64_t nb = 0; nb < N * CB; ++nb) {
      const float* from = z + (nb / CB) * S * C + (nb % CB) * 16;
      float* to = y + nb * S * 16;
      for (int64_t q = 0; q < S; ++q) std::memcpy(to + q * 16, from + q * C, 64);
    }
  }

#if defined(__SSE2__)
  // out[j * ldo + i] = in[i * ldi + j] for a 16 x 16 byte block. Four rounds of pairwise
  // unpacks (8, 16, 32, 64 bits) transpose it, leaving column j in register bitrev4(j).
  static void transpose16_u8(const uint8_t* in, int64_t ldi, uint8_t* out, int64_t ldo) {
    static constexpr int kRev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    __m128i a[16], b[16];
    for (int i = 0; i < 16; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i * ldi));
    for (int i = 0; i < 8; ++i) b[i] = _mm_unpacklo_epi8(a[2 * i], a[2 * i + 1]), b[i + 8] = _mm_unpackhi_epi8(a[2 * i], a[2 * i + 1]);
    for (int i = 0; i < 8; ++i) a[i] = _mm_unpacklo_epi16(b[2 * i], b[2 * i + 1]), a[i + 8] = _mm_unpackhi_epi16(b[2 * i], b[2 * i + 1]);
    for (int i = 0; i < 8; ++i) b[i] = _mm_unpacklo_epi32(a[2 * i], a[2 * i + 1]), b[i + 8] = _mm_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    for (int i = 0; i < 8; ++i) a[i] = _mm_unpacklo_epi64(b[2 * i], b[2 * i + 1]), a[i + 8] = _mm_unpackhi_epi64(b[2 * i], b[2 * i + 1]);
    for (int r = 0; r < 16; ++r) _mm_storeu_si128(reinterpret_cast<__m128i*>(out + kRev[r] * ldo), a[r]);
  }
#endif

  // x's Int codes in the layout the primitive reads: written straight into NHWC (the
  // int8 convolutions' layout) from NCHW or nChw16c, else in x's own layout and reordered.
  memory encode(const Tensor& x, const IntGrid& grid, const memory::desc& want) {
    dims xd(x.shape.begin(), x.shape.end());
    IntGrid g = grid;
    if (!(g.s > 0)) g = {1.0, g.zp, g.zp, g.zp};  // an all-zero grid: every code is the zero point
    const bool nhwc = g_.conv && want == memory::desc(xd, src_dt_, tag::acdb);
    auto own = memory::desc(xd, src_dt_, nhwc ? tag::acdb : x.blocked ? tag::nChw16c : g_.conv ? tag::nchw : tag::ab);
    memory codes = codes_ws_.get(own);
    uint8_t* out = static_cast<uint8_t*>(codes.get_data_handle());
    const float* v = x.data();
    const auto in_place = [&] {  // element i's code at i
      const int64_t n = x.size(), chunk = 4096;
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t c0 = 0; c0 < n; c0 += chunk) int_codes(v + c0, std::min(chunk, n - c0), g, out + c0);
    };
    if (!nhwc) {
      in_place();
      return s_src_.in(want, codes);
    }
    const int64_t N = x.dim(0), C = g_.C, S = g_.H * g_.W;
    if (x.blocked && C == 16) {  // nChw16c with one block is NHWC
      in_place();
      return codes;
    }
    if (x.blocked) {  // (n, cb, s, 16) -> (n, s, c): runs of 16 channels
      const int64_t CB = C / 16;
#pragma omp parallel
      {
        std::vector<uint8_t> tmp(static_cast<size_t>(S * 16));
#pragma omp for schedule(static)
        for (int64_t nb = 0; nb < N * CB; ++nb) {
          int_codes(v + nb * S * 16, S * 16, g, tmp.data());
          uint8_t* o = out + (nb / CB) * S * C + (nb % CB) * 16;
          for (int64_t q = 0; q < S; ++q) std::memcpy(o + q * C, tmp.data() + q * 16, 16);
        }
      }
      return codes;
    }
    const int64_t T = 256, tiles = (S + T - 1) / T;  // (n, c, s) -> (n, s, c) by tiles of pixels
#pragma omp parallel
    {
      std::vector<uint8_t> tmp(static_cast<size_t>(16 * T));
#pragma omp for schedule(static)
      for (int64_t nt = 0; nt < N * tiles; ++nt) {
        const int64_t n = nt / tiles, q0 = (nt % tiles) * T, len = std::min(T, S - q0);
        uint8_t* o = out + (n * S + q0) * C;
        int64_t c = 0;
        for (; c + 16 <= C; c += 16) {  // 16 channels' codes, then 16 x 16 byte blocks transposed
          for (int64_t i = 0; i < 16; ++i) int_codes(v + (n * C + c + i) * S + q0, len, g, tmp.data() + i * T);
          int64_t q = 0;
#if defined(__SSE2__)
          for (; q + 16 <= len; q += 16) transpose16_u8(tmp.data() + q, T, o + q * C + c, C);
#endif
          for (; q < len; ++q)
            for (int64_t i = 0; i < 16; ++i) o[q * C + c + i] = tmp[size_t(i * T + q)];
        }
        for (; c < C; ++c) {
          int_codes(v + (n * C + c) * S + q0, len, g, tmp.data());
          for (int64_t q = 0; q < len; ++q) o[q * C + c] = tmp[size_t(q)];
        }
      }
    }
    return codes;
  }

  // oneDNN 3.2 lists its brgemm convolutions first. Its direct ones of the same ISA
  // (`name`: jit_int8, jit_bf16) compute the same sums. int8's was as fast on large layers
  // and faster on ResNet-20's (AMD EPYC, VNNI, batch 64, 1 thread: 16 channels at 32x32
  // 0.54 -> 0.41 ms, 64 at 8x8 0.44 -> 0.35, 1x1 stride 2 0.10 -> 0.06; 256 at 14x14
  // batch 16 4.12 -> 4.16). bf16's is as fast and reads and writes nChw16c, which the
  // layers around it use (brgemm's NHWC cost a reorder in and a copy out). Where the
  // first is another ISA (AMX) it stays.
  template <class Make>
  static convolution_forward::primitive_desc prefer_direct(convolution_forward::primitive_desc pd,
                                                           const std::string& want, const Make& make) {
    const auto isa_of = [](const std::string& name) {  // "brgconv:avx512_core_vnni" -> ":avx512_core_vnni"
      const size_t at = name.find(':');
      return at == std::string::npos ? std::string() : name.substr(at);
    };
    const std::string isa = isa_of(pd.impl_info_str());
    do {
      const std::string name = pd.impl_info_str();
      if (name.rfind(want, 0) == 0 && isa_of(name) == isa) return pd;
    } while (pd.next_impl());
    return make();
  }

  Prims& prims(int64_t N) {
    auto it = cache_.find(N);
    if (it != cache_.end()) return it->second;
    auto& e = cpu_engine();
    primitive_attr attr;
    if (fam_ == Family::int8) {
      attr.set_scales_mask(DNNL_ARG_SRC, 0);
      attr.set_scales_mask(DNNL_ARG_WEIGHTS, w_scale_.size() > 1 ? (g_.conv ? 1 : 2) : 0);
      if (asym_) attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
    }
    Prims p;
    if (g_.conv) {
      memory::desc src({N, g_.C, g_.H, g_.W}, src_dt_, tag::any), wei({g_.O, g_.C, g_.kh, g_.kw}, wei_dt_, tag::any),
          dst({N, g_.O, g_.OH, g_.OW}, dt::f32, tag::any);
      if (with_bias_) p.bias = memory::desc({g_.O}, dt::f32, tag::x);
      const auto make = [&] {
        return convolution_forward::primitive_desc(e, prop_kind::forward_inference, algorithm::convolution_direct, src,
                                                   wei, p.bias, dst, g_.strides, g_.dil, g_.pad_l, g_.pad_r, attr);
      };
      convolution_forward::primitive_desc pd = make();
      if (fam_ != Family::fp16) pd = prefer_direct(pd, fam_ == Family::int8 ? "jit_int8" : "jit_bf16", make);
      p.pd = pd;
      p.prim = convolution_forward(pd);
    } else {
      memory::desc src({N, g_.C}, src_dt_, tag::ab), wei({g_.C, g_.O}, wei_dt_, tag::any),
          dst({N, g_.O}, dt::f32, tag::ab);
      if (with_bias_) p.bias = memory::desc({1, g_.O}, dt::f32, tag::ab);
      matmul::primitive_desc pd = with_bias_ ? matmul::primitive_desc(e, src, wei, p.bias, dst, attr)
                                             : matmul::primitive_desc(e, src, wei, dst, attr);
      p.pd = pd;
      p.prim = matmul(pd);
    }
    const std::string name = p.pd.impl_info_str();
    if (name.find("ref") != std::string::npos)  // a reference loop is no kernel: stay simulated
      throw std::runtime_error("oneDNN has only a reference implementation (" + name + ")");
    impl_ = name;
    return cache_.emplace(N, std::move(p)).first->second;
  }
};

// A small layer of the family, built once per process: what this CPU runs for it.
struct Probe {
  std::string impl, why;
};
Probe probe(Family f) {
  static std::mutex mu;
  static std::map<Family, Probe> seen;
  std::lock_guard<std::mutex> lock(mu);
  auto it = seen.find(f);
  if (it != seen.end()) return it->second;
  Probe r;
  if (f == Family::binary) {
    r.impl = std::string("lowbit:xnor_popcount:") + path_name(binary_path());
  } else if (f == Family::int8 && !has_vnni()) {
    r.why = "no VNNI (oneDNN's int8 kernels would saturate 16-bit pair sums)";
  } else {
    Geo g{true, 32, 8, 8, 32, 3, 3, 8, 8, {1, 1}, {0, 0}, {1, 1}, {1, 1}};
    try {
      Format in;  // symmetric Int(8) / the family's float format: only the data types matter here
      r.impl = OnednnLayer(f, g, in, true, false).impl();
    } catch (const std::exception& ex) {
      r.why = std::string("oneDNN: ") + ex.what();
    }
  }
  return seen.emplace(f, r).first->second;
}

}  // namespace

const char* family_name(Family f) {
  switch (f) {
    case Family::binary: return "binary";
    case Family::int8: return "int8";
    case Family::bf16: return "bf16";
    case Family::fp16: return "fp16";
  }
  return "?";
}

std::string family_path(Family f, std::string* why) {
  if (f != Family::binary && portable_forced()) {
    if (why) *why = "LOWBIT_PORTABLE_KERNELS=1";
    return "simulated";
  }
  const Probe p = probe(f);
  if (why) *why = p.why;
  return p.impl.empty() ? "simulated" : p.impl;
}

bool family_enabled(Family f) {
  return g_engine_kernels.load(std::memory_order_relaxed) && (f == Family::binary || !portable_forced());
}

std::unique_ptr<LayerKernel> make_layer_kernel(const std::string& kind, const Config& cfg,
                                               const std::vector<Shape>& in, const Format& in_f, const Format& w_f,
                                               bool with_bias) {
  Family f;
  if (!family_of(in_f, w_f, &f)) return nullptr;
  if (f == Family::binary) return make_binary_layer(kind, cfg, in);
  if (family_path(f) == "simulated") return nullptr;
  Geo g;
  if (kind == "conv2d") {
    const ConvGeometry c = conv_geometry(cfg, in);
    if (c.groups != 1) return nullptr;
    g = {true, c.C, c.H, c.W, c.O, c.kh, c.kw, c.ph.out, c.pw.out, {c.sh, c.sw}, {c.dh - 1, c.dw - 1},
         {c.ph.lo, c.pw.lo}, {c.ph.hi, c.pw.hi}};
  } else {
    g.C = in[0][0], g.O = cfg.i("units", 0);
  }
  try {
    const bool per_channel_w = w_f.per_channel || w_f.scale == ScaleMode::channel_mean_abs;
    return std::make_unique<OnednnLayer>(f, g, in_f, f == Family::int8 && per_channel_w && g.conv, with_bias);
  } catch (const std::exception&) {  // no implementation for this shape: simulated
    return nullptr;
  }
}

bool engine_kernels_enabled() { return g_engine_kernels.load(std::memory_order_relaxed); }
void set_engine_kernels(bool on) { g_engine_kernels.store(on, std::memory_order_relaxed); }
int64_t engine_kernel_calls(Family f) { return g_calls[int(f)].load(std::memory_order_relaxed); }
void count_engine_call(Family f) { g_calls[int(f)].fetch_add(1, std::memory_order_relaxed); }
int64_t engine_weight_preparations() { return g_preparations.load(std::memory_order_relaxed); }
void count_weight_preparation() { g_preparations.fetch_add(1, std::memory_order_relaxed); }

}  // namespace kernels
}  // namespace lowbit
