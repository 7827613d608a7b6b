// Optimizers over fp32 master weights, and epoch-wise learning-rate schedules.
#pragma once
#include <string>
#include <vector>

#include "ops.hpp"

namespace lowbit {

struct OptimConfig {
  std::string name = "sgd";  // sgd, adam, adadelta, rmsprop
  double lr = 0.01, momentum = 0.0, weight_decay = 0.0;
  bool nesterov = false;
  double beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-7, rho = 0.95;
  // Bop (Helwegen et al. 2019) for parameters read through a Binary format:
  //   m = (1 - gamma) m + gamma g;  w = -w where |m| > threshold and sign(m) = sign(w)
  bool bop = false;
  double bop_gamma = 1e-4, bop_threshold = 1e-8;
};

struct ScheduleConfig {
  std::string name = "constant";  // constant, step, multistep, exponential, cosine
  double gamma = 0.1;              // step/multistep factor, exponential decay per epoch
  int64_t step_size = 30;
  std::vector<int64_t> milestones;
  int64_t t_max = 1;  // cosine: epochs to reach min_lr
  double min_lr = 0.0;
  // false: the rate changes between epochs (PyTorch's scheduler.step() per epoch);
  // true: before every optimizer step, at the fractional epoch epoch + done/n (Keras'
  // schedules count steps), so that a cosine of a two-epoch run decays smoothly to min_lr
  bool per_step = false;
};

// The learning rate at a (fractional, 0-based) epoch.
double scheduled_lr(const ScheduleConfig& s, double base_lr, double epoch);

struct Optimizer {
  OptimConfig cfg;
  int64_t t = 0;                         // steps taken (Adam bias correction)
  std::vector<std::vector<Tensor>> state;  // per parameter: slots
  explicit Optimizer(OptimConfig c);
  void reset() { t = 0, state.clear(); }
  void step(const std::vector<Param*>& params, double lr);
  // slots per parameter: SGD momentum v (1 with momentum); Adam m, v; Adadelta a, d;
  // RMSprop a; at least 1 with Bop (its moving average m)
  int slots() const;
  // Restore t and the slots (saved from `state`; empty = not started) for `params`,
  // checking their count and shapes.
  void set_state(int64_t steps, std::vector<std::vector<Tensor>> slots_, const std::vector<Param*>& params);
};

}  // namespace lowbit
