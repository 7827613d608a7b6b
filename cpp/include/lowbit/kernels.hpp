// Low-precision kernels that compute in the format itself (issue 11), with run-time
// dispatch between a native ISA path and a portable one.
//
// Binary x binary layers (xnor-popcount). A value's sign is one bit: bit = 1 for
// x < 0, 0 otherwise (sign(0) = sign(-0) = +1, as Binary's quantizer does). Bits are
// packed into 64-bit words along the reduction axis; for K values a, b in {-1, +1}
//     dot(a, b) = K - 2 popcount(bits(a) xor bits(b)),
// and bits past K are 0 in both operands, so they never count. The epilogue gives
//     y = float(dot - corr) * scale + bias        (two fp32 roundings, no FMA)
// per output channel. `corr` is the zero-padding correction of a convolution: the
// simulated layer sums 0 for a padded tap, the packed input holds +1 there (word 0),
// so corr(co, p) = sum over the taps padded at output position p of sum_ci sign(w).
//
// Paths: "avx512_vpopcntdq" (AVX-512 with VPOPCNTDQ, BW, DQ, VL and BMI2) and "portable"
// (std C++ with __builtin_popcountll). LOWBIT_PORTABLE_KERNELS=1 forces the portable path.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ops.hpp"

namespace lowbit {
namespace kernels {

enum class Path { native, portable };

bool binary_native_supported();            // this CPU can run the native binary path
bool portable_forced();                    // LOWBIT_PORTABLE_KERNELS=1 (read at each call)
Path binary_path();                        // what a call with no explicit path uses
Path resolve_path(const std::string& name);  // "auto" | "native" | "portable"; throws on bad names
const char* path_name(Path p);

inline int64_t words_for(int64_t bits) { return (bits + 63) / 64; }
constexpr int64_t kLanes = 32;  // output lanes of one packed block (4 x 8 words)

// Sign bits of `rows` rows of n contiguous floats: out is rows x words_for(n).
void pack_signs(const float* x, int64_t rows, int64_t n, uint64_t* out, Path p);

// Weights of a binary layer packed for the xnor GEMM.
struct BinaryWeights {
  bool conv = false;
  int64_t out_channels = 0, in_channels = 0, kh = 1, kw = 1;  // dense: in_channels = fan-in
  int64_t kwords = 0;   // 64-bit words per output channel along the reduction axis
  int64_t kbits = 0;    // real reduction length (in_channels * kh * kw)
  // dense: lane blocks [ceil(O/32)][kwords][32]; conv: rows [O][kwords], k = tap*cw + c/64
  std::vector<uint64_t> bits;
  std::vector<int32_t> tap_sum;  // conv: sum_ci sign(w[o, ci, tap]), [O][kh*kw]
  // conv with C <= 32 (a word would be mostly empty): also a wide layout in which a word
  // holds the channels of ppw = 64 / C neighbouring taps of a kernel row, [O][kh][ceil(kw / ppw)]
  // words, used at dilation 1 against input words that hold ppw neighbouring pixels
  int64_t ppw = 0, wide_kwords = 0;
  std::vector<uint64_t> wide;
  int64_t memory_bytes() const { return int64_t(bits.size() * 8); }
};
// w: Dense kernel (fan_in, units) row-major / Conv2D kernel OIHW.
BinaryWeights pack_dense_weights(const float* w, int64_t fan_in, int64_t units);
BinaryWeights pack_conv_weights(const float* w, int64_t O, int64_t C, int64_t kh, int64_t kw);

// y (N, units) = epilogue(dot(x_n, w_u)); x is (N, fan_in). scale / bias per unit, may be null.
void binary_dense(const float* x, int64_t N, const BinaryWeights& w, const float* scale, const float* bias,
                  float* y, Path p);

struct ConvShape {
  int64_t N, C, H, W;
  int64_t sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t pt = 0, pb = 0, pl = 0, pr = 0;  // zero padding top/bottom/left/right
  bool blocked = false;      // x in nChw16c (C a multiple of 16) instead of NCHW
  bool blocked_out = false;  // y in nChw16c (O a multiple of 16) instead of NCHW
};
// y (N, O, OH, OW) from x (N, C, H, W), each NCHW or nChw16c. scale / bias per output
// channel, may be null.
void binary_conv2d(const float* x, const ConvShape& s, const BinaryWeights& w, const float* scale,
                   const float* bias, float* y, Path p);

// The engine's use of these kernels: evaluate/predict of a quantized Conv2D/Dense runs a
// LayerKernel when one exists for its input and weight formats (make_layer_kernel), with
// the simulated layer's numbers; otherwise the simulated layer (oneDNN fp32 on the
// formats' grids). One dispatch for every format family:
//   binary  Binary() inputs x Binary weights: z = alpha * dot(sign x, sign w) by
//           xnor-popcount, alpha (the weights' mean |w| scale, 1 without) in the epilogue;
//           the simulated layer factors alpha out the same way (quantized.cpp), so both
//           are the exact integer dot rounded once at the scale.
//   int8    Int(b <= 8) weights (symmetric, per tensor or per output channel) or Binary
//           ones (codes +-1, alpha as s_w), and Int(b <= 8) inputs (symmetric: s8;
//           asymmetric: u8 with a zero point) or signed Fixed(b <= 8) ones with a given MSB
//           rounding to nearest (s_x = 2^(msb-b+1)): oneDNN u8/s8 x s8 -> s32
//           with the dequantisation z = float(acc) * (s_x s_w[o]) fused as output scales.
//           The simulated z sums float(k_x s_x) float(k_w s_w) in fp32; both are within
//           (K + 4) 2^-24 sum|x_q w_q| of the exact sum, K the reduction length.
//   bf16 / fp16  BFloat16 / Float16 (round to nearest, IEEE overflow) weights and inputs:
//           oneDNN bf16/f16 primitives with fp32 accumulation and fp32 z. Products of these
//           formats are exact in fp32, so only the summation order differs from the
//           simulation: |z - z_sim| <= 2 K 2^-24 sum|x_q w_q|.
// A layer without an input format behind a quantizer node (BinAct, QuantAct) takes that
// node's format as its input's ("values", set by Graph::add): its input is on that grid.
// Training keeps the simulated layers: their backward needs x_q and w_q, and the summation
// order (int8: the fp32 rounding) makes the kernels' z differ from the simulated one.
// Weights are prepared (packed / converted / reordered) once per weight version (see
// Param::version), not at every call.
enum class Family { binary, int8, bf16, fp16 };
const char* family_name(Family f);

class LayerKernel {
 public:
  virtual ~LayerKernel() = default;
  virtual Family family() const = 0;
  virtual std::string impl() const = 0;  // e.g. "lowbit:xnor_popcount:avx512_vpopcntdq"
  // Whether forward reads the quantized input x_q (else the raw input, which binary reads
  // signs of, bf16/fp16 round in their conversion, int8 encodes on the Int grid itself).
  virtual bool needs_quantized_input() const { return true; }
  // New weights: wq the quantized copy (OIHW or (K, M)), w_step their grid step(s) (Int).
  virtual void set_weights(const Tensor& wq, const std::vector<float>& w_step) = 0;
  // z (N, O, OH, OW) / (N, units) from x (plain or nChw16c); z.blocked on entry is the
  // executor's permission, the kernel sets it to the layout it wrote. in_st: the input
  // quantizer's state (Int: running range, grid step). bias: per output channel, added
  // in the epilogue (z + b, one fp32 rounding as the simulated layer's addition), given
  // exactly when the kernel was made with_bias.
  virtual void forward(const Tensor& x, QuantState& in_st, const float* bias, Tensor& z) = 0;
  uint64_t weights_version = ~uint64_t(0);  // of the weights last set (~0: none)
};

// The kernel for a Conv2D ("conv2d", groups 1) / Dense ("dense") layer with these input and
// weight formats, or null (no kernel for them, LOWBIT_PORTABLE_KERNELS=1 for the oneDNN
// families, or oneDNN has no non-reference implementation on this CPU).
std::unique_ptr<LayerKernel> make_layer_kernel(const std::string& kind, const Config& cfg,
                                               const std::vector<Shape>& in, const Format& in_f, const Format& w_f,
                                               bool with_bias);
// What this CPU runs for a family: its implementation (a oneDNN impl string for the oneDNN
// families, probed on a small layer), or "simulated" with the reason in `why`.
std::string family_path(Family f, std::string* why = nullptr);

bool engine_kernels_enabled();
void set_engine_kernels(bool on);  // off: evaluate/predict run the simulated layers
// evaluate/predict may use a family's kernels now: the engine switch is on and, for the
// oneDNN families, LOWBIT_PORTABLE_KERNELS=1 is not set (their fallback is the simulation)
bool family_enabled(Family f);
int64_t engine_kernel_calls(Family f);  // layer calls the engine ran on a family's kernels
void count_engine_call(Family f);
int64_t engine_weight_preparations();  // LayerKernel::set_weights calls (once per weight version)
void count_weight_preparation();

// Measured throughput of the native popcount unit (bits per second, one thread):
// independent VPOPCNTQ chains on registers, the bound an xnor-popcount kernel can reach.
double popcount_peak_bits_per_s(double seconds);

}  // namespace kernels
}  // namespace lowbit
