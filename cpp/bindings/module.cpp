// lowbit._core: this file only registers the submodules' bindings and the exception
// translation (std::invalid_argument -> ValueError, lowbit::type_error -> TypeError).
#include <pybind11/pybind11.h>

#include "lowbit/check.hpp"

namespace py = pybind11;

void register_graph(py::module_& m);
void register_info(py::module_& m);
void register_formats(py::module_& m);
void register_kernels(py::module_& m);
void register_accum(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "lowbit engine: ops, model graph, optimizers and the training loop (C++)";
  py::register_exception<lowbit::type_error>(m, "TypeError_", PyExc_TypeError);
  register_graph(m);
  register_info(m);
  register_formats(m);
  register_kernels(m);
  register_accum(m);
}
