// Dense: dst = src @ kernel + bias with kernel (in, units) as in Keras, on oneDNN matmul.
// The backward products reuse the same storage through transposed descriptors:
//   diff_src = diff_dst @ kernel^T,  diff_kernel = src^T @ diff_dst,  diff_bias = sum_n diff_dst.
#include "lowbit/dnnl_util.hpp"
#include "lowbit/ops.hpp"

namespace lowbit {
namespace {

using namespace dnnl;

struct Dense : Op {
  int64_t K, M;
  bool use_bias;
  std::string kinit, binit;
  struct Prims {
    memory::desc src, wei, bias, dst, wei_t, src_t, dwei;
    matmul fwd, bwd_data, bwd_w;
  };
  std::map<int64_t, Prims> cache_;
  const Prims* last_ = nullptr;  // of the last forward or backward
  // Inference: the kernel in the layout the matmul prefers (blocked), reordered once per
  // weight version and batch size. Read as plain (K, M) rows whose stride is a power of
  // two of floats (M = 4096), it streamed at a third of the speed (AMD EPYC, batch 1).
  struct Infer {
    matmul prim;
    memory::desc wei;
    memory packed;
    uint64_t version = ~uint64_t(0);
  };
  std::map<int64_t, Infer> infer_;
  Infer& infer(int64_t N) {
    auto it = infer_.find(N);
    if (it != infer_.end()) return it->second;
    const Prims& p = prims(N);
    auto& e = cpu_engine();
    auto any = md({K, M}, tag::any);
    matmul::primitive_desc pd = use_bias ? matmul::primitive_desc(e, p.src, any, p.bias, p.dst)
                                         : matmul::primitive_desc(e, p.src, any, p.dst);
    Infer q{matmul(pd), pd.weights_desc(), memory(pd.weights_desc(), e)};
    return infer_.emplace(N, std::move(q)).first->second;
  }

  Dense(const Config& cfg, const std::vector<Shape>& in) {
    kind = "dense";
    LB_CHECK(in.size() == 1, "Dense: expected 1 input, got ", in.size());
    LB_CHECK(in[0].size() == 1, "Dense: expected a flat input (features,), got ", shape_str(in[0]),
             "; add a Flatten layer before Dense");
    K = in[0][0];
    M = cfg.i("units", 0);
    LB_CHECK(M >= 1, "Dense: expected units >= 1, got ", M);
    use_bias = cfg.i("use_bias", 1) != 0;
    kinit = cfg.s("kernel_initializer", "glorot_uniform");
    binit = cfg.s("bias_initializer", "zeros");
    out_shape = {M};
    params.push_back({"kernel", Tensor({K, M}), Tensor({K, M})});
    params[0].clip = float(cfg.f("kernel_clip", 0.0));
    if (use_bias) params.push_back({"bias", Tensor({M}), Tensor({M})});
    macs = K * M;
  }
  void init_params(uint64_t seed) override {
    init_tensor(params[0].value, kinit, K, M, seed);
    if (use_bias) init_tensor(params[1].value, binit, K, M, seed + 1);
  }
  Prims& prims(int64_t N) {
    auto it = cache_.find(N);
    if (it != cache_.end()) return it->second;
    Prims p;
    p.src = md({N, K}, tag::ab);
    p.wei = md({K, M}, tag::ab);
    p.bias = md({1, M}, tag::ab);
    p.dst = md({N, M}, tag::ab);
    p.wei_t = md({M, K}, tag::ba);  // kernel^T over the (K, M) storage
    p.src_t = md({K, N}, tag::ba);  // src^T over the (N, K) storage
    auto& e = cpu_engine();
    p.fwd = matmul(use_bias ? matmul::primitive_desc(e, p.src, p.wei, p.bias, p.dst)
                            : matmul::primitive_desc(e, p.src, p.wei, p.dst));
    p.bwd_data = matmul(matmul::primitive_desc(e, p.dst, p.wei_t, p.src));
    p.bwd_w = matmul(matmul::primitive_desc(e, p.src_t, p.dst, p.wei));
    return cache_.emplace(N, std::move(p)).first->second;
  }
  void forward(const std::vector<const Tensor*>& src, Tensor& dst, const StepContext& ctx) override {
    const int64_t N = src[0]->dim(0);
    auto& p = prims(N);
    last_ = &p;
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, mem(p.src, *src[0])},
                                         {DNNL_ARG_WEIGHTS, mem(p.wei, params[0].value)},
                                         {DNNL_ARG_DST, mem(p.dst, dst)}};
    if (use_bias) args.insert({DNNL_ARG_BIAS, mem(p.bias, params[1].value)});
    if (ctx.training || !versioned_weights) return p.fwd.execute(cpu_stream(), args);
    Infer& q = infer(N);
    if (q.wei != p.wei) {  // else the plain layout is the preferred one
      if (q.version != params[0].version) {
        reorder(args[DNNL_ARG_WEIGHTS], q.packed).execute(cpu_stream(), args[DNNL_ARG_WEIGHTS], q.packed);
        q.version = params[0].version;
      }
      args[DNNL_ARG_WEIGHTS] = q.packed;
    }
    q.prim.execute(cpu_stream(), args);
  }
  std::vector<Kernel> kernels() const override { return data_weights_kernels(last_); }
  void backward(const std::vector<const Tensor*>& src, const Tensor&, const Tensor& diff_dst,
                const std::vector<Tensor*>& diff_src) override {
    const int64_t N = src[0]->dim(0);
    auto& p = prims(N);
    last_ = &p;  // also when a wrapper ran the forward itself (quantized accumulators)
    p.bwd_w.execute(cpu_stream(), {{DNNL_ARG_SRC, mem(p.src_t, *src[0])},
                                   {DNNL_ARG_WEIGHTS, mem(p.dst, diff_dst)},
                                   {DNNL_ARG_DST, mem(p.wei, params[0].grad)}});
    if (use_bias) channel_sums(diff_dst.data(), N, M, 1, params[1].grad.data());
    if (diff_src[0])
      p.bwd_data.execute(cpu_stream(), {{DNNL_ARG_SRC, mem(p.dst, diff_dst)},
                                        {DNNL_ARG_WEIGHTS, mem(p.wei_t, params[0].value)},
                                        {DNNL_ARG_DST, mem(p.src, *diff_src[0])}});
  }
};

}  // namespace

std::unique_ptr<Op> make_dense(const Config& c, const std::vector<Shape>& in) { return std::make_unique<Dense>(c, in); }

}  // namespace lowbit
