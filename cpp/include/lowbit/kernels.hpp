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
#include <string>
#include <vector>

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
};
// y (N, O, OH, OW) from x (N, C, H, W), NCHW. scale / bias per output channel, may be null.
void binary_conv2d(const float* x, const ConvShape& s, const BinaryWeights& w, const float* scale,
                   const float* bias, float* y, Path p);

// The engine's use of these kernels: evaluate/predict of a Conv2D/Dense whose input and
// weight formats are both Binary() without scale. z = dot(sign x, sign wq) into a plain
// NCHW / (N, units) tensor: the simulated fp32 sum of +-1 products, exactly. (Scaled
// Binary formats stay simulated: there the fp32 partial sums of +-alpha terms round, e.g.
// a zero dot comes out as +-1 ulp, whose sign the next binary layer sees, so no kernel can
// reproduce them.) The packed weights are kept while the latent weights stay the same
// (quantizing unchanged weights again gives the same signs, hysteresis included).
class BinaryLayer {
 public:
  BinaryLayer(const ConvShape& per_sample, int64_t O, int64_t kh, int64_t kw);  // conv2d
  BinaryLayer(int64_t fan_in, int64_t units);                                    // dense
  // x: (N, C, H, W) plain or nChw16c (blocked), or (N, fan_in); latent: the layer's
  // weights, wq: their quantized copy (read only when latent changed since the last call).
  void forward(const float* x, bool x_blocked, int64_t N, const float* latent, const float* wq, float* z);
  bool packed_from(const float* latent) const;

 private:
  bool conv_;
  ConvShape s_;
  int64_t O_, kh_, kw_, fan_in_;
  std::vector<float> latent_, plain_;
  BinaryWeights w_;
};
bool engine_kernels_enabled();
void set_engine_kernels(bool on);  // off: evaluate/predict run the simulated layers
int64_t engine_kernel_calls();     // layer calls the engine ran on the binary kernels

// Measured throughput of the native popcount unit (bits per second, one thread):
// independent VPOPCNTQ chains on registers, the bound an xnor-popcount kernel can reach.
double popcount_peak_bits_per_s(double seconds);

}  // namespace kernels
}  // namespace lowbit
