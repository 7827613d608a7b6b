#include <dlfcn.h>
#include <filesystem>
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>

#include <oneapi/dnnl/dnnl.hpp>
#include "lowbit/engine_thread.hpp"
#include "lowbit/simd.hpp"

namespace py = pybind11;

namespace {

// NaN and +-inf have all exponent bits set: one pass over the bits, no temporary array.
LB_CLONES int64_t count_nonfinite(const float* x, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, 4);
    bad += (b & 0x7f800000u) == 0x7f800000u;
  }
  return bad;
}

// oneDNN's name of the instruction set it dispatches to (the ONEDNN_MAX_CPU_ISA spelling,
// lower case), after ONEDNN_MAX_CPU_ISA and the CPU's own features are applied.
std::string cpu_isa_name(dnnl::cpu_isa isa) {
  using I = dnnl::cpu_isa;
  switch (isa) {
    case I::sse41: return "sse41";
    case I::avx: return "avx";
    case I::avx2: return "avx2";
    case I::avx2_vnni: return "avx2_vnni";
    case I::avx2_vnni_2: return "avx2_vnni_2";
    case I::avx512_core: return "avx512_core";
    case I::avx512_core_vnni: return "avx512_core_vnni";
    case I::avx512_core_bf16: return "avx512_core_bf16";
    case I::avx512_core_fp16: return "avx512_core_fp16";
    case I::avx512_core_amx: return "avx512_core_amx";
    case I::avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    case I::isa_default: return "default";
  }
  return "unknown (" + std::to_string(int(isa)) + ")";
}

// The file a symbol was loaded from: which libdnnl / libgomp this process really uses.
std::string library_of(const void* symbol) {
  Dl_info info{};
  if (!dladdr(symbol, &info) || !info.dli_fname) return "";
  return std::filesystem::path(info.dli_fname).lexically_normal().string();  // rpath's "/../" folded
}

}  // namespace

void register_info(py::module_& m) {
  m.def("build_info", [] {
    py::dict d;
    auto v = dnnl::version();
    d["onednn"] = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
    d["onednn_commit"] = std::string(v->hash);
    d["onednn_cpu_isa"] = cpu_isa_name(dnnl::get_effective_cpu_isa());
    d["onednn_library"] = library_of(reinterpret_cast<const void*>(&dnnl_version));
    d["openmp_library"] = library_of(reinterpret_cast<const void*>(&omp_get_max_threads));
    int threads = 0;
    {
      py::gil_scoped_release nogil;
      lowbit::run_on_engine([&] { threads = omp_get_max_threads(); });  // where the graphs compute
    }
    d["openmp_threads"] = threads;
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    d["avx2"] = bool(__builtin_cpu_supports("avx2"));
    d["avx512f"] = bool(__builtin_cpu_supports("avx512f"));
    d["avx512bw"] = bool(__builtin_cpu_supports("avx512bw"));
    d["avx512vpopcntdq"] = bool(__builtin_cpu_supports("avx512vpopcntdq"));
#endif
    return d;
  }, "Versions, the instruction set oneDNN dispatches to, the loaded oneDNN and OpenMP libraries, CPU features.");
  m.def("count_nonfinite", [](py::array_t<float, py::array::c_style> x) {
    const float* p = x.data();
    const int64_t n = x.size();
    py::gil_scoped_release nogil;
    return count_nonfinite(p, n);
  }, "NaN and infinite entries of a C-contiguous float32 array (the input check of every call).");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("set_num_threads: expected n >= 1, got " + std::to_string(n));
    omp_set_num_threads(n);  // this thread (formats on standalone arrays) and the engine thread
    py::gil_scoped_release nogil;
    lowbit::run_on_engine([n] { omp_set_num_threads(n); });
  });
}
