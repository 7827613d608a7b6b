// Bindings of the low-precision kernels (lowbit.kernels wraps them with argument parsing).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "lowbit/kernels.hpp"

namespace py = pybind11;
using namespace lowbit::kernels;
using farray = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace {

const float* per_channel(const std::optional<farray>& a, int64_t n, const char* what) {
  if (!a) return nullptr;
  if (a->ndim() != 1 || a->shape(0) != n)
    throw std::invalid_argument(std::string("binary kernel: expected ") + what + " of shape (" + std::to_string(n) +
                                ",), got " + std::to_string(a->size()) + " values in " + std::to_string(a->ndim()) +
                                " dimension(s)");
  return a->data();
}

}  // namespace

void register_kernels(py::module_& m) {
  m.def("kernel_info", [] {
    py::dict d;
    d["binary"] = path_name(binary_path());
    d["binary_native_supported"] = binary_native_supported();
    d["portable_forced"] = portable_forced();
    d["engine"] = engine_kernels_enabled();
    // per family: the implementation evaluate/predict use, or "simulated" and why
    for (Family f : {Family::binary, Family::int8, Family::bf16, Family::fp16}) {
      const std::string name = family_name(f);
      std::string why;
      if (f != Family::binary) d[name.c_str()] = family_path(f, &why);
      if (!why.empty()) d[(name + "_simulated_because").c_str()] = why;
      d[("engine_" + name + "_calls").c_str()] = engine_kernel_calls(f);
    }
    d["engine_weight_preparations"] = engine_weight_preparations();
    return d;
  }, "Which kernel path each low-precision layer uses on this CPU.");

  m.def("pack_bits", [](farray x, const std::string& path) {
    if (x.ndim() < 1) throw std::invalid_argument("pack_bits: expected an array with at least 1 dimension");
    const int64_t n = x.shape(x.ndim() - 1), rows = n ? x.size() / n : 0;
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    shape.back() = words_for(n);
    py::array_t<uint64_t> out(shape);
    const Path p = resolve_path(path);
    {
      py::gil_scoped_release nogil;
      pack_signs(x.data(), rows, n, out.mutable_data(), p);
    }
    return out;
  }, py::arg("x"), py::arg("path") = "auto");

  py::class_<BinaryWeights>(m, "BinaryWeights")
      .def_readonly("conv", &BinaryWeights::conv)
      .def_readonly("out_channels", &BinaryWeights::out_channels)
      .def_readonly("in_channels", &BinaryWeights::in_channels)
      .def_property_readonly("kernel_size", [](const BinaryWeights& w) { return py::make_tuple(w.kh, w.kw); })
      .def_readonly("kwords", &BinaryWeights::kwords)
      .def_property_readonly("memory_bytes", &BinaryWeights::memory_bytes)
      .def("__repr__", [](const BinaryWeights& w) {
        return std::string(w.conv ? "BinaryWeights(conv2d, " : "BinaryWeights(dense, ") + std::to_string(w.out_channels) +
               " outputs, " + std::to_string(w.kbits) + " bits each)";
      });

  m.def("pack_dense_weights", [](farray w) {
    if (w.ndim() != 2) throw std::invalid_argument("binary_dense: expected a (fan_in, units) kernel");
    return pack_dense_weights(w.data(), w.shape(0), w.shape(1));
  });
  m.def("pack_conv_weights", [](farray w) {
    if (w.ndim() != 4) throw std::invalid_argument("binary_conv2d: expected an OIHW kernel (4 dimensions)");
    return pack_conv_weights(w.data(), w.shape(0), w.shape(1), w.shape(2), w.shape(3));
  });

  m.def("binary_dense", [](farray x, const BinaryWeights& w, std::optional<farray> scale,
                           std::optional<farray> bias, const std::string& path) {
    if (x.ndim() != 2 || x.shape(1) != w.in_channels)
      throw std::invalid_argument("binary_dense: expected x of shape (N, " + std::to_string(w.in_channels) + ")");
    const float* s = per_channel(scale, w.out_channels, "scale");
    const float* b = per_channel(bias, w.out_channels, "bias");
    const Path p = resolve_path(path);
    py::array_t<float> y({x.shape(0), py::ssize_t(w.out_channels)});
    {
      py::gil_scoped_release nogil;
      binary_dense(x.data(), x.shape(0), w, s, b, y.mutable_data(), p);
    }
    return y;
  }, py::arg("x"), py::arg("w"), py::arg("scale") = py::none(), py::arg("bias") = py::none(),
     py::arg("path") = "auto");

  m.def("binary_conv2d", [](farray x, const BinaryWeights& w, std::vector<int64_t> stride,
                            std::vector<int64_t> padding, std::vector<int64_t> dilation,
                            std::optional<farray> scale, std::optional<farray> bias, const std::string& path) {
    if (x.ndim() != 4) throw std::invalid_argument("binary_conv2d: expected x in NCHW (4 dimensions)");
    if (stride.size() != 2 || padding.size() != 4 || dilation.size() != 2)
      throw std::invalid_argument("binary_conv2d: expected stride (2), padding (4) and dilation (2) values");
    ConvShape s{x.shape(0), x.shape(1), x.shape(2), x.shape(3)};
    s.sh = stride[0], s.sw = stride[1], s.dh = dilation[0], s.dw = dilation[1];
    s.pt = padding[0], s.pb = padding[1], s.pl = padding[2], s.pr = padding[3];
    const int64_t OH = (s.H + s.pt + s.pb - (w.kh - 1) * s.dh - 1) / s.sh + 1;
    const int64_t OW = (s.W + s.pl + s.pr - (w.kw - 1) * s.dw - 1) / s.sw + 1;
    const float* sc = per_channel(scale, w.out_channels, "scale");
    const float* b = per_channel(bias, w.out_channels, "bias");
    const Path p = resolve_path(path);
    py::array_t<float> y({x.shape(0), py::ssize_t(w.out_channels), py::ssize_t(std::max<int64_t>(OH, 0)),
                          py::ssize_t(std::max<int64_t>(OW, 0))});
    {
      py::gil_scoped_release nogil;
      binary_conv2d(x.data(), s, w, sc, b, y.mutable_data(), p);
    }
    return y;
  }, py::arg("x"), py::arg("w"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
     py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("path") = "auto");

  m.def("set_engine_kernels", &set_engine_kernels, py::arg("on"));
  m.def("engine_kernels_enabled", &engine_kernels_enabled);

  m.def("popcount_peak", &popcount_peak_bits_per_s, py::arg("seconds") = 0.2,
        "Measured VPOPCNTQ throughput of one thread, in bits per second.");
}
