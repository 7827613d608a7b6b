// Bindings of the number formats: a Quantizer = Format + its state (hysteresis signs,
// stochastic-rounding counter). Built from a dict written by python/lowbit/formats.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "lowbit/format.hpp"

namespace py = pybind11;
using namespace lowbit;
using farray = py::array_t<float, py::array::c_style>;

namespace {

template <class E>
E pick(const std::string& what, const std::string& v, std::initializer_list<std::pair<const char*, E>> opts) {
  std::string names;
  for (auto& o : opts) {
    if (v == o.first) return o.second;
    names += std::string(names.empty() ? "" : ", ") + o.first;
  }
  throw std::invalid_argument("format: unknown " + what + " '" + v + "' (expected " + names + ")");
}

}  // namespace

Format format_from_dict(const py::dict& d) {
  Format f;
  auto get_s = [&](const char* k, const char* def) { return d.contains(k) ? d[k].cast<std::string>() : std::string(def); };
  auto get_i = [&](const char* k, int def) { return d.contains(k) ? d[k].cast<int>() : def; };
  auto get_f = [&](const char* k, float def) { return d.contains(k) && !d[k].is_none() ? d[k].cast<float>() : def; };
  std::string kind = get_s("kind", "float32");
  f.kind = pick<FormatKind>("kind", kind,
                            {{"float32", FormatKind::float32}, {"minifloat", FormatKind::minifloat},
                             {"fixed", FormatKind::fixed}, {"int", FormatKind::integer},
                             {"binary", FormatKind::binary}, {"ternary", FormatKind::ternary},
                             {"block", FormatKind::block}});
  f.bits = get_i("bits", 32);
  f.exp_bits = get_i("exp_bits", 8);
  f.man_bits = get_i("man_bits", 23);
  f.saturate = get_i("saturate", 0) != 0;
  f.fn = get_i("fn", 0) != 0;
  f.fn_nan = get_i("fn_nan", 0) != 0;
  f.block = get_i("block", 32);
  f.block_scale = pick<BlockScale>("block scale", get_s("block_scale", "e8m0"),
                                   {{"e8m0", BlockScale::e8m0}, {"nvfp4", BlockScale::nvfp4}});
  f.elem_int = get_i("elem_int", 0) != 0;
  f.msb = get_i("msb", 0);
  f.msb_auto = get_i("msb_auto", 0) != 0;
  f.is_signed = get_i("signed", 1) != 0;
  f.rounding = pick<Rounding>("rounding", get_s("rounding", "nearest"),
                              {{"nearest", Rounding::nearest}, {"floor", Rounding::floor},
                               {"stochastic", Rounding::stochastic}});
  f.overflow = pick<Overflow>("overflow", get_s("overflow", "saturate"),
                              {{"saturate", Overflow::saturate}, {"wrap", Overflow::wrap}});
  f.seed = d.contains("seed") ? d["seed"].cast<uint64_t>() : 0;
  f.symmetric = get_i("symmetric", 1) != 0;
  f.per_channel = get_i("per_channel", 0) != 0;
  f.calibration = pick<Calibration>("calibration", get_s("calibration", "minmax"),
                                    {{"minmax", Calibration::minmax}, {"percentile", Calibration::percentile},
                                     {"mse", Calibration::mse}});
  f.scale = pick<ScaleMode>("scale", get_s("scale", "none"),
                            {{"none", ScaleMode::none}, {"mean_abs", ScaleMode::mean_abs},
                             {"channel_mean_abs", ScaleMode::channel_mean_abs}});
  f.hysteresis = get_f("hysteresis", 0.f);
  f.threshold = get_f("threshold", -1.f);
  f.ste = pick<Ste>("ste", get_s("ste", "identity"),
                    {{"identity", Ste::identity}, {"clipped", Ste::clipped}, {"hardtanh", Ste::hardtanh},
                     {"approx_sign", Ste::approx_sign}, {"none", Ste::none}});
  f.validate();
  return f;
}

namespace {

struct Quantizer {
  Format f;
  QuantState st;
};

}  // namespace

void register_formats(py::module_& m) {
  py::class_<Quantizer>(m, "Quantizer", "A number format with its quantizer state.")
      .def(py::init([](const py::dict& d) { return Quantizer{format_from_dict(d), {}}; }))
      .def_property_readonly("bits", [](const Quantizer& q) { return q.f.bits; })
      .def_property_readonly("msb", [](const Quantizer& q) { return q.f.msb; })
      .def("set_msb", [](Quantizer& q, int msb) {
        q.f.msb = msb;
        q.f.validate();
      })
      .def("__repr__", [](const Quantizer& q) { return q.f.repr(); })
      .def("quantize", [](Quantizer& q, const farray& x, int64_t channels, bool track, int64_t axis_len,
                          int64_t axis_stride) {
        farray y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
        const float* src = x.data();
        float* dst = y.mutable_data();
        int64_t n = x.size();
        {
          py::gil_scoped_release nogil;
          q.st.track = track;
          q.st.axis = {axis_len, axis_stride};
          quantize(q.f, src, dst, n, channels, &q.st);
        }
        return y;
      }, py::arg("x"), py::arg("channels") = 1, py::arg("track") = false, py::arg("axis_len") = 0,
         py::arg("axis_stride") = 1,
         "block formats: blocks run along an axis of length axis_len and stride axis_stride (0: the flat array)")
      .def("backward", [](Quantizer& q, const farray& x, const farray& dy) {
        if (x.size() != dy.size()) throw std::invalid_argument("backward: x and grad must have the same shape");
        farray dx(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
        ste_backward(q.f, x.data(), dy.data(), dx.mutable_data(), x.size());
        return dx;
      })
      .def("reset_state", [](Quantizer& q) { q.st = QuantState{}; })
      .def_property_readonly("step", [](const Quantizer& q) { return q.st.step; },
                             "grid step(s) of the last quantize call (integer-grid formats)")
      .def_property("last_sign",
                    [](const Quantizer& q) { return py::array_t<int8_t>(py::ssize_t(q.st.last_sign.size()), q.st.last_sign.data()); },
                    [](Quantizer& q, const py::array_t<int8_t, py::array::c_style>& a) {
                      q.st.last_sign.assign(a.data(), a.data() + a.size());
                    });
  m.def("msb_from_percentile", [](const farray& x, double p) { return msb_from_percentile(x.data(), x.size(), p); },
        py::arg("x"), py::arg("percentile"),
        "S4 Equation 11: ceil(log2(max(|P_p(x)|, |P_(100-p)(x)|))).");
}
