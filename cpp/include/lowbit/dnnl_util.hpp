// One CPU engine and stream for the process, and small helpers around oneDNN's
// memory descriptor -> primitive descriptor -> primitive chain. User tensors stay in
// plain layouts (nchw / oihw / ab); primitives are built once per batch size and
// cached inside each op (see the ops' `prims_` maps), only executed in the loop.
#pragma once
#include <oneapi/dnnl/dnnl.hpp>
#include <string>

#include "ops.hpp"
#include "tensor.hpp"

// The 3.x API: primitive descriptors built directly from the engine and memory
// descriptors (no op descriptors), pooling with dilation, memory::desc::get_dims().
static_assert(DNNL_VERSION_MAJOR >= 3, "lowbit needs oneDNN 3.x (pip install onednn-devel-cpu-gomp)");

namespace lowbit {

dnnl::engine& cpu_engine();
dnnl::stream& cpu_stream();

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;
using dims = dnnl::memory::dims;

inline dnnl::memory::desc md(const dims& d, tag t) { return dnnl::memory::desc(d, dt::f32, t); }

// The memory descriptor of a tensor as stored: nChw16c when blocked, else plain.
inline dnnl::memory::desc user_md(const Tensor& t) {
  dims d(t.shape.begin(), t.shape.end());
  if (t.blocked) return md(d, tag::nChw16c);
  return md(d, d.size() == 4 ? tag::nchw : d.size() == 3 ? tag::abc : d.size() == 2 ? tag::ab : tag::a);
}

// A memory object over a tensor's storage (no copy).
inline dnnl::memory mem(const dnnl::memory::desc& d, const Tensor& t) {
  return dnnl::memory(d, cpu_engine(), const_cast<float*>(t.data()));
}
inline dnnl::memory mem(const dnnl::memory::desc& d, float* p) {
  return dnnl::memory(d, cpu_engine(), p);
}

// The implementation oneDNN chose for a primitive (impl_info_str, e.g. "brg:avx512_core").
inline std::string impl_name(const dnnl::primitive& p) {
  const char* s = nullptr;
  dnnl::error::wrap_c_api(dnnl_primitive_desc_query(p.get_primitive_desc(), dnnl_query_impl_info_str, 0, &s),
                          "could not query impl_info_str");
  return s ? s : "";
}

// Op::kernels() of the two shapes of primitive sets: forward + backward by data and by
// weights (conv, dense), or training forward + inference forward + backward (pooling,
// normalisation). `p` is the op's primitives of its last forward, null before one.
template <class P>
std::vector<Kernel> data_weights_kernels(const P* p) {
  if (!p) return {};
  return {{"forward", impl_name(p->fwd)}, {"backward_data", impl_name(p->bwd_data)},
          {"backward_weights", impl_name(p->bwd_w)}};
}
template <class P>
std::vector<Kernel> train_infer_kernels(const P* p) {
  if (!p) return {};
  return {{"forward", impl_name(p->fwd)}, {"forward_inference", impl_name(p->infer)}, {"backward", impl_name(p->bwd)}};
}

// Scratch storage for a primitive's workspace (kept from forward to backward).
struct Workspace {
  std::shared_ptr<uint8_t> buf;
  size_t bytes = 0;
  dnnl::memory get(const dnnl::memory::desc& d) {
    size_t need = d.get_size();
    if (need > bytes) {
      uint8_t* p = static_cast<uint8_t*>(std::aligned_alloc(64, ((need + 63) / 64) * 64));
      if (!p) throw std::bad_alloc();
      buf.reset(p, [](uint8_t* q) { std::free(q); });
      bytes = need;
    }
    return dnnl::memory(d, cpu_engine(), buf.get());
  }
};

}  // namespace lowbit

namespace lowbit {

// A primitive may prefer a blocked layout (format_tag::any): Staged moves a plain user
// tensor into the primitive's layout and back, or hands it through when the layouts
// agree. Reorder primitives are cached per (from, to) pair, never built per step.
class Staged {
 public:
  // memory in layout `want` holding the contents of `user`
  dnnl::memory in(const dnnl::memory::desc& want, const dnnl::memory& user) {
    if (want == user.get_desc()) return user;
    auto m = ws_.get(want);
    run(user, m);
    return m;
  }
  // memory in layout `want` for a primitive to write; then call done(prim, user)
  dnnl::memory out(const dnnl::memory::desc& want, const dnnl::memory& user) {
    if (want == user.get_desc()) return user;
    return ws_.get(want);
  }
  void done(const dnnl::memory& prim, const dnnl::memory& user) {
    if (prim.get_data_handle() != user.get_data_handle()) run(prim, user);
  }
  // copy between two layouts of the same data (cached reorder)
  void copy(const dnnl::memory& from, const dnnl::memory& to) { run(from, to); }

 private:
  struct Entry {
    dnnl::memory::desc from, to;
    dnnl::reorder r;
  };
  std::vector<Entry> cache_;
  Workspace ws_;
  void run(const dnnl::memory& from, const dnnl::memory& to) {
    auto fd = from.get_desc(), td = to.get_desc();
    Entry* e = nullptr;
    for (auto& c : cache_)
      if (c.from == fd && c.to == td) e = &c;
    if (!e) {
      cache_.push_back({fd, td, dnnl::reorder(from, to)});
      e = &cache_.back();
    }
    e->r.execute(cpu_stream(), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
  }
};

}  // namespace lowbit
