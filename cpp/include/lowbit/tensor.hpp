// A dense float32 tensor, row-major (NCHW for images). Storage is either owned
// (64-byte aligned, for SIMD and oneDNN) or borrowed from a numpy array that the
// caller keeps alive - that is how numpy input reaches the engine without a copy.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "check.hpp"

namespace lowbit {

using Shape = std::vector<int64_t>;

inline bool can_block(const Shape& s) { return s.size() == 4 && s[1] % 16 == 0; }

inline int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s);

struct Tensor {
  Shape shape;
  std::shared_ptr<float> owner;  // null when borrowed
  float* ptr = nullptr;
  // Channel-blocked storage (oneDNN nChw16c) of a 4-D tensor with C % 16 == 0: the
  // executor lets it flow between ops that accept it (conv, batch norm, elementwise)
  // and converts to NCHW for every other op and at the API boundary.
  bool blocked = false;

  Tensor() = default;
  explicit Tensor(Shape s) { resize(std::move(s)); }

  static Tensor borrow(float* p, Shape s) {
    Tensor t;
    t.shape = std::move(s);
    t.ptr = p;
    return t;
  }
  // Reallocate only when the element count grows: buffers are reused across steps.
  void resize(Shape s) {
    int64_t n = numel(s);
    if (!owner || n > capacity) {
      size_t bytes = ((size_t(std::max<int64_t>(n, 1)) * 4 + 63) / 64) * 64;
      float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p) throw std::bad_alloc();
      owner.reset(p, [](float* q) { std::free(q); });
      ptr = p;
      capacity = n;
    }
    shape = std::move(s);
  }
  int64_t size() const { return numel(shape); }
  int64_t dim(int i) const { return shape[size_t(i)]; }
  int ndim() const { return int(shape.size()); }
  float* data() { return ptr; }
  const float* data() const { return ptr; }
  void zero() { std::memset(ptr, 0, size_t(size()) * 4); }
  // per-sample element count (all but the first axis)
  int64_t inner() const { return shape.empty() ? 0 : size() / shape[0]; }

 private:
  int64_t capacity = 0;
};

// Sum over the batch and spatial axes of an (N, C, S) row-major array: the bias
// gradient of conv (S = H*W) and dense (S = 1) layers. Eigen reduces in float with SIMD.
void channel_sums(const float* dy, int64_t N, int64_t C, int64_t S, float* out);
// The same for a channel-blocked (nChw16c) tensor.
void channel_sums_blocked(const float* dy, int64_t N, int64_t C, int64_t S, float* out);
// y += b[c] / y *= a[c] for every element of channel c of an (N, C, S) tensor, plain or nChw16c.
void add_channel_bias(float* y, const float* b, int64_t N, int64_t C, int64_t S, bool blocked);
void mul_channel_scale(float* y, const float* a, int64_t N, int64_t C, int64_t S, bool blocked);

}  // namespace lowbit
