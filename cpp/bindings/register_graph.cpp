// Bindings of the model graph. numpy arrays come in without copies as C-contiguous
// float32 / int64 (the Python layer converts other dtypes by its documented rule);
// the GIL is released while the engine computes.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "lowbit/graph.hpp"

namespace py = pybind11;
using namespace lowbit;

using farray = py::array_t<float, py::array::c_style>;
using iarray = py::array_t<int64_t, py::array::c_style>;

lowbit::Format format_from_dict(const py::dict& d);

namespace {

Config to_config(const py::dict& d) {
  Config c;
  for (auto item : d) {
    std::string k = py::str(item.first);
    py::handle v = item.second;
    if (v.is_none()) continue;
    if (k == "formats") {  // {role: format config dict}
      for (auto f : v.cast<py::dict>())
        if (!f.second.is_none()) c.formats[py::str(f.first)] = format_from_dict(f.second.cast<py::dict>());
      continue;
    }
    if (py::isinstance<py::bool_>(v)) c.ints[k] = {v.cast<bool>() ? 1 : 0};
    else if (py::isinstance<py::int_>(v)) c.ints[k] = {v.cast<int64_t>()};
    else if (py::isinstance<py::float_>(v)) c.floats[k] = v.cast<double>();
    else if (py::isinstance<py::str>(v)) c.strs[k] = v.cast<std::string>();
    else if (py::isinstance<py::tuple>(v) || py::isinstance<py::list>(v)) {
      std::vector<int64_t> xs;
      for (auto e : v) {
        if (!py::isinstance<py::int_>(e) || py::isinstance<py::bool_>(e))
          throw type_error("argument '" + k + "': expected integers, got " + std::string(py::str(v)));
        xs.push_back(e.cast<int64_t>());
      }
      c.ints[k] = xs;
    } else {
      throw type_error("argument '" + k + "': unsupported value " + std::string(py::repr(v)));
    }
  }
  return c;
}

Shape per_sample(const py::buffer_info& b) { return Shape(b.shape.begin() + 1, b.shape.end()); }

// Check x against the model's input shape; returns the batch size.
int64_t check_x(Graph& g, const farray& x, const char* what) {
  const Shape& want = g.nodes()[0].out_shape;
  auto b = x.request();
  LB_CHECK(b.ndim == int64_t(want.size()) + 1, what, ": expected x of shape (N, ", shape_str(want).substr(1),
           ", got an array of rank ", b.ndim);
  LB_CHECK(per_sample(b) == want, what, ": expected samples of shape ", shape_str(want), ", got ",
           shape_str(per_sample(b)));
  return b.shape[0];
}

struct Targets {
  const int64_t* labels = nullptr;
  const float* targets = nullptr;
};

Targets check_y(Graph& g, const py::object& y, int64_t n, const char* what) {
  Targets t;
  const int64_t K = g.nodes()[size_t(g.output())].out_shape[0];
  if (py::isinstance<iarray>(y) && py::array(y).dtype().is(py::dtype::of<int64_t>())) {
    auto a = y.cast<iarray>();
    LB_CHECK(a.ndim() == 1 && a.shape(0) == n, what, ": expected labels of shape (", n, ",), got rank ", a.ndim(),
             " length ", a.ndim() ? a.shape(0) : 0);
    t.labels = a.data();
  } else {
    auto a = y.cast<farray>();
    LB_CHECK(a.ndim() == 2 && a.shape(0) == n && a.shape(1) == K, what, ": expected targets of shape (", n, ", ", K,
             ")");
    t.targets = a.data();
  }
  return t;
}

ScheduleConfig to_schedule(const py::dict& d) {
  ScheduleConfig s;
  Config sc = to_config(d);
  s.name = sc.s("name", "constant");
  s.gamma = sc.f("gamma", 0.1);
  s.step_size = sc.i("step_size", 30);
  if (sc.ints.count("milestones")) s.milestones = sc.ints["milestones"];
  s.t_max = sc.i("t_max", 1);
  s.min_lr = sc.f("min_lr", 0.0);
  return s;
}

// (n, *output shape) float32 array for the model's outputs
farray output_array(Graph& g, int64_t n) {
  Shape s{n};
  for (auto d : g.nodes()[size_t(g.output())].out_shape) s.push_back(d);
  return farray(s);
}

py::dict metrics(const Metrics& m) {
  py::dict d;
  d["loss"] = m.loss;
  d["accuracy"] = m.accuracy;
  return d;
}

}  // namespace

void register_graph(py::module_& m) {
  m.def("scheduled_lr", [](const py::dict& sched, double lr, int64_t epoch) {
    return scheduled_lr(to_schedule(sched), lr, epoch);
  }, py::arg("schedule"), py::arg("learning_rate"), py::arg("epoch"), "The engine's learning rate of an epoch.");
  py::class_<Graph>(m, "Graph", "A model graph: Input, then ops in topological order.")
      .def(py::init<>())
      .def("add_input", [](Graph& g, std::vector<int64_t> shape) { return g.add_input(shape); })
      .def("add", [](Graph& g, const std::string& kind, const std::vector<int>& inputs,
                     const py::dict& cfg) { return g.add(kind, inputs, to_config(cfg)); },
           py::arg("kind"), py::arg("inputs"), py::arg("config"))
      .def("set_output", &Graph::set_output)
      .def_property_readonly("output", &Graph::output)
      .def_property_readonly("num_nodes", [](Graph& g) { return g.nodes().size(); })
      .def("node_kind", [](Graph& g, int i) { return g.nodes().at(size_t(i)).kind; })
      .def("node_inputs", [](Graph& g, int i) { return g.nodes().at(size_t(i)).inputs; })
      .def("node_shape", [](Graph& g, int i) { return g.nodes().at(size_t(i)).out_shape; })
      .def("node_macs", [](Graph& g, int i) {
        auto& n = g.nodes().at(size_t(i));
        return n.op ? n.op->macs : int64_t(0);
      })
      .def("node_kernels", [](Graph& g, int i) {
        py::list out;
        for (auto& k : g.nodes().at(size_t(i)).op_kernels()) out.append(py::make_tuple(k.pass, k.impl));
        return out;
      }, "(pass, oneDNN implementation) of the primitives node i used in the last forward/backward")
      .def("node_params", [](Graph& g, int i) {
        py::list r;
        auto& n = g.nodes().at(size_t(i));
        if (n.op)
          for (auto& p : n.op->params) r.append(py::make_tuple(p.name, p.value.shape, p.trainable));
        return r;
      })
      .def("set_trainable", [](Graph& g, int i, int k, bool trainable) {
        auto& n = const_cast<Node&>(g.nodes().at(size_t(i)));
        LB_CHECK(n.op && k >= 0 && size_t(k) < n.op->params.size(), "set_trainable: node ", i, " has no parameter ", k);
        n.op->params[size_t(k)].trainable = trainable;
      }, py::arg("node"), py::arg("k"), py::arg("trainable"),
           "Whether the optimizer updates parameter k of node i (a frozen layer keeps its weights).")
      .def("get_param", [](Graph& g, int i, int k) {
        auto& p = const_cast<Node&>(g.nodes().at(size_t(i))).op->params.at(size_t(k));
        farray a(p.value.shape);
        std::memcpy(a.mutable_data(), p.value.data(), size_t(p.value.size()) * 4);
        return a;
      })
      .def("get_grad", [](Graph& g, int i, int k) {
        auto& p = const_cast<Node&>(g.nodes().at(size_t(i))).op->params.at(size_t(k));
        farray a(p.grad.shape);
        std::memcpy(a.mutable_data(), p.grad.data(), size_t(p.grad.size()) * 4);
        return a;
      })
      .def("set_param", [](Graph& g, int i, int k, const farray& a) {
        auto& p = const_cast<Node&>(g.nodes().at(size_t(i))).op->params.at(size_t(k));
        Shape s(a.shape(), a.shape() + a.ndim());
        LB_CHECK(s == p.value.shape, "set_weights: ", p.name, " of node ", i, " expects shape ",
                 shape_str(p.value.shape), ", got ", shape_str(s));
        std::memcpy(p.value.data(), a.data(), size_t(p.value.size()) * 4);
        ++p.version;
      })
      .def("get_quant_state", [](Graph& g, int i) {
        py::list r;
        auto& n = const_cast<Node&>(g.nodes().at(size_t(i)));
        if (n.op)
          for (auto* st : n.op->quant_states()) {
            py::array_t<int8_t> signs(py::ssize_t(st->last_sign.size()));
            std::memcpy(signs.mutable_data(), st->last_sign.data(), st->last_sign.size());
            r.append(py::make_tuple(st->msb, st->counter, signs, st->running_amax));
          }
        return r;
      }, "Quantizer states of node i: (tracked msb, stochastic counter, hysteresis signs, running max|x|) per role.")
      .def("set_quant_state", [](Graph& g, int i, const py::list& states) {
        auto& n = const_cast<Node&>(g.nodes().at(size_t(i)));
        auto sts = n.op ? n.op->quant_states() : std::vector<QuantState*>{};
        LB_CHECK(sts.size() == states.size(), "load_weights: node ", i, " has ", sts.size(),
                 " quantizer states, the file has ", states.size());
        for (size_t k = 0; k < sts.size(); ++k) {
          auto t = states[k].cast<py::tuple>();
          sts[k]->msb = t[0].cast<int>();
          sts[k]->counter = t[1].cast<uint64_t>();
          auto a = t[2].cast<py::array_t<int8_t, py::array::c_style>>();
          sts[k]->last_sign.assign(a.data(), a.data() + a.size());
          if (t.size() > 3) sts[k]->running_amax = t[3].cast<float>();
        }
        if (n.op)
          for (auto& p : n.op->params) ++p.version;  // weight quantizers read their state (hysteresis)
      })
      .def("init_params", &Graph::init_params, py::arg("seed"))
      .def("set_loss_scaling", &Graph::set_loss_scaling, py::arg("dynamic"), py::arg("init"),
           py::arg("growth_interval") = 2000)
      .def_property_readonly("loss_scale", &Graph::loss_scale)
      .def_property_readonly("skipped_steps", &Graph::skipped_steps)
      .def("activation", [](Graph& g, int i) {
        const Tensor& t = g.activation(i);
        LB_CHECK(t.ptr, "activation: node ", i, " has not been computed");
        farray a(t.shape);
        std::memcpy(a.mutable_data(), t.data(), size_t(t.size()) * 4);
        return a;
      })
      .def("count_params", &Graph::count_params)
      .def_property("step", &Graph::step, &Graph::set_step)
      .def_property_readonly("learning_rate", &Graph::current_lr)
      .def("compile", [](Graph& g, const std::string& loss, const py::dict& opt, const py::dict& sched) {
        OptimConfig o;
        Config c = to_config(opt);
        o.name = c.s("name", "sgd");
        o.lr = c.f("learning_rate", 0.01);
        o.momentum = c.f("momentum", 0.0);
        o.nesterov = c.i("nesterov", 0) != 0;
        o.weight_decay = c.f("weight_decay", 0.0);
        o.beta_1 = c.f("beta_1", 0.9);
        o.beta_2 = c.f("beta_2", 0.999);
        o.epsilon = c.f("epsilon", 1e-7);
        o.rho = c.f("rho", 0.95);
        o.bop = c.i("bop", 0) != 0;
        o.bop_gamma = c.f("bop_gamma", 1e-4);
        o.bop_threshold = c.f("bop_threshold", 1e-8);
        ScheduleConfig s = to_schedule(sched);
        scheduled_lr(s, o.lr, 0);  // validates the schedule name
        g.compile(loss, o, s);
      })
      .def("fit_epoch", [](Graph& g, const farray& x, const py::object& y, int64_t batch, bool shuffle, uint64_t seed,
                           int64_t epoch, py::object progress) {
        int64_t n = check_x(g, x, "fit");
        Targets t = check_y(g, y, n, "fit");
        Progress cb;
        if (!progress.is_none())
          cb = [progress](int64_t done, double loss, double acc) {
            py::gil_scoped_acquire gil;
            progress(done, loss, acc);
          };
        Metrics r;
        {
          py::gil_scoped_release nogil;
          r = g.fit_epoch(x.data(), n, t.labels, t.targets, batch, shuffle, seed, epoch, cb);
        }
        return metrics(r);
      })
      .def("evaluate", [](Graph& g, const farray& x, const py::object& y, int64_t batch) {
        int64_t n = check_x(g, x, "evaluate");
        Targets t = check_y(g, y, n, "evaluate");
        py::gil_scoped_release nogil;
        auto r = g.evaluate(x.data(), n, t.labels, t.targets, batch);
        py::gil_scoped_acquire gil;
        return metrics(r);
      })
      .def("predict", [](Graph& g, const farray& x, int64_t batch) {
        int64_t n = check_x(g, x, "predict");
        farray out = output_array(g, n);
        float* o = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          g.predict(x.data(), n, batch, o);
        }
        return out;
      })
      .def("compute_gradients", [](Graph& g, const farray& x, const py::object& y) {
        int64_t n = check_x(g, x, "compute_gradients");
        Targets t = check_y(g, y, n, "compute_gradients");
        py::gil_scoped_release nogil;
        return g.compute_gradients(x.data(), n, t.labels, t.targets);
      })
      .def("forward", [](Graph& g, const farray& x, bool training) {
        int64_t n = check_x(g, x, "forward");
        farray out = output_array(g, n);
        float* o = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          g.forward_batch(x.data(), n, training, o);
        }
        return out;
      }, py::arg("x"), py::arg("training") = false)
      .def("backward", [](Graph& g, const farray& dy, std::vector<int64_t> x_shape) {
        LB_CHECK(!x_shape.empty() && dy.ndim() >= 1 && dy.shape(0) == x_shape[0] &&
                     dy.size() == dy.shape(0) * numel(g.nodes()[size_t(g.output())].out_shape) &&
                     numel(Shape(x_shape.begin() + 1, x_shape.end())) == numel(g.nodes()[0].out_shape),
                 "backward: dy must have the output's shape and x_shape the input's, for the last forward batch");
        LB_CHECK(g.nodes().size() > 0 && dy.size() == g.activation(g.output()).size(),
                 "backward: dy does not match the last forward batch");
        farray dx(x_shape);
        float* o = dx.mutable_data();
        {
          py::gil_scoped_release nogil;
          g.backward_batch(dy.data(), o);
        }
        return dx;
      })
      .def("forward_inputs", [](Graph& g, const std::vector<farray>& xs, bool training, bool update_stats) {
        const auto& ins = g.inputs();
        LB_CHECK(xs.size() == ins.size(), "forward: expected ", ins.size(), " input arrays, got ", xs.size());
        std::vector<const float*> ptrs;
        int64_t n = -1;
        for (size_t k = 0; k < xs.size(); ++k) {
          const Shape& want = g.nodes()[size_t(ins[k])].out_shape;
          auto b = xs[k].request();
          LB_CHECK(b.ndim == int64_t(want.size()) + 1 && per_sample(b) == want, "forward: expected input ", k,
                   " of shape (N, ", shape_str(want).substr(1), ", got ", shape_str(Shape(b.shape.begin(), b.shape.end())));
          LB_CHECK(n < 0 || b.shape[0] == n, "forward: inputs differ in batch size (", n, " and ", b.shape[0], ")");
          n = b.shape[0];
          ptrs.push_back(xs[k].data());
        }
        farray out = output_array(g, n);
        float* o = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          g.forward_inputs(ptrs, n, training, update_stats, o);
        }
        return out;
      }, py::arg("xs"), py::arg("training") = false, py::arg("update_stats") = false,
         "Forward of a graph with any number of inputs (one array per add_input, in order).")
      .def("backward_inputs", [](Graph& g, const farray& dy) {
        const auto& ins = g.inputs();
        LB_CHECK(!ins.empty() && g.activation(g.output()).ptr, "backward: call forward_inputs first");
        const Shape& y = g.activation(g.output()).shape;
        LB_CHECK(Shape(dy.shape(), dy.shape() + dy.ndim()) == y, "backward: expected dy of shape ", shape_str(y),
                 " (the last forward's output), got ", shape_str(Shape(dy.shape(), dy.shape() + dy.ndim())));
        std::vector<farray> dxs;
        std::vector<float*> ptrs;
        for (int i : ins) {
          dxs.emplace_back(g.activation(i).shape);
          ptrs.push_back(dxs.back().mutable_data());
        }
        {
          py::gil_scoped_release nogil;
          g.backward_inputs(dy.data(), ptrs);
        }
        return dxs;
      }, py::arg("dy"), "Input gradients (one per input) for output gradient dy of the last forward; "
         "parameter gradients are left in get_grad.");
}
