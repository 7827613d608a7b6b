#include "lowbit/graph.hpp"

#include <chrono>
#include <cmath>
#include <numeric>

#include <unistd.h>

#include "lowbit/engine_thread.hpp"
#include "lowbit/rng.hpp"

namespace lowbit {

namespace {
// The element count, or -1 beyond 2^40 (4 TiB of float32): larger sizes are refused
// before any int64 product of them can overflow.
int64_t bounded_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s)
    if (d < 0 || __builtin_mul_overflow(n, d, &n) || n > (int64_t(1) << 40)) return -1;
  return n;
}
}  // namespace

int Graph::add_input(const Shape& shape) {
  LB_CHECK(!shape.empty() && shape.size() <= 3, "Input: expected shape (C, H, W) or (features,), got ",
           shape_str(shape));
  for (auto d : shape) LB_CHECK(d >= 1, "Input: expected positive dimensions, got ", shape_str(shape));
  LB_CHECK(bounded_numel(shape) > 0, "Input: shape ", shape_str(shape), " has more than 2^40 elements");
  nodes_.push_back({"input", nullptr, {}, shape});
  inputs_.push_back(int(nodes_.size()) - 1);
  return inputs_.back();
}

int Graph::input(const char* what) const {
  LB_CHECK(inputs_.size() == 1, what, ": only one Input is supported by the training engine, the graph has ",
           inputs_.size());
  return inputs_[0];
}

int Graph::add(const std::string& kind, const std::vector<int>& inputs, const Config& cfg_in) {
  std::vector<Shape> in;
  for (int i : inputs) {
    LB_CHECK(i >= 0 && i < int(nodes_.size()), kind, ": input node ", i, " does not exist");
    in.push_back(nodes_[size_t(i)].out_shape);
  }
  Config cfg = cfg_in;
  cfg.ints["node_id"] = {int64_t(nodes_.size())};
  // A conv/dense with Binary or Int weights and no input format behind a quantizer node
  // reads values already on that node's grid: +-1 (S1's BinAct) or a Fixed with a given
  // MSB (S1's 8-bit QuantAct). At inference it may then run the xnor-popcount or int8
  // kernel on them, as a layer with that input format would ("values"; encoding on-grid
  // values is exact whatever the node's rounding, hence nearest).
  auto fmt = [&](const char* role) {
    auto it = cfg.formats.find(role);
    return it == cfg.formats.end() || it->second.kind == FormatKind::float32 ? nullptr : &it->second;
  };
  const Format* wf = fmt("weight");
  if ((kind == "conv2d" || kind == "dense") && inputs.size() == 1 && !fmt("input") && wf &&
      (wf->kind == FormatKind::binary || wf->kind == FormatKind::integer)) {
    const Op* prev = nodes_[size_t(inputs[0])].op.get();
    const Format* v = prev ? prev->output_format() : nullptr;
    if (v && v->kind == FormatKind::binary && v->scale == ScaleMode::none) cfg.formats["values"] = *v;
    if (v && v->kind == FormatKind::fixed && !v->msb_auto) {
      Format on_grid = *v;
      on_grid.rounding = Rounding::nearest, on_grid.overflow = Overflow::saturate;
      cfg.formats["values"] = on_grid;
    }
  }
  auto op = make_op(kind, cfg, in);
  Shape out = op->out_shape;
  LB_CHECK(bounded_numel(out) > 0, kind, ": output shape ", shape_str(out), " is empty or has more than 2^40 elements");
  // one tensor larger than the machine's memory could only end in the out-of-memory killer
  const double ram = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  auto fits = [&](const Shape& s, const char* what) {
    const int64_t n = bounded_numel(s);
    LB_CHECK(n >= 0 && (ram <= 0 || 4.0 * double(n) <= ram), kind, ": ", what, " of shape ", shape_str(s), " needs ",
             4.0 * double(n) / 1e9, " GB, more than this machine's ", ram / 1e9, " GB of memory");
  };
  fits(out, "the output of one sample");
  for (auto& p : op->params) fits(p.value.shape, p.name.c_str());
  nodes_.push_back({kind, std::move(op), inputs, out});
  output_ = int(nodes_.size()) - 1;
  return output_;
}

void Graph::set_output(int id) {
  LB_CHECK(id >= 0 && id < int(nodes_.size()), "Model: output node ", id, " does not exist");
  output_ = id;
  fusion_plan_.clear();
}

void Graph::init_params(uint64_t seed) {
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].op) {
      nodes_[i].op->init_params(splitmix64(seed * 1000003ull + i));
      for (auto& p : nodes_[i].op->params) ++p.version;
    }
  seed_ = seed;
  step_ = 0;
  if (opt_) opt_->reset();
}

std::vector<Param*> Graph::params(bool trainable_only) {
  std::vector<Param*> r;
  for (auto& n : nodes_)
    if (n.op)
      for (auto& p : n.op->params)
        if (!trainable_only || p.trainable) r.push_back(&p);
  return r;
}

int64_t Graph::count_params() const {
  int64_t c = 0;
  for (auto& n : nodes_)
    if (n.op) c += n.op->count_params();
  return c;
}

void Graph::compile(const std::string& loss, const OptimConfig& opt, const ScheduleConfig& sched) {
  LB_CHECK(loss == "categorical_crossentropy" || loss == "mse", "compile: unknown loss '", loss,
           "' (expected 'categorical_crossentropy' or 'mse')");
  LB_CHECK(output_ > input("compile"), "compile: the model has no layers");
  LB_CHECK(nodes_[size_t(output_)].out_shape.size() == 1, "compile: expected a flat output (classes,), got ",
           shape_str(nodes_[size_t(output_)].out_shape));
  loss_ = loss;
  opt_ = std::make_unique<Optimizer>(opt);
  sched_ = sched;
  base_lr_ = lr_ = opt.lr;
}

Shape Graph::with_batch(const Shape& s, int64_t n) const {
  Shape r{n};
  r.insert(r.end(), s.begin(), s.end());
  return r;
}

bool Graph::fused_softmax_ce() const {
  return loss_ == "categorical_crossentropy" && nodes_[size_t(output_)].kind == "softmax";
}

void Graph::to_layout(const Tensor& from, Tensor& to, bool blocked) {
  to.resize(from.shape);
  to.blocked = blocked;
  if (from.blocked == blocked) {
    std::memcpy(to.data(), from.data(), size_t(from.size()) * 4);
    return;
  }
  relayout_.copy(mem(user_md(from), from), mem(user_md(to), to));
}

const Tensor& Graph::plain(const Tensor& t) {
  if (!t.blocked) return t;
  to_layout(t, plain_out_, false);
  return plain_out_;
}

void Graph::plan_fusions() {
  std::vector<int> uses(nodes_.size(), 0);
  for (const auto& node : nodes_)
    for (int j : node.inputs) ++uses[size_t(j)];
  fusion_plan_.assign(nodes_.size(), 0);
  quant_reader_.assign(nodes_.size(), -1);
  for (int i = 0; i <= output_; ++i) {
    const auto& node = nodes_[size_t(i)];
    if (node.op && node.inputs.size() == 1) {  // a quantizer node read by i alone
      const int j = node.inputs[0];
      const Op* q = nodes_[size_t(j)].op.get();
      if (q && nodes_[size_t(j)].kind == "quantize" && uses[size_t(j)] == 1 && q->output_format())
        fusion_plan_[size_t(j)] = kQuantPassed, quant_reader_[size_t(j)] = i;
    }
    if (!node.op || node.kind != "relu" || node.inputs.size() != 1) continue;
    const int j = node.inputs[0];
    const auto& from = nodes_[size_t(j)];
    if (!from.op || uses[size_t(j)] != 1) continue;
    const bool fold = from.op->can_fuse_relu();
    fusion_plan_[size_t(i)] = fold ? kReluFolded : kReluInPlace;
    if (fold) fusion_plan_[size_t(j)] = kAppliesRelu;
  }
}

void Graph::run_forward(const std::vector<const Tensor*>& xs, const StepContext& ctx) {
  const int64_t n = xs[0]->dim(0);
  const bool fuse = fuse_ && !ctx.training;
  if (fuse && fusion_plan_.size() != nodes_.size()) plan_fusions();
  act_.resize(nodes_.size());
  plain_in_.resize(nodes_.size());
  used_src_.resize(nodes_.size());
  for (size_t k = 0; k < inputs_.size(); ++k)
    act_[size_t(inputs_[k])] = Tensor::borrow(const_cast<float*>(xs[k]->data()), xs[k]->shape);
  for (int i = 0; i <= output_; ++i) {
    auto& node = nodes_[size_t(i)];
    if (!node.op) continue;
    const auto t0 = node_seconds_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    forward_node(i, n, fuse ? fusion_plan_[size_t(i)] : kAsIs, ctx);
    if (node_seconds_)
      (*node_seconds_)[size_t(i)] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
}

// Node i's forward; plan (fusion_plan_'s value, kAsIs outside predict/evaluate) says whether
// it is a ReLU over its producer's output, an op that applies the ReLU after it, or a
// quantizer node whose reader may quantize its input itself (Op::quantizes_input_as).
void Graph::forward_node(int i, int64_t n, int8_t plan, const StepContext& ctx) {
  auto& node = nodes_[size_t(i)];
  const bool pass = plan == kQuantPassed &&
                    nodes_[size_t(quant_reader_[size_t(i)])].op->quantizes_input_as(*node.op->output_format());
  if (plan == kReluFolded || plan == kReluInPlace || pass) {  // act_[i] is the producer's output
    Tensor& from = act_[size_t(node.inputs[0])];
    act_[size_t(i)] = Tensor::borrow(from.data(), from.shape);
    act_[size_t(i)].blocked = from.blocked;
    used_src_[size_t(i)].assign(1, &from);
    if (plan == kReluInPlace) node.op->forward(used_src_[size_t(i)], act_[size_t(i)], ctx);
    return;
  }
  const bool accepts = node.op->accepts_blocked();
  bool mixed = false;  // several inputs (Add) must share one layout
  for (int j : node.inputs) mixed |= act_[size_t(j)].blocked != act_[size_t(node.inputs[0])].blocked;
  auto& used = used_src_[size_t(i)];
  used.clear();
  plain_in_[size_t(i)].resize(node.inputs.size());
  for (size_t k = 0; k < node.inputs.size(); ++k) {
    const Tensor* t = &act_[size_t(node.inputs[k])];
    if (t->blocked && (!accepts || mixed)) {
      to_layout(*t, plain_in_[size_t(i)][k], false);
      t = &plain_in_[size_t(i)][k];
    }
    used.push_back(t);
  }
  act_[size_t(i)].resize(with_batch(node.out_shape, n));
  act_[size_t(i)].blocked = accepts;  // permission; the op clears it when it writes NCHW
  node.op->fused_relu = plan == kAppliesRelu;
  node.op->forward(used, act_[size_t(i)], ctx);
  node.op->fused_relu = false;
}

// Reverse-mode sweep. The first consumer to reach a producer writes its gradient in
// place; later consumers (a DAG fan-out) write to scratch and add, so nothing needs
// zeroing beforehand.
void Graph::run_backward(int from, bool want_input_grad) {
  grad_.resize(nodes_.size());
  grad_set_.assign(nodes_.size(), 0);
  grad_set_[size_t(from)] = 1;
  std::vector<Tensor*> dsrc;
  std::vector<int> pending;
  std::vector<char> taken_v;
  grad_[size_t(from)].blocked = act_[size_t(from)].blocked;
  for (int i = from; i >= 0; --i) {
    auto& node = nodes_[size_t(i)];
    if (!node.op || !grad_set_[size_t(i)]) continue;
    const auto& src = used_src_[size_t(i)];
    dsrc.clear(), pending.assign(node.inputs.size(), 0), taken_v.assign(node.inputs.size(), 0);
    if (scratch_.size() < node.inputs.size()) scratch_.resize(node.inputs.size());
    if (dplain_.size() < node.inputs.size()) dplain_.resize(node.inputs.size());
    for (size_t k = 0; k < node.inputs.size(); ++k) {
      int j = node.inputs[k];
      if (!nodes_[size_t(j)].op && !want_input_grad) {  // a graph input
        dsrc.push_back(nullptr);
        continue;
      }
      bool taken = grad_set_[size_t(j)];
      for (size_t q = 0; q < k; ++q) taken |= node.inputs[q] == j;
      taken_v[k] = taken;
      const Tensor& a = act_[size_t(j)];
      if (src[k] != &a) {  // the op saw an NCHW copy: its gradient comes back NCHW
        dplain_[k].resize(a.shape);
        dplain_[k].blocked = false;
        pending[k] = 3;
        dsrc.push_back(&dplain_[k]);
        continue;
      }
      Tensor& t = taken ? scratch_[k] : grad_[size_t(j)];
      t.resize(a.shape);
      t.blocked = a.blocked;
      pending[k] = taken ? 2 : 1;
      dsrc.push_back(&t);
    }
    node.op->backward(src, act_[size_t(i)], grad_[size_t(i)], dsrc);
    for (size_t k = 0; k < node.inputs.size(); ++k) {
      int j = node.inputs[k];
      if (pending[k] == 3) {  // back to the producer's layout
        to_layout(dplain_[k], taken_v[k] ? scratch_[k] : grad_[size_t(j)], act_[size_t(j)].blocked);
        pending[k] = taken_v[k] ? 2 : 1;
      }
      if (pending[k] == 2) {
        float* g = grad_[size_t(j)].data();
        const float* s = scratch_[k].data();
        const int64_t m = grad_[size_t(j)].size();
        for (int64_t e = 0; e < m; ++e) g[e] += s[e];
      }
      if (pending[k]) grad_set_[size_t(j)] = 1;
    }
  }
}

void Graph::check_targets(int64_t n, const int64_t* labels, const float* targets) const {
  const int64_t K = nodes_[size_t(output_)].out_shape[0];
  if (labels)
    for (int64_t i = 0; i < n; ++i)
      LB_CHECK(labels[i] >= 0 && labels[i] < K, "labels: expected class indices in [0, ", K, "), got ", labels[i],
               " at position ", i);
  if (targets)
    for (int64_t i = 0; i < n * K; ++i)
      LB_CHECK(std::isfinite(targets[i]), "targets: expected finite values, got ", targets[i]);
}

// Categorical cross-entropy is computed from logits (log-sum-exp) when the model ends
// in softmax - the fused, stable form: dL/dz = (softmax(z) - t) / N. Without a final
// softmax the output is taken as logits. MSE: mean over all N*K of (y - t)^2.
double Graph::loss_and_grad(int64_t n, const int64_t* labels, const float* targets, Tensor* grad,
                            int64_t* correct) {
  const int64_t K = nodes_[size_t(output_)].out_shape[0];
  const bool ce = loss_ == "categorical_crossentropy";
  const int loss_node = fused_softmax_ce() ? nodes_[size_t(output_)].inputs[0] : output_;
  const Tensor& z = act_[size_t(loss_node)];
  const Tensor& y = act_[size_t(output_)];
  if (grad) grad->resize(z.shape);
  double total = 0;
  int64_t hits = 0;
  std::vector<double> p(static_cast<size_t>(K));
  for (int64_t i = 0; i < n; ++i) {
    const float* zi = z.data() + i * K;
    const float* yi = y.data() + i * K;
    auto t = [&](int64_t k) -> double { return targets ? targets[i * K + k] : (labels[i] == k ? 1.0 : 0.0); };
    int64_t arg = 0;
    for (int64_t k = 1; k < K; ++k)
      if (yi[k] > yi[arg]) arg = k;
    int64_t truth = 0;
    if (labels) truth = labels[i];
    else
      for (int64_t k = 1; k < K; ++k)
        if (targets[i * K + k] > targets[i * K + truth]) truth = k;
    hits += arg == truth;
    if (ce) {
      double m = zi[0];
      for (int64_t k = 1; k < K; ++k) m = std::max(m, double(zi[k]));
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += (p[size_t(k)] = std::exp(double(zi[k]) - m));
      double lse = m + std::log(s);
      double tsum = 0;
      for (int64_t k = 0; k < K; ++k) {
        double tk = t(k);
        total += tk * (lse - zi[k]);
        tsum += tk;
      }
      if (grad)
        for (int64_t k = 0; k < K; ++k)
          grad->data()[i * K + k] = float((p[size_t(k)] / s * tsum - t(k)) / double(n));
    } else {
      for (int64_t k = 0; k < K; ++k) {
        double d = double(yi[k]) - t(k);
        total += d * d / double(K);
        if (grad) grad->data()[i * K + k] = float(2.0 * d / double(n * K));
      }
    }
  }
  if (correct) *correct = hits;
  return total / double(n);
}

Metrics Graph::fit_epoch(const float* x, int64_t n, const int64_t* labels, const float* targets, int64_t batch,
                         bool shuffle, uint64_t seed, int64_t epoch, const Progress& progress) {
  LB_CHECK(opt_, "fit: call compile() first");
  LB_CHECK(batch >= 1, "fit: expected batch_size >= 1, got ", batch);
  LB_CHECK(n >= 1, "fit: expected at least one sample");
  check_targets(n, labels, targets);
  if (fitting_) throw std::runtime_error("fit: this model is already being trained (fit() in another thread)");
  fitting_ = true;
  struct Clear {  // however the epoch ends
    bool& f;
    ~Clear() { f = false; }
  } clear{fitting_};
  const Shape& in = nodes_[size_t(input("fit"))].out_shape;
  const int64_t inner = numel(in), K = nodes_[size_t(output_)].out_shape[0];
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  if (shuffle) {  // Fisher-Yates, a pure function of (seed, epoch)
    Rng rng(seed * 0x9E3779B97F4A7C15ull + uint64_t(epoch));
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[size_t(i)], order[rng.below(uint64_t(i + 1))]);
  }
  lr_ = scheduled_lr(sched_, base_lr_, double(epoch));
  auto ps = params(true);
  std::vector<int64_t> lab;
  std::vector<float> tgt;
  Metrics m;
  double loss_sum = 0;
  int64_t hits_sum = 0;
  auto last = std::chrono::steady_clock::now();
  for (int64_t b0 = 0; b0 < n; b0 += batch) {
    const int64_t nb = std::min(batch, n - b0);
    batch_x_.resize(with_batch(in, nb));
    if (labels) lab.resize(size_t(nb));
    if (targets) tgt.resize(size_t(nb * K));
#pragma omp parallel for schedule(static) if (nb * inner > 65536)
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t s = order[size_t(b0 + i)];
      std::memcpy(batch_x_.data() + i * inner, x + s * inner, size_t(inner) * 4);
      if (labels) lab[size_t(i)] = labels[s];
      if (targets) std::memcpy(tgt.data() + i * K, targets + s * K, size_t(K) * 4);
    }
    StepContext ctx{seed_ ^ seed, step_, true, true};
    run_forward({&batch_x_}, ctx);
    int64_t hits = 0;
    int from = fused_softmax_ce() ? nodes_[size_t(output_)].inputs[0] : output_;
    double l = loss_and_grad(nb, labels ? lab.data() : nullptr, targets ? tgt.data() : nullptr, &loss_grad_, &hits);
    grad_.resize(nodes_.size());
    std::swap(grad_[size_t(from)], loss_grad_);  // buffers swap, nothing is copied or freed
    auto diverged = [&](const std::string& what) {
      return Diverged(str("fit diverged: ", what, " in epoch ", epoch + 1, ", batch ", b0 / batch + 1, " of ",
                          (n + batch - 1) / batch, " (counting from 1; training step ", step_,
                          "); training stopped with the weights from before this batch. Lower the learning "
                          "rate, or check the scale of the data"));
    };
    if (!std::isfinite(l)) throw diverged(str("the loss became ", l));
    if (loss_scale_ != 1.0) {
      const float sc = float(loss_scale_);
      float* gd = grad_[size_t(from)].data();
      for (int64_t e = 0, m = grad_[size_t(from)].size(); e < m; ++e) gd[e] *= sc;
    }
    run_backward(from, false);
    const bool finite = all_finite(ps, true);
    // non-finite gradients: with dynamic loss scaling the step is skipped and the scale halved
    if (!finite && !dynamic_scale_)
      throw diverged(loss_scale_ == 1.0 ? std::string("the gradients became NaN or infinite")
                                        : str("the gradients overflowed with a static loss scale of ", loss_scale_));
    if (unscale_and_check(ps, finite)) {
      if (sched_.per_step) lr_ = scheduled_lr(sched_, base_lr_, double(epoch) + double(b0) / double(n));
      save_undo(ps);
      opt_->step(ps, lr_);
      if (!all_finite(ps, false)) {
        restore_undo(ps);
        throw diverged("the update made weights NaN or infinite");
      }
    }
    ++step_;
    loss_sum += l * double(nb);
    hits_sum += hits;
    m.seen += nb;
    auto now = std::chrono::steady_clock::now();
    if (progress && (std::chrono::duration<double>(now - last).count() > 0.2 || b0 + nb >= n)) {
      progress(m.seen, loss_sum / double(m.seen), double(hits_sum) / double(m.seen));
      last = now;
    }
    engine_yield();  // calls from other threads (predict, get_weights) run between batches
  }
  m.loss = loss_sum / double(m.seen);
  m.accuracy = double(hits_sum) / double(m.seen);
  return m;
}

void Graph::set_loss_scaling(bool dynamic, double init, int64_t growth_interval) {
  LB_CHECK(init > 0 && std::isfinite(init), "loss scaling: expected a positive finite scale, got ", init);
  LB_CHECK(growth_interval >= 1, "loss scaling: expected growth_interval >= 1, got ", growth_interval);
  dynamic_scale_ = dynamic;
  loss_scale_ = init;
  growth_interval_ = growth_interval;
  good_steps_ = skipped_ = 0;
}

void Graph::set_scaler_state(const std::vector<double>& s) {
  LB_CHECK(s.size() == 3 && s[0] > 0 && std::isfinite(s[0]) && s[1] >= 0 && s[2] >= 0,
           "loss scaler state: expected (scale > 0, good steps >= 0, skipped steps >= 0)");
  loss_scale_ = s[0];
  good_steps_ = int64_t(s[1]);
  skipped_ = int64_t(s[2]);
}

bool Graph::all_finite(const std::vector<Param*>& ps, bool grads) const {
  bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok)
  for (size_t k = 0; k < ps.size(); ++k) {
    const Tensor& t = grads ? ps[k]->grad : ps[k]->value;
    const float* v = t.data();
    bool f = true;
    for (int64_t i = 0, m = t.size(); i < m; ++i) f &= std::isfinite(v[i]);
    ok = ok && f;
  }
  return ok;
}

// Divide the gradients by the loss scale; with dynamic scaling, report (false) and
// shrink the scale when any gradient overflowed, so the step is skipped.
bool Graph::unscale_and_check(const std::vector<Param*>& ps, bool finite) {
  if (loss_scale_ == 1.0 && !dynamic_scale_) return true;
  if (!finite) {
    loss_scale_ = std::max(loss_scale_ * 0.5, 1.0 / 65536.0);
    good_steps_ = 0;
    ++skipped_;
    return false;
  }
  const float inv = float(1.0 / loss_scale_);
  for (auto* p : ps) {
    float* g = p->grad.data();
    for (int64_t i = 0, n = p->grad.size(); i < n; ++i) g[i] *= inv;
  }
  if (dynamic_scale_ && ++good_steps_ >= growth_interval_) {
    loss_scale_ = std::min(loss_scale_ * 2.0, 16777216.0);
    good_steps_ = 0;
  }
  return true;
}

// The optimizer updates in place; these copies (one memcpy per weight and slot) let a
// step whose result overflowed be undone.
void Graph::save_undo(const std::vector<Param*>& ps) {
  std::vector<Tensor*> ts;
  for (auto* p : ps) ts.push_back(&p->value);
  for (auto& slots : opt_->state)
    for (auto& s : slots) ts.push_back(&s);
  undo_.resize(ts.size());
  for (size_t k = 0; k < ts.size(); ++k) undo_[k].assign(ts[k]->data(), ts[k]->data() + ts[k]->size());
  undo_t_ = opt_->t;
}

void Graph::restore_undo(const std::vector<Param*>& ps) {
  if (undo_.size() == ps.size()) opt_->state.clear();  // the slots did not exist before this step
  size_t k = 0;
  for (auto* p : ps) {
    std::memcpy(p->value.data(), undo_[k++].data(), size_t(p->value.size()) * 4);
    ++p->version;
  }
  for (auto& slots : opt_->state)
    for (auto& s : slots) std::memcpy(s.data(), undo_[k++].data(), size_t(s.size()) * 4);
  opt_->t = undo_t_;
}

namespace {
// Sets a member for the duration of a call and restores it (exceptions included).
template <class T>
struct Scoped {
  T& ref;
  T old;
  Scoped(T& r, T v) : ref(r), old(r) { ref = v; }
  ~Scoped() { ref = old; }
};
}  // namespace

Metrics Graph::evaluate(const float* x, int64_t n, const int64_t* labels, const float* targets, int64_t batch) {
  LB_CHECK(batch >= 1, "evaluate: expected batch_size >= 1, got ", batch);
  LB_CHECK(n >= 1, "evaluate: expected at least one sample");
  check_targets(n, labels, targets);
  Scoped<bool> fused(fuse_, true);
  const Shape& in = nodes_[size_t(input("evaluate"))].out_shape;
  const int64_t inner = numel(in), K = nodes_[size_t(output_)].out_shape[0];
  Metrics m;
  double loss_sum = 0;
  int64_t hits_sum = 0;
  for (int64_t b0 = 0; b0 < n; b0 += batch) {
    const int64_t nb = std::min(batch, n - b0);
    Tensor xb = Tensor::borrow(const_cast<float*>(x + b0 * inner), with_batch(in, nb));
    run_forward({&xb}, StepContext{0, 0, false, false});
    int64_t hits = 0;
    loss_sum += loss_and_grad(nb, labels ? labels + b0 : nullptr, targets ? targets + b0 * K : nullptr, nullptr, &hits) *
                double(nb);
    hits_sum += hits;
    m.seen += nb;
  }
  m.loss = loss_sum / double(m.seen);
  m.accuracy = double(hits_sum) / double(m.seen);
  return m;
}

void Graph::predict(const float* x, int64_t n, int64_t batch, float* out) {
  LB_CHECK(batch >= 1, "predict: expected batch_size >= 1, got ", batch);
  Scoped<bool> fused(fuse_, true);
  const Shape& in = nodes_[size_t(input("predict"))].out_shape;
  const int64_t inner = numel(in), K = numel(nodes_[size_t(output_)].out_shape);
  for (int64_t b0 = 0; b0 < n; b0 += batch) {
    const int64_t nb = std::min(batch, n - b0);
    Tensor xb = Tensor::borrow(const_cast<float*>(x + b0 * inner), with_batch(in, nb));
    run_forward({&xb}, StepContext{0, 0, false, false});
    std::memcpy(out + b0 * K, plain(act_[size_t(output_)]).data(), size_t(nb * K) * 4);
  }
}

void Graph::predict_timed(const float* x, int64_t n, int64_t batch, float* out, std::vector<double>& seconds) {
  seconds.assign(nodes_.size(), 0.0);
  Scoped<std::vector<double>*> timed(node_seconds_, &seconds);
  predict(x, n, batch, out);
}

double Graph::compute_gradients(const float* x, int64_t n, const int64_t* labels, const float* targets) {
  LB_CHECK(n >= 1, "compute_gradients: expected at least one sample");
  check_targets(n, labels, targets);
  const Shape& in = nodes_[size_t(input("compute_gradients"))].out_shape;
  Tensor xb = Tensor::borrow(const_cast<float*>(x), with_batch(in, n));
  run_forward({&xb}, StepContext{seed_, step_, true, false});
  int from = fused_softmax_ce() ? nodes_[size_t(output_)].inputs[0] : output_;
  double l = loss_and_grad(n, labels, targets, &loss_grad_, nullptr);
  grad_.resize(nodes_.size());
  std::swap(grad_[size_t(from)], loss_grad_);
  run_backward(from, false);
  return l;
}

void Graph::forward_batch(const float* x, int64_t n, bool training, float* out) {
  input("forward");
  forward_inputs({x}, n, training, false, out);
}

void Graph::backward_batch(const float* diff_out, float* diff_x) {
  input("backward");
  backward_inputs(diff_out, {diff_x});
}

void Graph::forward_inputs(const std::vector<const float*>& xs, int64_t n, bool training, bool update_stats,
                           float* out) {
  LB_CHECK(xs.size() == inputs_.size(), "forward: the graph has ", inputs_.size(), " inputs, got ", xs.size(),
           " arrays");
  LB_CHECK(n >= 1, "forward: expected at least one sample");
  batch_xs_.resize(xs.size());
  std::vector<const Tensor*> bound;
  for (size_t k = 0; k < xs.size(); ++k) {
    batch_xs_[k].resize(with_batch(nodes_[size_t(inputs_[k])].out_shape, n));
    std::memcpy(batch_xs_[k].data(), xs[k], size_t(batch_xs_[k].size()) * 4);
    bound.push_back(&batch_xs_[k]);
  }
  run_forward(bound, StepContext{seed_, step_, training, update_stats});
  std::memcpy(out, plain(act_[size_t(output_)]).data(), size_t(act_[size_t(output_)].size()) * 4);
}

void Graph::backward_inputs(const float* diff_out, const std::vector<float*>& diff_xs) {
  LB_CHECK(!act_.empty() && act_[size_t(output_)].ptr, "backward: call forward first");
  LB_CHECK(diff_xs.size() == inputs_.size(), "backward: the graph has ", inputs_.size(), " inputs, got ",
           diff_xs.size(), " gradient buffers");
  grad_.resize(nodes_.size());
  const Tensor& y = act_[size_t(output_)];
  Tensor d = Tensor::borrow(const_cast<float*>(diff_out), y.shape);
  to_layout(d, grad_[size_t(output_)], y.blocked);
  run_backward(output_, true);
  for (size_t k = 0; k < inputs_.size(); ++k) {
    const size_t j = size_t(inputs_[k]);
    if (grad_set_[j]) std::memcpy(diff_xs[k], grad_[j].data(), size_t(grad_[j].size()) * 4);
    else std::memset(diff_xs[k], 0, size_t(act_[j].size()) * 4);  // the output does not depend on it
  }
}

}  // namespace lowbit
