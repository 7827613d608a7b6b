// Run-time ISA dispatch for hot loops: GCC compiles the function for AVX-512, AVX2 and
// the portable baseline and picks one when the library loads (target_clones).
#pragma once
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define LB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LB_CLONES
#endif
