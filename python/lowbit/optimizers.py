"""Optimizers (fp32 master weights, updates in C++) and learning-rate schedules.

Defaults follow Keras. ``weight_decay`` is the coupled L2 term of PyTorch's SGD/Adam
(``g += weight_decay * w``). A schedule passed as ``learning_rate`` is applied per epoch, or
before every step with ``per_step=True``.
"""
from __future__ import annotations

__all__ = ["Optimizer", "SGD", "Adam", "Adadelta", "RMSprop", "Bop", "get",
           "Schedule", "StepDecay", "MultiStepDecay", "ExponentialDecay", "CosineDecay"]

import numpy as np

from .serial import Recorded


class Schedule(Recorded):
    """A learning rate as a function of the epoch. ``per_step=False`` (default) changes the
    rate between epochs, as PyTorch's per-epoch ``scheduler.step()``; ``per_step=True``
    evaluates it before every optimizer step at the fractional epoch
    ``epoch + images done / images per epoch``, as Keras' schedules that count steps: a
    ``CosineDecay(lr, t_max=2, per_step=True)`` of a two-epoch run decays smoothly to
    ``min_lr`` within the run, which settles short runs' final accuracy."""
    name = "constant"

    def __init__(self, initial_learning_rate, per_step=False):
        self.initial_learning_rate = float(initial_learning_rate)
        if not isinstance(per_step, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}: per_step must be True or False, got {per_step!r}")
        self.per_step = bool(per_step)

    def config(self):
        return {"name": self.name, **self._config(), "per_step": self.per_step}

    def _config(self):
        return {}

    def __call__(self, epoch):
        """The learning rate at a 0-based ``epoch`` (fractional for ``per_step``
        schedules), as the engine computes it."""
        from . import _core
        return _core.scheduled_lr(self.config(), self.initial_learning_rate,
                                  float(epoch) if self.per_step else float(int(epoch)))


class StepDecay(Schedule):
    """lr * gamma ** (epoch // step_size)."""
    name = "step"

    def __init__(self, initial_learning_rate, step_size, gamma=0.1, per_step=False):
        super().__init__(initial_learning_rate, per_step)
        if int(step_size) < 1:
            raise ValueError(f"StepDecay: expected step_size >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def _config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class MultiStepDecay(Schedule):
    """lr * gamma ** (number of milestones <= epoch)."""
    name = "multistep"

    def __init__(self, initial_learning_rate, milestones, gamma=0.1, per_step=False):
        super().__init__(initial_learning_rate, per_step)
        self.milestones, self.gamma = [int(m) for m in milestones], float(gamma)

    def _config(self):
        return {"milestones": self.milestones, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """lr * gamma ** epoch."""
    name = "exponential"

    def __init__(self, initial_learning_rate, gamma, per_step=False):
        super().__init__(initial_learning_rate, per_step)
        self.gamma = float(gamma)

    def _config(self):
        return {"gamma": self.gamma}


class CosineDecay(Schedule):
    """min_lr + (lr - min_lr) * (1 + cos(pi * min(epoch, t_max) / t_max)) / 2."""
    name = "cosine"

    def __init__(self, initial_learning_rate, t_max, min_lr=0.0, per_step=False):
        super().__init__(initial_learning_rate, per_step)
        if int(t_max) < 1:
            raise ValueError(f"CosineDecay: expected t_max >= 1, got {t_max}")
        self.t_max, self.min_lr = int(t_max), float(min_lr)

    def _config(self):
        return {"t_max": self.t_max, "min_lr": self.min_lr}


class Optimizer(Recorded):
    name = None

    def __init__(self, learning_rate, **hyper):
        if isinstance(learning_rate, Schedule):
            self.schedule = learning_rate
        else:
            lr = float(learning_rate)
            if not lr > 0:
                raise ValueError(f"{type(self).__name__}: expected learning_rate > 0, got {learning_rate}")
            self.schedule = Schedule(lr)
        self.hyper = hyper

    @property
    def learning_rate(self):
        return self.schedule.initial_learning_rate

    def config(self):
        return dict(name=self.name, learning_rate=self.learning_rate, **self.hyper)

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(learning_rate, momentum=float(momentum), nesterov=bool(nesterov),
                         weight_decay=float(weight_decay))


class Adam(Optimizer):
    name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
        super().__init__(learning_rate, beta_1=float(beta_1), beta_2=float(beta_2), epsilon=float(epsilon),
                         weight_decay=float(weight_decay))


class Adadelta(Optimizer):
    name = "adadelta"

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=0.0):
        super().__init__(learning_rate, rho=float(rho), epsilon=float(epsilon), weight_decay=float(weight_decay))


class RMSprop(Optimizer):
    name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, weight_decay=0.0):
        super().__init__(learning_rate, rho=float(rho), epsilon=float(epsilon), weight_decay=float(weight_decay))


_BY_NAME = {"sgd": SGD, "adam": Adam, "adadelta": Adadelta, "rmsprop": RMSprop}


def get(opt):
    """An Optimizer from an instance or a Keras-style name ('adam', 'sgd', ...)."""
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, str) and opt.lower() in _BY_NAME:
        return _BY_NAME[opt.lower()]()
    raise ValueError(f"unknown optimizer {opt!r} (expected one of {', '.join(_BY_NAME)} or an Optimizer)")


class Bop(Optimizer):
    """Binary optimizer (Helwegen et al. 2019) for weights read through a Binary format:
    m = (1 - gamma) m + gamma g; flip w where |m| > threshold and sign(m) = sign(w).
    Every other parameter is updated by ``fp_optimizer`` (as Larq's CaseOptimizer)."""
    name = "bop"

    def __init__(self, threshold=1e-8, gamma=1e-4, fp_optimizer=None):
        fp = get(fp_optimizer or "adam")
        if not 0 < float(gamma) <= 1:
            raise ValueError(f"Bop: expected gamma in (0, 1], got {gamma}")
        if float(threshold) < 0:
            raise ValueError(f"Bop: expected threshold >= 0, got {threshold}")
        self.fp_optimizer, self.threshold, self.gamma = fp, float(threshold), float(gamma)
        self.schedule = fp.schedule
        self.hyper = {}

    def config(self):
        return dict(self.fp_optimizer.config(), bop=1, bop_gamma=self.gamma, bop_threshold=self.threshold)
