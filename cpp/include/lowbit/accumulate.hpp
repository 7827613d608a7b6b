// Narrow-accumulator simulation of the dot products of conv2d and dense, forward and
// backward: every partial sum is put on the accumulator's grid (see format.hpp for what
// each accumulator format does). The order of the terms is part of the definition:
//
//   conv forward        z[n,o,y,x]  = sum over c, i, j      of x[n,c,..] w[o,c,i,j]
//   conv input grad     dx[n,c,h,w] = sum over o, i, j      of dz[n,o,..] w[o,c,i,j]
//   conv weight grad    dw[o,c,i,j] = sum over n, y, x      of dz[n,o,y,x] x[n,c,..]
//   dense forward       z[n,m]  = sum over k of x[n,k] w[k,m]
//   dense input grad    dx[n,k] = sum over m of dz[n,m] w[k,m]
//   dense weight grad   dw[k,m] = sum over n of x[n,k] dz[n,m]
//   bias grad           db[o]   = sum over n, then y, x of dz[n,o,y,x]
//
// (c, i, j, o, n, y, x ascending; out-of-image taps of a padded conv are skipped. The
// implementation adds them as zero products, which leaves an on-grid accumulator
// unchanged: equal up to the sign of a zero result.) One rounding per multiply-add: the
// chains of many outputs run side by side in vector registers, but each is a sequence of
// roundings. A Float16 accumulator over binary16 operands runs on the fp16 kernels of
// accum_fp16.hpp, with the same bits.
#pragma once
#include "format.hpp"
#include "ops.hpp"

namespace lowbit {

// Integer operands for an Int accumulator: a = k_a * step_a (one step), b = k_b * step_b
// (one step or one per output channel).
struct IntOperands {
  const std::vector<float>* step_a = nullptr;
  const std::vector<float>* step_b = nullptr;
};

// z (N, O, OH, OW) from x (N, C, H, W) and w (O, C/groups, kh, kw).
void accum_conv_forward(const Format& acc, const ConvGeometry& g, const Tensor& x, const Tensor& w, Tensor& z,
                        const IntOperands& ints = {});
void accum_conv_backward_data(const Format& acc, const ConvGeometry& g, const Tensor& dz, const Tensor& w, Tensor& dx);
void accum_conv_backward_weights(const Format& acc, const ConvGeometry& g, const Tensor& x, const Tensor& dz,
                                 Tensor& dw);
// z (N, M) from x (N, K) and w (K, M).
void accum_dense_forward(const Format& acc, const Tensor& x, const Tensor& w, Tensor& z, const IntOperands& ints = {});
void accum_dense_backward_data(const Format& acc, const Tensor& dz, const Tensor& w, Tensor& dx);
void accum_dense_backward_weights(const Format& acc, const Tensor& x, const Tensor& dz, Tensor& dw);
// db[c] over dy laid out (N, C, S).
void accum_bias_backward(const Format& acc, const float* dy, int64_t N, int64_t C, int64_t S, float* db);

}  // namespace lowbit
