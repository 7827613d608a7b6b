// The model graph: nodes in topological order (a node's inputs are created before it),
// sequential or a general DAG. The executor keeps one activation and one gradient
// buffer per node, reused between steps; the epoch loop runs here, not in Python.
// Training, evaluation and prediction take one input; forward_inputs/backward_inputs
// run graphs with several (a multi-input layer called on arrays).
#pragma once
#include <functional>
#include <memory>
#include <stdexcept>

#include "dnnl_util.hpp"
#include "ops.hpp"
#include "optim.hpp"

namespace lowbit {

struct Node {
  std::string kind;  // "input" or an op kind
  std::unique_ptr<Op> op;
  std::vector<int> inputs;
  Shape out_shape;  // per sample
  std::vector<Kernel> op_kernels() const { return op ? op->kernels() : std::vector<Kernel>{}; }
};

struct Metrics {
  double loss = 0, accuracy = 0;
  int64_t seen = 0;
};

// fit stopped because the loss, the gradients or the updated weights became NaN or
// infinite; the weights are those from before the batch (Python: FloatingPointError).
struct Diverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// progress(done_samples, running_loss, running_accuracy)
using Progress = std::function<void(int64_t, double, double)>;

class Graph {
 public:
  int add_input(const Shape& shape);
  int add(const std::string& kind, const std::vector<int>& inputs, const Config& cfg);
  void set_output(int id);
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<int>& inputs() const { return inputs_; }
  int output() const { return output_; }

  void init_params(uint64_t seed);
  std::vector<Param*> params(bool trainable_only);
  int64_t count_params() const;

  void compile(const std::string& loss, const OptimConfig& opt, const ScheduleConfig& sched);

  // One epoch over x (N, *input_shape) with integer labels or float targets (N, K).
  Metrics fit_epoch(const float* x, int64_t n, const int64_t* labels, const float* targets, int64_t batch,
                    bool shuffle, uint64_t seed, int64_t epoch, const Progress& progress);
  Metrics evaluate(const float* x, int64_t n, const int64_t* labels, const float* targets, int64_t batch);
  void predict(const float* x, int64_t n, int64_t batch, float* out);
  // predict, timing every node: seconds[i] = node i's share of the call (its forward and
  // the layout conversions of its inputs), for a per-layer profile in the network's own
  // context (caches, layouts) rather than of each layer run alone.
  void predict_timed(const float* x, int64_t n, int64_t batch, float* out, std::vector<double>& seconds);
  // Per node, what predict/evaluate do with it (the values of fusion_plan_ below).
  enum : int8_t { kAsIs = 0, kReluFolded = 1, kReluInPlace = 2, kAppliesRelu = 3, kQuantPassed = 4 };
  std::vector<int8_t> inference_fusions() {
    if (fusion_plan_.size() != nodes_.size()) plan_fusions();
    return fusion_plan_;
  }

  // Building blocks exposed for gradient checks: loss and parameter gradients for one
  // batch (training-mode forward, running statistics untouched).
  double compute_gradients(const float* x, int64_t n, const int64_t* labels, const float* targets);
  // forward to the output, then backward from an arbitrary output gradient;
  // returns the gradient with respect to the input.
  void forward_batch(const float* x, int64_t n, bool training, float* out);
  void backward_batch(const float* diff_out, float* diff_x);
  // The same for a graph with any number of inputs (xs[k] feeds inputs()[k], all with
  // n samples; copied, so the backward can read them later). update_stats: a
  // training-mode forward also moves BatchNorm's running statistics.
  void forward_inputs(const std::vector<const float*>& xs, int64_t n, bool training, bool update_stats,
                      float* out);
  void backward_inputs(const float* diff_out, const std::vector<float*>& diff_xs);

  // Loss scaling (mixed precision): the loss gradient is multiplied by `scale` before the
  // backward and the parameter gradients divided by it before the update. Dynamic: a step
  // whose gradients overflow is skipped and the scale halved; after `growth_interval`
  // good steps it doubles (as PyTorch's GradScaler).
  void set_loss_scaling(bool dynamic, double init, int64_t growth_interval = 2000);
  double loss_scale() const { return loss_scale_; }
  int64_t skipped_steps() const { return skipped_; }
  // activations of node i after the last forward (calibration)
  const Tensor& activation(int i) { return plain(act_.at(size_t(i))); }
  // whether a forward has run since the graph was built (a backward needs its activations)
  bool has_forward() const { return output_ >= 0 && size_t(output_) < act_.size() && act_[size_t(output_)].ptr; }

  std::string loss_name() const { return loss_; }
  double current_lr() const { return lr_; }
  // Training state beyond the weights, for an exact resume: the optimizer (null before
  // compile) and the loss scaler (scale, good steps since the last change, skipped steps).
  Optimizer* optimizer() { return opt_.get(); }
  std::vector<double> scaler_state() const { return {loss_scale_, double(good_steps_), double(skipped_)}; }
  void set_scaler_state(const std::vector<double>& s);
  bool fitting() const { return fitting_; }  // inside fit_epoch (calls between batches see it)
  uint64_t step() const { return step_; }
  void set_step(uint64_t s) { step_ = s; }

 private:
  std::vector<Node> nodes_;
  std::vector<int> inputs_;
  int output_ = -1;
  int input(const char* what) const;  // the one input of training / evaluation / prediction
  std::string loss_ = "categorical_crossentropy";
  std::unique_ptr<Optimizer> opt_;
  ScheduleConfig sched_;
  double base_lr_ = 0, lr_ = 0;
  uint64_t step_ = 0, seed_ = 0;
  bool fitting_ = false;
  bool dynamic_scale_ = false;
  double loss_scale_ = 1.0;
  int64_t growth_interval_ = 2000, good_steps_ = 0, skipped_ = 0;
  bool all_finite(const std::vector<Param*>& ps, bool grads) const;
  bool unscale_and_check(const std::vector<Param*>& ps, bool finite);
  // copies of the weights and optimizer slots before an update, to undo one that overflowed
  std::vector<std::vector<float>> undo_;
  int64_t undo_t_ = 0;
  void save_undo(const std::vector<Param*>& ps);
  void restore_undo(const std::vector<Param*>& ps);
  std::vector<Tensor> act_, grad_;
  std::vector<double>* node_seconds_ = nullptr;  // set during predict_timed
  // Inference fusions, on in predict and evaluate: per node kAsIs, or for a ReLU node
  // kReluFolded (applied by its producer, a batch norm or add, marked kAppliesRelu) or
  // kReluInPlace (run over its producer's output); only where that output has no other
  // reader. A quantizer node (BinAct, a Fixed QuantAct) with one reader, quant_reader_, is
  // kQuantPassed: it hands its input through whenever that reader quantizes its input the
  // same way itself (a binary or int8 kernel that runs). Planned after the graph changes.
  bool fuse_ = false;
  std::vector<int8_t> fusion_plan_;
  std::vector<int> quant_reader_;
  void plan_fusions();
  void forward_node(int i, int64_t n, int8_t plan, const StepContext& ctx);
  std::vector<char> grad_set_;
  std::vector<Tensor> scratch_, dplain_;
  // layouts: NCHW copies of blocked inputs for ops that need NCHW, what each op saw
  std::vector<std::vector<Tensor>> plain_in_;
  std::vector<std::vector<const Tensor*>> used_src_;
  Staged relayout_;
  Tensor plain_out_;
  void to_layout(const Tensor& from, Tensor& to, bool blocked);
  const Tensor& plain(const Tensor& t);  // t itself, or an NCHW copy in plain_out_
  Tensor batch_x_, loss_grad_;
  std::vector<Tensor> batch_xs_;

  Shape with_batch(const Shape& s, int64_t n) const;
  void run_forward(const std::vector<const Tensor*>& xs, const StepContext& ctx);
  void run_backward(int from, bool want_input_grad);
  bool fused_softmax_ce() const;
  // loss over a batch; writes dL/d(loss input) when grad != nullptr
  double loss_and_grad(int64_t n, const int64_t* labels, const float* targets, Tensor* grad, int64_t* correct);
  void check_targets(int64_t n, const int64_t* labels, const float* targets) const;
};

}  // namespace lowbit
