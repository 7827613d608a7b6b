// fp16 accumulation kernels (issue 11): accum_format=Float16() with binary16 operands.
//
// A chain of the narrow-accumulator simulation (accumulate.hpp) is
//     acc_0 = 0,   acc_{k+1} = RN16(acc_k + a_k b_k)
// with one round-to-nearest-even onto binary16 (subnormals, inf on overflow) per
// multiply-add. When a_k and b_k are binary16 values this is what an fp16 FMA computes,
// and the kernels here compute it without the simulation's float64 detour:
//
//   avx512_fp16  native: VFMADD231PH on 32 fp16 lanes (one rounding by the hardware)
//   avx512f      fp32 FMAs rounded up and down (embedded rounding) give round-to-odd of
//                the exact sum, then VCVTPS2PH rounds once to binary16
//   avx2         fp32 TwoSum gives the exact sum as s + e, round-to-odd from it, then
//                VCVTPS2PH (F16C) rounds once to binary16
//   portable     standard C++: the same TwoSum round-to-odd, then the binary16 rounding
//                on the float's bits
//   simulate     the float64 simulation itself (the reference)
//
// All four give the same bits (accum_fp16.cpp argues why); the engine uses the best one
// this CPU has unless LOWBIT_PORTABLE_KERNELS=1 forces "portable" or set_path() chose.
// Operands that are not all binary16 values (an fp32 input, a loss gradient) keep the
// simulation, whose float64 sum is then the definition.
#pragma once
#include <cstdint>
#include <string>

#include "format.hpp"

namespace lowbit {
namespace fp16acc {

enum class Path { simulate, portable, avx2, avx512f, avx512_fp16 };

const char* path_name(Path p);
bool avx2_supported();         // AVX2, FMA and F16C
bool avx512f_supported();      // AVX-512F
bool native_supported();       // AVX512-FP16 (with BW, VL)
Path best_path();              // what "auto" means now (LOWBIT_PORTABLE_KERNELS read at each call)
Path current();                // the engine's path: the one set, or best_path()
void set_path(const std::string& name);  // "auto" | "simulate" | "portable" | "avx2" | "avx512f" | "avx512_fp16"
std::string setting();

// f is IEEE binary16 as an accumulator: Float16() (not saturating, nearest even).
bool applies(const Format& f);
// Every value is a binary16 value (NaN counts: it stays NaN either way).
bool all_half(const float* x, int64_t n);

// acc[o ldc + l] = RN16(acc[o ldc + l] + a[k lda + l] b[o ldbo + k ldb]) for k = 0 .. K-1,
// for l < n and o < outs: the chains side by side (the outputs o share the rows of a),
// each in the simulation's order. acc, a and b hold binary16 values.
void chains(Path p, float* acc, int64_t ldc, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t ldbo,
            int64_t K, int64_t n, int64_t outs);

// Dot-product calls (conv/dense forward or backward, bias) with a Float16 accumulator
// that ran on a kernel / on the simulation, since the library loaded.
void count_call(bool kernel);
int64_t kernel_calls();
int64_t simulated_calls();

}  // namespace fp16acc
}  // namespace lowbit
