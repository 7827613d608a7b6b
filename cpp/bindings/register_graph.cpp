// Bindings of the model graph. numpy arrays come in without copies as C-contiguous
// float32 / int64 (the Python layer converts other dtypes by its documented rule).
// Every call that reads or writes the graph's buffers runs on the engine thread
// (lowbit/engine_thread.hpp) with the GIL released; Python objects are made here, on
// the caller's thread, before or after.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <tuple>
#include <type_traits>

#include "lowbit/engine_thread.hpp"
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
  s.per_step = sc.i("per_step", 0) != 0;
  return s;
}

// (n, *output shape) float32 array for the model's outputs
farray output_array(Graph& g, int64_t n) {
  Shape s{n};
  for (auto d : g.nodes()[size_t(g.output())].out_shape) s.push_back(d);
  return farray(s);
}

// Run fn() on the engine thread, GIL released. A call that changes the graph (mutates)
// is refused while the graph is inside fit_epoch: queued from another thread, it would
// run between two batches of that fit.
template <class Fn>
auto engine_call(Graph& g, const char* what, bool mutates, Fn fn) {
  using R = decltype(fn());
  py::gil_scoped_release nogil;
  auto guarded = [&] {
    if (mutates && g.fitting())
      throw std::runtime_error(std::string(what) +
                               ": fit() is running on this model in another thread; wait for it to return "
                               "(predict, evaluate and get_weights may be called meanwhile)");
    return fn();
  };
  if constexpr (std::is_void_v<R>) {
    run_on_engine(guarded);
  } else {
    std::optional<R> r;
    run_on_engine([&] { r.emplace(guarded()); });
    return std::move(*r);
  }
}

Param& param_at(Graph& g, int i, int k) {
  auto& n = const_cast<Node&>(g.nodes().at(size_t(i)));
  LB_CHECK(n.op, "node ", i, " (", n.kind, ") has no parameters");
  return n.op->params.at(size_t(k));
}

farray copy_out(const Shape& shape, const std::vector<float>& v) {
  farray a(shape);
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * 4);
  return a;
}

// Graphs are destroyed on the engine thread, where their primitives were made, and
// before the destructor returns (so none is left to run while the process exits).
struct DeleteOnEngine {
  void operator()(Graph* g) const {
    if (!PyGILState_Check()) return run_on_engine([g] { delete g; });
    py::gil_scoped_release nogil;  // the engine may be waiting for the GIL (fit's progress bar)
    run_on_engine([g] { delete g; });
  }
};

py::dict metrics(const Metrics& m) {
  py::dict d;
  d["loss"] = m.loss;
  d["accuracy"] = m.accuracy;
  return d;
}

}  // namespace

void register_graph(py::module_& m) {
  py::register_exception<Diverged>(m, "Diverged", PyExc_FloatingPointError);
  m.def("scheduled_lr", [](const py::dict& sched, double lr, double epoch) {
    return scheduled_lr(to_schedule(sched), lr, epoch);
  }, py::arg("schedule"), py::arg("learning_rate"), py::arg("epoch"),
        "The engine's learning rate at a (fractional) epoch.");
  py::class_<Graph, std::unique_ptr<Graph, DeleteOnEngine>>(m, "Graph",
                                                            "A model graph: Input, then ops in topological order.")
      .def(py::init<>())
      .def("add_input", [](Graph& g, std::vector<int64_t> shape) {
        return engine_call(g, "add_input", true, [&] { return g.add_input(shape); });
      })
      .def("add", [](Graph& g, const std::string& kind, const std::vector<int>& inputs, const py::dict& cfg) {
        Config c = to_config(cfg);
        return engine_call(g, "add", true, [&] { return g.add(kind, inputs, c); });
      }, py::arg("kind"), py::arg("inputs"), py::arg("config"))
      .def("set_output", [](Graph& g, int id) { engine_call(g, "set_output", true, [&] { g.set_output(id); }); })
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
        engine_call(g, "set_trainable", true, [&] { n.op->params[size_t(k)].trainable = trainable; });
      }, py::arg("node"), py::arg("k"), py::arg("trainable"),
           "Whether the optimizer updates parameter k of node i (a frozen layer keeps its weights).")
      .def("get_param", [](Graph& g, int i, int k) {
        Param& p = param_at(g, i, k);
        farray a(p.value.shape);
        float* o = a.mutable_data();
        engine_call(g, "get_weights", false, [&] { std::memcpy(o, p.value.data(), size_t(p.value.size()) * 4); });
        return a;
      })
      .def("get_params", [](Graph& g, const std::vector<std::pair<int, int>>& slots) {
        std::vector<Param*> ps;
        py::list r;
        std::vector<float*> outs;
        for (auto [i, k] : slots) {
          ps.push_back(&param_at(g, i, k));
          farray a(ps.back()->value.shape);
          outs.push_back(a.mutable_data());
          r.append(a);
        }
        engine_call(g, "get_weights", false, [&] {  // one call: all from the same batch boundary
          for (size_t j = 0; j < ps.size(); ++j)
            std::memcpy(outs[j], ps[j]->value.data(), size_t(ps[j]->value.size()) * 4);
        });
        return r;
      }, "Parameters (node, index) pairs, copied together.")
      .def("get_grad", [](Graph& g, int i, int k) {
        Param& p = param_at(g, i, k);
        farray a(p.grad.shape);
        float* o = a.mutable_data();
        engine_call(g, "get_grad", false, [&] { std::memcpy(o, p.grad.data(), size_t(p.grad.size()) * 4); });
        return a;
      })
      .def("set_param", [](Graph& g, int i, int k, const farray& a) {
        Param& p = param_at(g, i, k);
        Shape s(a.shape(), a.shape() + a.ndim());
        LB_CHECK(s == p.value.shape, "set_weights: ", p.name, " of node ", i, " expects shape ",
                 shape_str(p.value.shape), ", got ", shape_str(s));
        const float* src = a.data();
        engine_call(g, "set_weights", true, [&] {
          std::memcpy(p.value.data(), src, size_t(p.value.size()) * 4);
          ++p.version;
        });
      })
      .def("set_params", [](Graph& g, const std::vector<std::pair<int, int>>& slots, const std::vector<farray>& arrays) {
        LB_CHECK(slots.size() == arrays.size(), "set_weights: expected ", slots.size(), " arrays, got ", arrays.size());
        std::vector<Param*> ps;
        for (size_t j = 0; j < slots.size(); ++j) {
          ps.push_back(&param_at(g, slots[j].first, slots[j].second));
          Shape s(arrays[j].shape(), arrays[j].shape() + arrays[j].ndim());
          LB_CHECK(s == ps[j]->value.shape, "set_weights: ", ps[j]->name, " of node ", slots[j].first,
                   " expects shape ", shape_str(ps[j]->value.shape), ", got ", shape_str(s));
        }
        engine_call(g, "set_weights", true, [&] {  // all or nothing: shapes were checked above
          for (size_t j = 0; j < ps.size(); ++j) {
            std::memcpy(ps[j]->value.data(), arrays[j].data(), size_t(ps[j]->value.size()) * 4);
            ++ps[j]->version;
          }
        });
      }, "Set parameters (node, index) together after checking every shape.")
      .def("get_quant_state", [](Graph& g, int i) {
        auto& n = const_cast<Node&>(g.nodes().at(size_t(i)));
        auto sts = engine_call(g, "get_quant_state", false, [&] {
          std::vector<QuantState> r;
          if (n.op)
            for (auto* st : n.op->quant_states()) r.push_back(*st);
          return r;
        });
        py::list r;
        for (auto& st : sts) {
          py::array_t<int8_t> signs(py::ssize_t(st.last_sign.size()));
          if (!st.last_sign.empty()) std::memcpy(signs.mutable_data(), st.last_sign.data(), st.last_sign.size());
          r.append(py::make_tuple(st.msb, st.counter, signs, st.running_amax,
                                  py::make_tuple(st.running_lo, st.running_hi)));
        }
        return r;
      }, "Quantizer states of node i: (tracked msb, stochastic counter, hysteresis signs, running max|x|, running "
         "(min, max)) per role; unset running values are -1 and (1, -1).")
      .def("set_quant_state", [](Graph& g, int i, const py::list& states) {
        auto& n = const_cast<Node&>(g.nodes().at(size_t(i)));
        struct In {
          int msb;
          uint64_t counter;
          std::vector<int8_t> signs;
          std::optional<float> running;
          std::optional<std::pair<float, float>> range;
        };
        std::vector<In> in;
        for (auto s : states) {
          auto t = s.cast<py::tuple>();
          LB_CHECK(t.size() >= 3 && t.size() <= 5,
                   "quantizer state: expected (msb, counter, signs[, running max|x|[, running (min, max)]])");
          auto a = t[2].cast<py::array_t<int8_t, py::array::c_style | py::array::forcecast>>();
          In x{t[0].cast<int>(), t[1].cast<uint64_t>(), std::vector<int8_t>(a.data(), a.data() + a.size()), {}};
          if (t.size() > 3) x.running = t[3].cast<float>();
          if (t.size() > 4) x.range = t[4].cast<std::pair<float, float>>();
          in.push_back(std::move(x));
        }
        engine_call(g, "set_quant_state", true, [&] {
          auto sts = n.op ? n.op->quant_states() : std::vector<QuantState*>{};
          LB_CHECK(sts.size() == in.size(), "load_weights: node ", i, " has ", sts.size(), " quantizer states, the file has ",
                   in.size());
          for (size_t k = 0; k < sts.size(); ++k) {
            sts[k]->msb = in[k].msb;
            sts[k]->counter = in[k].counter;
            sts[k]->last_sign = in[k].signs;
            if (in[k].running) sts[k]->running_amax = *in[k].running;
            if (in[k].range) std::tie(sts[k]->running_lo, sts[k]->running_hi) = *in[k].range;
          }
          if (n.op)
            for (auto& p : n.op->params) ++p.version;  // weight quantizers read their state (hysteresis)
        });
      })
      .def("optimizer_state", [](Graph& g) {
        struct Out {
          int64_t t = 0;
          std::vector<std::vector<std::pair<Shape, std::vector<float>>>> slots;
        };
        auto o = engine_call(g, "optimizer_state", false, [&] {
          Out out;
          if (auto* opt = g.optimizer()) {
            out.t = opt->t;
            for (auto& ps : opt->state) {
              out.slots.emplace_back();
              for (auto& s : ps) out.slots.back().emplace_back(s.shape, std::vector<float>(s.data(), s.data() + s.size()));
            }
          }
          return out;
        });
        py::list slots;
        for (auto& ps : o.slots) {
          py::list l;
          for (auto& [shape, v] : ps) l.append(copy_out(shape, v));
          slots.append(l);
        }
        return py::make_tuple(o.t, slots);
      }, "(steps taken, per trainable parameter the optimizer's slot arrays); no slots before the first step.")
      .def_property_readonly("optimizer_slots", [](Graph& g) { return g.optimizer() ? g.optimizer()->slots() : -1; },
                             "Slots the optimizer keeps per trainable parameter (-1 before compile).")
      .def("set_optimizer_state", [](Graph& g, int64_t t, const std::vector<std::vector<farray>>& slots) {
        std::vector<std::vector<Tensor>> st;
        for (auto& ps : slots) {
          st.emplace_back();
          for (auto& a : ps) {
            Tensor x(Shape(a.shape(), a.shape() + a.ndim()));
            std::memcpy(x.data(), a.data(), size_t(a.size()) * 4);
            st.back().push_back(std::move(x));
          }
        }
        engine_call(g, "set_optimizer_state", true, [&] {
          LB_CHECK(g.optimizer(), "optimizer state: call compile() first");
          g.optimizer()->set_state(t, std::move(st), g.params(true));
        });
      })
      .def_property("scaler_state", [](Graph& g) { return engine_call(g, "scaler_state", false, [&] { return g.scaler_state(); }); },
                    [](Graph& g, const std::vector<double>& s) {
                      engine_call(g, "scaler_state", true, [&] { g.set_scaler_state(s); });
                    }, "Loss scaler: (scale, good steps since the last change, skipped steps).")
      .def("init_params", [](Graph& g, uint64_t seed) { engine_call(g, "init_params", true, [&] { g.init_params(seed); }); },
           py::arg("seed"))
      .def("set_loss_scaling", [](Graph& g, bool dynamic, double init, int64_t growth_interval) {
        engine_call(g, "set_loss_scaling", true, [&] { g.set_loss_scaling(dynamic, init, growth_interval); });
      }, py::arg("dynamic"), py::arg("init"), py::arg("growth_interval") = 2000)
      .def_property_readonly("loss_scale", [](Graph& g) { return engine_call(g, "loss_scale", false, [&] { return g.loss_scale(); }); })
      .def_property_readonly("skipped_steps",
                             [](Graph& g) { return engine_call(g, "skipped_steps", false, [&] { return g.skipped_steps(); }); })
      .def("activation", [](Graph& g, int i) {
        auto r = engine_call(g, "activation", false, [&] {
          const Tensor& t = g.activation(i);
          LB_CHECK(t.ptr, "activation: node ", i, " has not been computed");
          return std::make_pair(t.shape, std::vector<float>(t.data(), t.data() + t.size()));
        });
        return copy_out(r.first, r.second);
      })
      .def("count_params", &Graph::count_params)
      .def_property("step", [](Graph& g) { return engine_call(g, "step", false, [&] { return g.step(); }); },
                    [](Graph& g, uint64_t s) { engine_call(g, "step", true, [&] { g.set_step(s); }); })
      .def_property_readonly("learning_rate",
                             [](Graph& g) { return engine_call(g, "learning_rate", false, [&] { return g.current_lr(); }); })
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
        engine_call(g, "compile", true, [&] { g.compile(loss, o, s); });
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
        Metrics r = engine_call(g, "fit", true, [&] {
          return g.fit_epoch(x.data(), n, t.labels, t.targets, batch, shuffle, seed, epoch, cb);
        });
        return metrics(r);
      })
      .def("evaluate", [](Graph& g, const farray& x, const py::object& y, int64_t batch) {
        int64_t n = check_x(g, x, "evaluate");
        Targets t = check_y(g, y, n, "evaluate");
        auto r = engine_call(g, "evaluate", false, [&] { return g.evaluate(x.data(), n, t.labels, t.targets, batch); });
        return metrics(r);
      })
      .def("predict", [](Graph& g, const farray& x, int64_t batch) {
        int64_t n = check_x(g, x, "predict");
        farray out = output_array(g, n);
        float* o = out.mutable_data();
        engine_call(g, "predict", false, [&] { g.predict(x.data(), n, batch, o); });
        return out;
      })
      .def("inference_fusions", [](Graph& g) {
        return engine_call(g, "inference_fusions", false, [&] { return g.inference_fusions(); });
      })
      .def("predict_timed", [](Graph& g, const farray& x, int64_t batch) {
        int64_t n = check_x(g, x, "profile");
        farray out = output_array(g, n);
        float* o = out.mutable_data();
        std::vector<double> seconds;
        engine_call(g, "profile", false, [&] { g.predict_timed(x.data(), n, batch, o, seconds); });
        return py::make_tuple(out, seconds);
      })
      .def("compute_gradients", [](Graph& g, const farray& x, const py::object& y) {
        int64_t n = check_x(g, x, "compute_gradients");
        Targets t = check_y(g, y, n, "compute_gradients");
        return engine_call(g, "compute_gradients", true,
                           [&] { return g.compute_gradients(x.data(), n, t.labels, t.targets); });
      })
      .def("forward", [](Graph& g, const farray& x, bool training) {
        int64_t n = check_x(g, x, "forward");
        farray out = output_array(g, n);
        float* o = out.mutable_data();
        engine_call(g, "forward", training, [&] { g.forward_batch(x.data(), n, training, o); });
        return out;
      }, py::arg("x"), py::arg("training") = false)
      .def("backward", [](Graph& g, const farray& dy, std::vector<int64_t> x_shape) {
        LB_CHECK(!x_shape.empty() && dy.ndim() >= 1 && dy.shape(0) == x_shape[0] &&
                     dy.size() == dy.shape(0) * numel(g.nodes()[size_t(g.output())].out_shape) &&
                     numel(Shape(x_shape.begin() + 1, x_shape.end())) == numel(g.nodes()[0].out_shape),
                 "backward: dy must have the output's shape and x_shape the input's, for the last forward batch");
        farray dx(x_shape);
        float* o = dx.mutable_data();
        engine_call(g, "backward", true, [&] {
          LB_CHECK(g.has_forward(), "backward: call forward first");
          LB_CHECK(dy.size() == g.activation(g.output()).size(),
                   "backward: dy does not match the last forward batch");
          g.backward_batch(dy.data(), o);
        });
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
        engine_call(g, "forward", training || update_stats, [&] { g.forward_inputs(ptrs, n, training, update_stats, o); });
        return out;
      }, py::arg("xs"), py::arg("training") = false, py::arg("update_stats") = false,
         "Forward of a graph with any number of inputs (one array per add_input, in order).")
      .def("backward_inputs", [](Graph& g, const farray& dy) {
        const auto& ins = g.inputs();
        LB_CHECK(!ins.empty() && g.has_forward(), "backward: call forward_inputs first");
        const Shape& y = g.activation(g.output()).shape;
        LB_CHECK(Shape(dy.shape(), dy.shape() + dy.ndim()) == y, "backward: expected dy of shape ", shape_str(y),
                 " (the last forward's output), got ", shape_str(Shape(dy.shape(), dy.shape() + dy.ndim())));
        std::vector<farray> dxs;
        std::vector<float*> ptrs;
        for (int i : ins) {
          dxs.emplace_back(g.activation(i).shape);
          ptrs.push_back(dxs.back().mutable_data());
        }
        engine_call(g, "backward", true, [&] { g.backward_inputs(dy.data(), ptrs); });
        return dxs;
      }, py::arg("dy"), "Input gradients (one per input) for output gradient dy of the last forward; "
         "parameter gradients are left in get_grad.");
}
