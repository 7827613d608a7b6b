// The engine's Binary x Binary layers on the xnor-popcount kernels (see kernels.hpp).
#include <atomic>
#include <cstring>

#include "lowbit/check.hpp"
#include "lowbit/kernels.hpp"

namespace lowbit {
namespace kernels {

namespace {
std::atomic<bool> g_engine_kernels{true};
std::atomic<int64_t> g_engine_calls{0};
}  // namespace

int64_t engine_kernel_calls() { return g_engine_calls.load(std::memory_order_relaxed); }

bool engine_kernels_enabled() { return g_engine_kernels.load(std::memory_order_relaxed); }
void set_engine_kernels(bool on) { g_engine_kernels.store(on, std::memory_order_relaxed); }

BinaryLayer::BinaryLayer(const ConvShape& per_sample, int64_t O, int64_t kh, int64_t kw)
    : conv_(true), s_(per_sample), O_(O), kh_(kh), kw_(kw), fan_in_(per_sample.C * kh * kw) {}

BinaryLayer::BinaryLayer(int64_t fan_in, int64_t units)
    : conv_(false), s_{}, O_(units), kh_(1), kw_(1), fan_in_(fan_in) {}

bool BinaryLayer::packed_from(const float* latent) const {
  const size_t nw = size_t(O_ * fan_in_);
  return latent_.size() == nw && std::memcmp(latent_.data(), latent, nw * sizeof(float)) == 0;
}

void BinaryLayer::forward(const float* x, bool x_blocked, int64_t N, const float* latent, const float* wq,
                          float* z) {
  g_engine_calls.fetch_add(1, std::memory_order_relaxed);
  if (!packed_from(latent)) {
    latent_.assign(latent, latent + O_ * fan_in_);
    w_ = conv_ ? pack_conv_weights(wq, O_, s_.C, kh_, kw_) : pack_dense_weights(wq, fan_in_, O_);
  }
  const float* scale = nullptr;
  if (!conv_) return binary_dense(x, N, w_, scale, nullptr, z, binary_path());
  if (x_blocked) {  // nChw16c -> NCHW (C % 16 == 0 for a blocked tensor)
    const int64_t C = s_.C, S = s_.H * s_.W, CB = C / 16;
    LB_CHECK(C % 16 == 0, "binary conv2d: blocked input with ", C, " channels");
    plain_.resize(size_t(N * C * S));
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < N * CB; ++nb)
      for (int64_t p = 0; p < S; ++p)
        for (int64_t c = 0; c < 16; ++c) plain_[size_t((nb * 16 + c) * S + p)] = x[(nb * S + p) * 16 + c];
    x = plain_.data();
  }
  ConvShape s = s_;
  s.N = N;
  binary_conv2d(x, s, w_, scale, nullptr, z, binary_path());
}

}  // namespace kernels
}  // namespace lowbit
