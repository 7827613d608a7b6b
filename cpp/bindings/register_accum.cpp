// Bindings of the fp16 accumulation kernels' dispatch (lowbit.kernels wraps them).
#include <pybind11/pybind11.h>

#include "lowbit/accum_fp16.hpp"

namespace py = pybind11;
using namespace lowbit::fp16acc;

void register_accum(py::module_& m) {
  m.def("fp16_accum_info", [] {
    py::dict d;
    d["fp16_accum"] = path_name(current());
    d["fp16_accum_setting"] = setting();
    d["fp16_accum_native_supported"] = native_supported();
    d["fp16_accum_avx512f_supported"] = avx512f_supported();
    d["fp16_accum_avx2_supported"] = avx2_supported();
    d["fp16_accum_kernel_calls"] = kernel_calls();
    d["fp16_accum_simulated_calls"] = simulated_calls();
    return d;
  }, "The path of Float16 accumulators (accum_format / grad_accum_format) and call counts.");
  m.def("set_fp16_accum_path", [](const std::string& name) {
    const std::string was = setting();
    set_path(name);
    return was;
  }, py::arg("path"), "Set the engine's fp16 accumulation path; returns the previous setting.");
}
