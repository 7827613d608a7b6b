#include <dnnl.hpp>
#include <omp.h>
#include <pybind11/pybind11.h>

#include "lowbit/engine_thread.hpp"

namespace py = pybind11;

void register_info(py::module_& m) {
  m.def("build_info", [] {
    py::dict d;
    auto v = dnnl::version();
    d["onednn"] = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
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
  }, "Versions and CPU features seen by the engine.");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("set_num_threads: expected n >= 1, got " + std::to_string(n));
    omp_set_num_threads(n);  // this thread (formats on standalone arrays) and the engine thread
    py::gil_scoped_release nogil;
    lowbit::run_on_engine([n] { omp_set_num_threads(n); });
  });
}
