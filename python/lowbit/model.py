"""Model and Sequential: build the C++ graph from layers and drive it Keras-style.

The epoch loop (shuffle, batch, forward, backward, update, metrics) runs in C++ with
the GIL released; Python only draws the progress bar (a callback at most ~5 times a
second) and calls user callbacks between epochs.

Input conversion rule: x may be any real numeric array; it is converted once to
C-contiguous float32 (no copy when it already is one). Labels are integer classes
(any integer dtype, or floats holding whole numbers) or a (N, classes) float array of
targets (one-hot or soft). NaN/inf in x, labels out of range, or a wrong shape raise
ValueError; non-numeric data raises TypeError.

Divergence: when the loss, the gradients or the updated weights become NaN or infinite,
fit raises FloatingPointError (``lb.Diverged``) naming the epoch and batch, with the
weights from before that batch (dynamic loss scaling still skips such a step instead).

Threads: one model may be used from several threads. The engine runs one call at a time
on its own thread (see cpp/include/lowbit/engine_thread.hpp); while fit runs in one
thread, predict, evaluate, get_weights and summary from another run between two batches,
and calls that would change the model (compile, fit, set_weights, load_weights,
calibrate, save, save_weights) raise RuntimeError until fit returns.
"""
from __future__ import annotations

import re
import threading
import os
import time

import numpy as np

from . import _core
from . import eager as _eager
from .kernel_table import kernel_table
from . import formats as _formats
from . import optimizers as _optimizers
from . import precision as _precision
from . import serial as _serial
from .callbacks import Callback, History
from .layers import ROLES, Layer, SymbolicTensor, _InputLayer

__all__ = ["Model", "Sequential", "load_model"]

LOSSES = ("categorical_crossentropy", "mse")
_LOSS_ALIASES = {"categorical_crossentropy": "categorical_crossentropy",
                 "sparse_categorical_crossentropy": "categorical_crossentropy",
                 "crossentropy": "categorical_crossentropy",
                 "mse": "mse", "mean_squared_error": "mse"}


def as_input(x, what="x"):
    """Convert ``x`` by the documented rule: real numbers -> C-contiguous float32, finite."""
    a = _formats.as_float32(x, what)
    bad = _core.count_nonfinite(a) if a.size else 0
    if bad:
        raise ValueError(f"{what}: expected finite values, found {bad} NaN/inf entries")
    return a


def as_target(y, what="y"):
    """Integer labels -> int64 (N,); 2-D float targets -> float32 (N, K)."""
    a = np.asarray(y)
    if a.dtype.kind not in "iuf" or a.dtype.kind == "b":
        raise TypeError(f"{what}: expected integer class labels or float targets, got dtype {a.dtype}")
    if a.ndim == 2 and a.shape[1] == 1 and a.dtype.kind in "iu":
        a = a[:, 0]
    if a.ndim == 1:
        if a.dtype.kind == "f":
            if not np.isfinite(a).all() or not np.all(a == np.round(a)):
                raise ValueError(f"{what}: float labels must be whole class numbers; pass one-hot targets as (N, K)")
        return np.ascontiguousarray(a, dtype=np.int64)
    if a.ndim == 2:
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: expected finite targets")
        return a
    raise ValueError(f"{what}: expected labels of shape (N,) or targets of shape (N, classes), got {a.shape}")


def _check_sizes(layer, cfg, in_shapes):
    """Refuse arguments so large that the engine's int64 size arithmetic could overflow:
    every size an op derives (output, kernel, MACs) is at most a product of its input
    size and its integer arguments, so that product (each |v| + 2) must stay below 2^62."""
    bound = sum(int(np.prod(s, dtype=object)) for s in in_shapes) or 1

    def ints(v):
        if isinstance(v, (bool, np.bool_)):
            return
        if isinstance(v, (int, np.integer)):
            yield int(v)
        elif isinstance(v, (tuple, list)):
            for e in v:
                yield from ints(e)

    args = {k: v for k, v in cfg.items() if k != "formats" and any(True for _ in ints(v))}
    for v in args.values():
        for i in ints(v):
            bound *= abs(i) + 2
    if bound >= 2 ** 62:
        raise ValueError(f"{layer.name}: arguments {args} are too large for an input of shape "
                         f"{tuple(in_shapes[0]) if in_shapes else ()}")


def _batch_size(b, what):
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
        raise ValueError(f"{what}: expected batch_size >= 1, got {b!r}")
    return int(b)


class Model:
    """A DAG of layers: ``x = lb.Input((1, 28, 28)); y = lb.layers.Dense(10)(...); lb.Model(x, y)``.
    ``precision``: the default of ``compile(precision=...)`` (a preset name or an
    ``lb.Precision``), e.g. set by the model zoo."""

    def __init__(self, inputs=None, outputs=None, name=None, seed=None, precision=None):
        self.name = name or type(self).__name__.lower()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed < 2 ** 64):
            raise ValueError(f"{self.name}: expected seed to be an integer in [0, 2**64), got {seed!r}")
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2 ** 63))
        _precision.get(precision)  # unknown names fail here, not at compile
        self.default_precision = precision
        self.stop_training = False
        self._graph = None
        self._compiled = None
        self._precision = None
        self._calibrated = False
        self._epochs_done = 0
        self._fit_seed = None  # the seed of the last fit: the default of the next
        self._metrics = None
        self._lock = threading.RLock()  # Python-side state; the engine serialises its own calls
        self._fit_thread = None  # ident of the thread inside fit()
        self._packed_from = None  # the file of lb.load_packed: an inference model
        if inputs is not None:
            self._build_from(inputs, outputs)

    # ----- construction -------------------------------------------------------------
    def _build_from(self, inputs, outputs):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 1:
                raise ValueError(f"{self.name}: exactly one Input is supported, got {len(inputs)}")
            inputs = inputs[0]
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError(f"{self.name}: exactly one output is supported, got {len(outputs)}")
            outputs = outputs[0]
        if not isinstance(inputs, SymbolicTensor) or not isinstance(inputs.layer, _InputLayer):
            raise TypeError(f"{self.name}: inputs must come from lb.Input(shape)")
        if not isinstance(outputs, SymbolicTensor):
            raise TypeError(f"{self.name}: outputs must be a symbolic tensor")
        order, seen = [], set()

        def visit(t):  # depth-first post-order = a topological order
            if id(t) in seen:
                return
            seen.add(id(t))
            for u in t.inputs:
                visit(u)
            order.append(t)

        visit(outputs)
        if inputs not in order:
            raise ValueError(f"{self.name}: the output does not depend on the given input")
        g = _core.Graph()
        node_of, layers, used, built_ops = {}, [], set(), {}
        for t in order:
            layer = t.layer
            if isinstance(layer, _InputLayer):
                if t is not inputs:
                    raise ValueError(f"{self.name}: the output depends on an Input that was not passed to Model")
                node_of[id(t)] = g.add_input(list(layer.input_shape))
                continue
            if id(layer) in used:
                raise ValueError(f"{self.name}: layer {layer.name} is called twice (weight sharing is not supported)")
            used.add(id(layer))
            ins = [node_of[id(u)] for u in t.inputs]
            nodes, ops = [], layer.ops()
            built_ops[id(layer)] = repr(ops)
            for kind, cfg in ops:
                _check_sizes(layer, cfg, [g.node_shape(i) for i in ins])
                try:
                    nid = g.add(kind, ins, cfg)
                except ValueError as e:
                    raise ValueError(f"{layer.name}: {e}") from None
                nodes.append(nid)
                ins = [nid]
            node_of[id(t)] = nodes[-1]
            layers.append((layer, nodes))
        g.set_output(node_of[id(outputs)])
        g.init_params(self.seed)
        for layer, nodes in layers:  # weights a layer built on arrays come along
            _eager.attach(layer, g, nodes)
        for layer, nodes in layers:  # frozen layers: the optimizer skips their parameters
            if not getattr(layer, "trainable", True):
                for n in nodes:
                    for k, (_, _, trainable) in enumerate(g.node_params(n)):
                        if trainable:
                            g.set_trainable(n, k, False)
        self._graph, self._layers, self._io, self._order = g, layers, (inputs, outputs), order
        self._built_ops = built_ops  # each layer's ops as the graph has them (what _rebuild compares)
        self._layer_inputs = {id(t.layer): [node_of[id(u)] for u in t.inputs] for t in order if t.inputs}
        self.input_shape = tuple(inputs.layer.input_shape)
        self.output_shape = tuple(g.node_shape(g.output))
        self._max_numel = max(int(np.prod(g.node_shape(i), dtype=object)) for i in range(g.num_nodes))

    @property
    def layers(self):
        return [layer for layer, _ in self._layers] if self._graph else []

    def topology(self):
        """The model's graph with every layer after its inputs, the input first:
        ``(nodes, output)``, ``nodes[i] = (layer, [positions of its inputs])`` (the input
        layer has none), ``output`` the position of the model's output. Enough to rebuild
        the model in another framework (``benchmarks/bench_models.py`` does, in torch)."""
        self._require_built()
        index = {id(t): i for i, t in enumerate(self._order)}
        return [(t.layer, [index[id(u)] for u in t.inputs]) for t in self._order], index[id(self._io[1])]

    def _not_during_fit(self, what):
        t = self._fit_thread
        if t is not None and t != threading.get_ident():
            raise RuntimeError(f"{what}: fit() is running on model {self.name} in another thread; wait for it to "
                               "return (predict, evaluate, get_weights and summary may be called meanwhile)")

    def _not_packed(self, what):
        if self._packed_from is not None:
            raise ValueError(f"{what}: model {self.name} was loaded from the packed inference file "
                             f"{self._packed_from}, whose weights are the quantized ones (the latent fp32 weights "
                             "that training updates are not in it); train the model saved with model.save instead")

    def _require_built(self):
        if self._graph is None:
            raise ValueError(f"{self.name}: the model is not built (give the first layer an input_shape)")

    def _param_slots(self, trainable_only=False):
        slots = []
        for _, nodes in self._layers:
            for nid in nodes:
                for k, (_, _, trainable) in enumerate(self._graph.node_params(nid)):
                    if trainable or not trainable_only:
                        slots.append((nid, k))
        return slots

    # ----- weights ------------------------------------------------------------------
    def count_params(self):
        self._require_built()
        return int(self._graph.count_params())

    def get_weights(self):
        """Weights in Keras order: per layer kernel, bias; BN gamma, beta, moving_mean, moving_variance.
        Conv kernels are OIHW (filters, in_channels/groups, kh, kw); Dense kernels (in, units).
        During a fit in another thread, all come from the same batch boundary."""
        self._require_built()
        return self._graph.get_params(self._param_slots())

    def set_weights(self, weights):
        """Set all weights (every shape is checked before any is changed)."""
        with self._lock:
            self._not_during_fit("set_weights")
            self._require_built()
            slots = self._param_slots()
            if len(weights) != len(slots):
                raise ValueError(f"set_weights: expected {len(slots)} arrays, got {len(weights)}")
            self._graph.set_params(slots, [as_input(w, "set_weights") for w in weights])

    def save_weights(self, path):
        """Write the weights, the training step and the quantizer state to ``path``
        atomically (a lowbit weights file; format in ``lowbit.serial``)."""
        with self._lock:
            self._not_during_fit("save_weights")
            self._require_built()
            _serial.write(path, "lowbit-weights", {}, self._state_arrays(), "save_weights")

    def load_weights(self, path):
        """Read weights, step and quantizer state from a file of ``save_weights`` or
        ``save``. Everything is checked against the model first: a truncated, corrupted,
        foreign or mismatching file raises ValueError and leaves the model as it was."""
        with self._lock:
            self._not_during_fit("load_weights")
            self._require_built()
            self._read_state(_serial.Reader(path, "load_weights"))()

    # The state beside the architecture, as named arrays (see lowbit.serial): weights,
    # step; per kernel layer the calibrated MSB of each Fixed precision format, and per
    # engine node the quantizers' tracked MSB, stochastic rounding counter, hysteresis
    # signs and running activation range (Int); optionally the optimizer's slots.
    def _state_arrays(self, optimizer=False):
        g = self._graph
        out = {f"w{i:04d}": w for i, w in enumerate(self.get_weights())}
        out["step"] = np.array(g.step, dtype=np.uint64)
        for i, layer in enumerate(self._kernel_layers()):
            for role, f in getattr(layer, "_precision_formats", {}).items():
                if isinstance(f, _formats.Fixed) and getattr(f, "_calibrated", False):
                    out[f"qmsb_{i}_{role}"] = np.array(f.msb, np.int32)
        for _, nodes in self._layers:
            for n in nodes:
                for k, (msb, counter, signs, running, range_) in enumerate(g.get_quant_state(n)):
                    out[f"qs_{n}_{k}"] = np.array([msb, counter], np.int64)
                    out[f"qh_{n}_{k}"] = signs
                    out[f"qr_{n}_{k}"] = np.array(running, np.float32)
                    out[f"qrr_{n}_{k}"] = np.array(range_, np.float32)
        if optimizer:
            for p, slots in enumerate(g.optimizer_state()[1]):
                for s, a in enumerate(slots):
                    out[f"opt_{p:04d}_{s}"] = a
        return out

    def _read_state(self, r, optimizer=False):
        """Check every array of reader ``r`` against this model; returns a function that
        applies them (nothing changes before all checks passed)."""
        g, names = self._graph, set(r.names())
        slots = self._param_slots()
        owner = {n: layer.name for layer, nodes in self._layers for n in nodes}
        count = sum(1 for k in names if re.fullmatch(r"w\d{4}", k))
        if count != len(slots):
            r.fail(f"holds {count} weight arrays, expected {len(slots)} for model {self.name}")
        weights = []
        for i, (n, k) in enumerate(slots):
            pname, shape, _ = g.node_params(n)[k]
            w = r.array(f"w{i:04d}", shape, np.float32, f"{owner[n]} {pname}")
            if not np.isfinite(w).all():
                r.fail(f"array w{i:04d} ({owner[n]} {pname}) holds NaN or infinite values")
            weights.append(w)
        used = {f"w{i:04d}" for i in range(len(slots))}
        step = None
        if "step" in names:
            step = int(r.array("step", (), np.uint64))
            used.add("step")
        elif r.header["version"] >= 1:
            r.fail("missing array step")

        def msb_ok(m):
            return -126 <= m <= 127

        msbs = {}
        kernel = self._kernel_layers()
        for key in sorted(k for k in names if k.startswith("qmsb_")):
            m = re.fullmatch(r"qmsb_(\d+)_([a-z_]+)", key)
            i, role = (int(m[1]), m[2]) if m else (-1, "")
            f = getattr(kernel[i], "_precision_formats", {}).get(role) if 0 <= i < len(kernel) else None
            if not isinstance(f, _formats.Fixed):
                r.fail(f"array {key}: the model's precision has no Fixed {role or '?'} format for kernel layer {i}")
            v = int(r.array(key, (), np.int32))
            if not msb_ok(v):
                r.fail(f"array {key}: MSB {v} outside [-126, 127]")
            msbs[(i, role)] = v
            used.add(key)
        qstates = {}
        for _, nodes in self._layers:
            for n in nodes:
                have = g.get_quant_state(n)
                present = [k for k in range(len(have)) if f"qs_{n}_{k}" in names]
                if not present:
                    continue
                if len(present) != len(have):
                    r.fail(f"node {n} ({owner[n]}) has {len(have)} quantizer states, the file {len(present)}")
                states = []
                for k in range(len(have)):
                    msb, counter = (int(v) for v in r.array(f"qs_{n}_{k}", (2,), np.int64))
                    signs = r.array(f"qh_{n}_{k}", None, np.int8)
                    running = float(r.array(f"qr_{n}_{k}", (), np.float32))
                    lo, hi = 1.0, -1.0  # unset (files written before asymmetric Int kept a range)
                    if f"qrr_{n}_{k}" in names:
                        lo, hi = (float(v) for v in r.array(f"qrr_{n}_{k}", (2,), np.float32))
                        used.add(f"qrr_{n}_{k}")
                    if not (msb_ok(msb) or msb == -1000) or counter < 0 or signs.ndim != 1 or \
                            not np.isin(signs, (-1, 0, 1)).all() or not (running >= 0 or running == -1) or \
                            not ((lo, hi) == (1.0, -1.0) or (lo <= 0 <= hi and np.isfinite(lo + hi))):
                        r.fail(f"quantizer state {n}.{k} ({owner[n]}) is out of range")
                    states.append((msb, counter, signs, running, (lo, hi)))
                    used |= {f"qs_{n}_{k}", f"qh_{n}_{k}", f"qr_{n}_{k}"}
                qstates[n] = states
        opt_slots = None
        if optimizer:
            trainable = self._param_slots(True)
            per = g.optimizer_slots
            found = sorted(k for k in names if k.startswith("opt_"))
            if found:
                if len(found) != len(trainable) * per:
                    r.fail(f"holds {len(found)} optimizer arrays, the optimizer keeps {per} for each of "
                           f"{len(trainable)} trainable parameters")
                opt_slots = []
                for p, (n, k) in enumerate(trainable):
                    pname, shape, _ = g.node_params(n)[k]
                    opt_slots.append([r.array(f"opt_{p:04d}_{s}", shape, np.float32, f"optimizer slot of "
                                              f"{owner[n]} {pname}") for s in range(per)])
                    used |= {f"opt_{p:04d}_{s}" for s in range(per)}
        elif r.header["format"] == "lowbit-model":  # load_weights from a model file: not its optimizer
            used |= {k for k in names if re.fullmatch(r"opt_\d{4}_\d+", k)}
        extra = sorted(names - used)
        if extra:
            r.fail(f"unexpected arrays for model {self.name}: {', '.join(extra[:5])}")

        def apply():
            if msbs:
                self._set_calibrated_msbs(msbs)  # may rebuild the engine graph
            self._graph.set_params(slots, weights)
            if step is not None:
                self._graph.step = step
            for n, states in qstates.items():
                self._graph.set_quant_state(n, states)
            return opt_slots
        return apply

    def _set_calibrated_msbs(self, msbs):
        changed = False
        kernel = self._kernel_layers()
        for (i, role), msb in msbs.items():
            f = kernel[i]._precision_formats[role]
            changed |= f.msb != msb or not getattr(f, "_calibrated", False)
            f._q.set_msb(msb)
            f._config["msb"], f._calibrated = msb, True
        if changed:  # the engine's formats carry the static MSB: rebuild with the loaded ones
            self._rebuild()
        self._calibrated = True

    # ----- whole model --------------------------------------------------------------
    def save(self, path):
        """Write the whole model to one file, atomically: architecture (layers with their
        arguments, formats, precision), weights, quantizer state, optimizer and its state,
        loss scaler, schedule position (epochs done), step and seeds (the shuffling and
        dropout masks are functions of seed, epoch and step). ``lb.load_model(path)``
        restores it, and ``fit`` then continues exactly where this model stopped. The
        format (versioned, no code in it) is described in ``lowbit.serial``."""
        with self._lock:
            self._not_during_fit("save")
            self._require_built()
            header = {"model": self._architecture(), "compile": None, "training": {
                "epochs": self._epochs_done, "step": int(self._graph.step), "fit_seed": self._fit_seed,
                "calibrated": bool(self._calibrated)}}
            if self._compiled is not None:
                opt, loss = self._compiled
                header["compile"] = {k: _serial.encode(v, f"save: compile {k}") for k, v in (
                    ("optimizer", opt), ("loss", loss), ("metrics", self._metrics), ("precision", self._precision))}
                header["training"]["optimizer_steps"] = int(self._graph.optimizer_state()[0])
                header["training"]["loss_scaler"] = list(self._graph.scaler_state)
            _serial.write(path, "lowbit-model", header, self._state_arrays(optimizer=self._compiled is not None),
                          "save")

    def export_packed(self, path):
        """Write a deployable inference file: the architecture and precision, and each
        weight in its number format (1-bit packed Binary, Int/Fixed codes, fp16/bf16 bit
        patterns; see ``lowbit.packed``). ``summary()``'s memory figure is the bytes of
        its weight arrays; ``lb.load_packed(path)`` predicts exactly what this model
        predicts. Returns {array name: bytes} of the weight arrays."""
        from .packed import export_packed
        return export_packed(self, path)

    def _architecture(self):
        def layer_config(layer):
            cfg = _serial.encode(layer, f"save: layer {layer.name}")
            cfg["kwargs"]["name"] = layer.name
            return cfg

        arch = {"class": type(self).__name__, "name": self.name, "seed": self.seed,
                "input_shape": list(self.input_shape),
                # the formats the layers have now: lb.quantize sets them after construction
                "layer_formats": {layer.name: {r: _serial.encode(getattr(layer, f"{r}_format"), f"save: {layer.name}")
                                               for r in ROLES} for layer in self._kernel_layers()}}
        if isinstance(self, Sequential):
            arch["sequential"] = [layer_config(layer) for layer in self._stack]
            return arch
        nodes, arch["output"] = self.topology()
        arch["nodes"] = [{"input": list(layer.input_shape), "name": layer.name} if isinstance(layer, _InputLayer)
                         else {"layer": layer_config(layer), "inputs": inputs} for layer, inputs in nodes]
        arch["input"] = 0
        return arch

    # ----- training -----------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss="categorical_crossentropy", metrics=None, precision=None):
        """``loss``: 'categorical_crossentropy' (fused with a final softmax, computed from
        logits; without a final softmax the outputs are taken as logits) or 'mse'.
        ``precision``: a preset name ('fp32', 'fp16', 'bf16', 'fixed16', 'fixed8', 'int8',
        'binary', 'w1a8', 'fw16bw32', 'fw16bw16') or an ``lb.Precision`` - see
        ``lowbit.precision``. Changing the precision rebuilds the engine graph; weights are
        kept, optimizer state starts afresh, and layers' ``trainable`` flags take effect."""
        with self._lock:
            self._not_during_fit("compile")
            self._compile(optimizer, loss, metrics, precision)

    def _compile(self, optimizer, loss, metrics, precision):
        if not isinstance(loss, str) or loss.lower() not in _LOSS_ALIASES:
            raise ValueError(f"compile: unknown loss {loss!r} (expected one of {', '.join(LOSSES)})")
        for m in metrics or []:
            if m not in ("accuracy", "acc"):
                raise ValueError(f"compile: unknown metric {m!r} (only 'accuracy' is supported)")
        opt = _optimizers.get(optimizer)
        self._compiled = (opt, _LOSS_ALIASES[loss.lower()])
        self._metrics = list(metrics) if metrics else None
        self._precision = _precision.get(self.default_precision if precision is None else precision)
        self._calibrated = False
        self._assign_precision()
        if self._graph is not None:
            self._rebuild()

    def _apply_compile(self):
        opt, loss = self._compiled
        self._graph.compile(loss, opt.config(), opt.schedule.config())
        ls = self._precision.loss_scale if self._precision else None
        if ls == "dynamic":
            self._graph.set_loss_scaling(True, 2.0 ** 15)
        elif ls is not None:
            self._graph.set_loss_scaling(False, float(ls))
        self._compiled_graph = self._graph

    # ----- precision ----------------------------------------------------------------
    def _kernel_layers(self):
        return [layer for layer in self.layers if hasattr(layer, "weight_format")]

    def _assign_precision(self):
        ks = self._kernel_layers()
        for i, layer in enumerate(ks):
            layer._precision_formats = self._precision.formats_for(i, len(ks)) if self._precision else {}
            quantized = bool(layer._precision_formats) and not (self._precision.exempt_last and i == len(ks) - 1)
            layer._precision_activation = self._precision.activation if quantized else None

    def _quant_states(self):
        """Each layer's ops as built and its nodes' quantizer states (what _rebuild keeps)."""
        return {id(layer): (self._built_ops[id(layer)], [self._graph.get_quant_state(n) for n in nodes])
                for layer, nodes in self._layers}

    def _rebuild(self, states=None, fresh=()):
        """Rebuild the engine graph from the layers (after a format change), keeping the
        weights, and the quantizer states (tracked MSBs and ranges, hysteresis signs) of
        every layer whose ops are unchanged: an Int activation's running range is what
        evaluate quantizes with, and a new graph starts without it. ``states``: those to
        keep (default: the current graph's); layers in ``fresh`` (ids) start afresh."""
        weights, step = self.get_weights(), self._graph.step
        states = self._quant_states() if states is None else states
        self._build_from(*self._io)
        self.set_weights(weights)
        self._graph.step = step
        for layer, nodes in self._layers:
            ops, saved = states.get(id(layer), (None, ()))
            if id(layer) not in fresh and ops == self._built_ops[id(layer)] and len(saved) == len(nodes):
                for n, st in zip(nodes, saved):
                    if st:
                        self._graph.set_quant_state(n, st)
        if self._compiled is not None:
            self._apply_compile()

    def calibrate(self, x, percentile=None):
        """Choose the MSB of every ``Fixed(msb="auto")`` format of the model's precision
        from data (S4 Eq. 11): percentiles of each layer's kernel, input and output in a
        float32 forward pass over ``x`` (a few hundred samples suffice)."""
        with self._lock:
            self._not_during_fit("calibrate")
            return self._calibrate(x, percentile)

    def _calibrate(self, x, percentile):
        p = self._precision
        if p is None:
            return {}
        self._require_built()
        pct = p.calibration_percentile if percentile is None else float(percentile)
        x = as_input(x, "calibrate: x")
        if len(x) == 0 or x.shape[1:] != tuple(self.input_shape):
            raise ValueError(f"calibrate: expected samples of shape {tuple(self.input_shape)}, got x of shape {x.shape}")
        ks = self._kernel_layers()
        saved = {id(layer): layer._precision_formats for layer in ks}
        states = self._quant_states()
        for layer in ks:
            layer._precision_formats = {}
        self._rebuild()  # float32 graph for the statistics
        g = self._graph
        g.forward(x, False)
        chosen, calibrated = {}, set()
        for layer, nodes in self._layers:
            fm = saved.get(id(layer))
            if not fm:
                continue
            data = {"weight": lambda: g.get_param(nodes[0], 0),
                    "input": lambda: g.activation(self._layer_inputs[id(layer)][0]),
                    "output": lambda: g.activation(nodes[0])}
            for role, f in fm.items():
                if isinstance(f, _formats.Fixed) and f.msb_auto and role in data:
                    chosen[(layer.name, role)] = f.calibrate(data[role](), pct)
                    calibrated.add(id(layer))
        for layer in ks:
            layer._precision_formats = saved[id(layer)]
        # back to the quantized graph; layers with a new MSB start afresh (their tracked
        # MSBs), the others keep their states (running Int ranges, hysteresis signs)
        self._rebuild(states, fresh=calibrated)
        self._calibrated = True
        return chosen

    def _maybe_calibrate(self, x):
        if self._precision is not None and self._precision.needs_calibration and not self._calibrated:
            self._calibrate(x[:256], None)

    def _ready(self, x):
        """Before a run over ``x``: calibrate auto-MSB formats once, and hand the
        optimizer and loss to a graph that was (re)built since compile()."""
        self._maybe_calibrate(x)
        if getattr(self, "_compiled_graph", None) is not self._graph:
            self._apply_compile()

    def _prepare(self, x, y, what):
        x = as_input(x, f"{what}: x")
        if self._graph is None:
            self._build_lazily(x.shape[1:])
        if len(x) * self._max_numel >= 2 ** 62:  # the engine's batch buffers are indexed in int64
            raise ValueError(f"{what}: {len(x)} samples with activations of {self._max_numel} values each are too many")
        if y is None:
            return x, None
        y = as_target(y, f"{what}: y")
        if len(y) != len(x):
            raise ValueError(f"{what}: x has {len(x)} samples but y has {len(y)}")
        return x, y

    def _build_lazily(self, shape):
        self._require_built()

    def fit(self, x, y, batch_size=32, epochs=1, validation_data=None, shuffle=True, seed=None, verbose=1,
            callbacks=None, initial_epoch=None):
        """Train; returns a History whose ``.history`` has per-epoch lists ``loss``,
        ``accuracy``, ``val_loss``, ``val_accuracy`` (with validation_data), ``epoch_time``
        and ``learning_rate``. ``seed`` fixes shuffling and dropout masks (default: the
        seed of the previous fit, else the model's seed); they are functions of (seed,
        epoch, step), so a saved and loaded model continues exactly.

        Epochs are counted over the model's life: by default fit trains ``epochs`` more
        after those already done (the epoch index sets the shuffle and the learning-rate
        schedule). ``initial_epoch=k`` as in Keras: train epochs k .. ``epochs`` - 1
        (``epochs`` is then the index to stop at). Callbacks receive that epoch index."""
        with self._lock:
            self._not_during_fit("fit")
            self._not_packed("fit")
            if self._compiled is None:
                raise ValueError("fit: call compile() first")
            batch_size = _batch_size(batch_size, "fit")
            if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
                raise ValueError(f"fit: expected epochs >= 0, got {epochs!r}")
            if initial_epoch is None:
                first, last = self._epochs_done, self._epochs_done + int(epochs)
            elif isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) \
                    or not 0 <= initial_epoch <= epochs:
                raise ValueError(f"fit: expected 0 <= initial_epoch <= epochs, got {initial_epoch!r} and {epochs!r}")
            else:
                first, last = int(initial_epoch), int(epochs)
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                     or not 0 <= seed < 2 ** 64):
                raise ValueError(f"fit: expected seed to be an integer in [0, 2**64), got {seed!r}")
            x, y = self._prepare(x, y, "fit")
            if len(x) == 0:
                raise ValueError("fit: x is empty")
            val = None
            if validation_data is not None:
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) < 2:
                    raise TypeError("fit: validation_data must be a tuple (x_val, y_val)")
                vx, vy = validation_data[:2]
                val = self._prepare(vx, vy, "fit: validation_data")
            history = History()
            cbs = [history] + list(callbacks or [])
            for cb in cbs:
                if not isinstance(cb, Callback):
                    raise TypeError(f"fit: callbacks must be lb.callbacks.Callback instances, got {type(cb).__name__}")
            self._ready(x)
            seed = int(seed) if seed is not None else self._fit_seed if self._fit_seed is not None else self.seed
            self._fit_seed = seed
            self._fit_thread = threading.get_ident()
        try:
            return self._fit_epochs(x, y, batch_size, first, last, val, shuffle, seed, verbose, cbs, history)
        finally:
            self._fit_thread = None

    def _fit_epochs(self, x, y, batch_size, first, last, val, shuffle, seed, verbose, cbs, history):
        for cb in cbs:
            cb.model = self
        self.stop_training = False
        for cb in cbs:
            cb.on_train_begin()
        n = len(x)
        for epoch in range(first, last):
            self._epochs_done = epoch
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            bar = None
            if verbose:
                from tqdm.auto import tqdm
                bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{last}", unit="img", leave=True)

                def progress(done, loss, acc, bar=bar):
                    bar.update(done - bar.n)
                    bar.set_postfix(loss=f"{loss:.4f}", accuracy=f"{acc:.4f}", refresh=False)
            else:
                progress = None
            t0 = time.perf_counter()
            try:
                m = self._graph.fit_epoch(x, y, batch_size, bool(shuffle), seed, epoch, progress)
            except BaseException:
                if bar is not None:
                    bar.close()
                raise
            logs = {"loss": m["loss"], "accuracy": m["accuracy"], "epoch_time": time.perf_counter() - t0,
                    "learning_rate": self._graph.learning_rate}
            self._epochs_done = epoch + 1
            if val is not None:
                v = self._graph.evaluate(val[0], val[1], 256)
                logs["val_loss"], logs["val_accuracy"] = v["loss"], v["accuracy"]
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "learning_rate"})
                bar.close()
            for cb in cbs:
                cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end()
        return history

    def evaluate(self, x, y, batch_size=256, verbose=0):
        """Returns {'loss', 'accuracy'} with inference-mode layers (dropout off, BN running stats)."""
        with self._lock:
            if self._compiled is None:
                raise ValueError("evaluate: call compile() first")
            batch_size = _batch_size(batch_size, "evaluate")
            x, y = self._prepare(x, y, "evaluate")
            self._ready(x)
            return dict(self._graph.evaluate(x, y, batch_size))

    def predict(self, x, batch_size=256):
        with self._lock:
            batch_size = _batch_size(batch_size, "predict")
            x, _ = self._prepare(x, None, "predict")
            self._maybe_calibrate(x)
            return self._graph.predict(x, batch_size)

    def compute_gradients(self, x, y):
        """(loss, gradients in get_weights() order) for one batch: training-mode forward
        (dropout active with the current step's mask), running statistics untouched."""
        with self._lock:
            self._not_during_fit("compute_gradients")
            self._not_packed("compute_gradients")
            if self._compiled is None:
                raise ValueError("compute_gradients: call compile() first")
            x, y = self._prepare(x, y, "compute_gradients")
            self._ready(x)
            loss = self._graph.compute_gradients(x, y)
            return loss, [self._graph.get_grad(n, k) for n, k in self._param_slots()]

    # ----- inspection ---------------------------------------------------------------
    def kernels(self, batch_size=None):
        """Per conv/dense/pool/normalisation layer and pass (forward, backward_data,
        backward_weights, ...), the implementation oneDNN picked on this CPU, e.g.
        ``brg:avx512_core``: a :class:`lowbit.kernel_table.KernelTable` (print it for a table).
        Reports the last run; with `batch_size` (or before any run) it runs an inference
        forward over a zero batch of that size (default 32) first."""
        return kernel_table(self, batch_size)

    def profile(self, x=None, batch_size=None, repeat=10, flush_mb=0):
        """Where ``predict`` spends its time: per layer, the median over ``repeat`` calls of
        its nodes' wall time inside each call (:class:`lowbit.profile.Profile`; print it
        for a table, ``.plot()`` for bars). ``x`` defaults to a random normal batch of
        ``batch_size`` (32) samples; ``batch_size`` defaults to all of ``x`` in one batch.
        Layers run in the network's context - their inputs' layouts, what the previous
        layers left in the caches - so the rows plus ``overhead_ms`` make up a call.
        ``flush_mb > 0`` writes that many MiB before each call (cold caches)."""
        from .profile import profile
        return profile(self, x, batch_size, repeat, flush_mb)

    def summary(self, print_fn=print):
        """The model table (``lowbit.summary.Summary``): per layer output shape,
        parameters, bits per parameter, memory and MACs, at the compiled precision (before
        compile: the default precision). Printed with ``print_fn`` (None: not printed) and
        returned; ``.totals`` holds the sums, ``.to_pandas()`` a DataFrame."""
        from .summary import Summary
        table = Summary(self)
        if print_fn is not None:
            print_fn(str(table))
        return table


class Sequential(Model):
    """A linear stack of layers. Built when the first layer has ``input_shape`` (or at
    the first fit/evaluate/predict from the data's shape)."""

    def __init__(self, layers=None, name=None, seed=None, precision=None):
        super().__init__(name=name, seed=seed, precision=precision)
        self._stack = []
        for layer in layers or []:
            self.add(layer)

    def add(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add: expected a layer, got {type(layer).__name__}")
        if self._graph is not None:
            raise ValueError("Sequential.add: the model is already built")
        self._stack.append(layer)

    def build(self, input_shape=None):
        with self._lock:
            self._not_during_fit("build")
            if not self._stack:
                raise ValueError("Sequential.build: no layers")
            shape = tuple(input_shape) if input_shape is not None else self._stack[0].input_shape
            if shape is None:
                raise ValueError("Sequential.build: no input_shape")
            from .layers import Input
            t = inp = Input(shape)
            for layer in self._stack:
                t = layer(t)
            self._build_from(inp, t)
            if self._compiled is not None:
                self._apply_compile()

    @property
    def layers(self):
        return list(self._stack)

    def _ensure(self):
        if self._graph is None and self._stack and self._stack[0].input_shape is not None:
            self.build()

    def _build_lazily(self, shape):
        self.build(shape)

    def _require_built(self):
        self._ensure()
        super()._require_built()

    def compile(self, *a, **k):
        self._ensure()
        super().compile(*a, **k)

    def _kernel_layers(self):
        return [layer for layer in self._stack if hasattr(layer, "weight_format")]


def load_model(path):
    """The model saved by ``model.save(path)``: architecture, precision, weights,
    quantizer, optimizer and loss-scaler state, epochs done, step and seeds; ``fit``
    continues where the saved model stopped. Nothing in the file is executed: layers,
    formats and optimizers are rebuilt from their recorded arguments (``lowbit.serial``).
    A truncated, corrupted, foreign or newer-version file raises ValueError naming it
    and the problem; a missing one FileNotFoundError."""
    r = _serial.Reader(path, "load_model", expect=("lowbit-model",))
    h = r.header
    try:
        model = _model_from_architecture(h["model"])
        comp = h["compile"]
        if comp is not None:
            model.compile(**{k: _serial.decode(comp[k]) for k in ("optimizer", "loss", "metrics", "precision")})
        tr = h["training"]
        epochs, fit_seed, calibrated = tr["epochs"], tr["fit_seed"], tr["calibrated"]
        if not (isinstance(epochs, int) and epochs >= 0 and (fit_seed is None or isinstance(fit_seed, int))
                and isinstance(calibrated, bool)):
            raise ValueError("bad training state")
        if comp is not None:
            opt_steps, scaler = tr["optimizer_steps"], tr["loss_scaler"]
            if not (isinstance(opt_steps, int) and opt_steps >= 0 and isinstance(scaler, list) and len(scaler) == 3
                    and all(isinstance(v, (int, float)) for v in scaler)):
                raise ValueError("bad optimizer or loss scaler state")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        r.fail(f"corrupted model description ({type(e).__name__}: {e})")
    apply = model._read_state(r, optimizer=comp is not None)
    try:
        opt_slots = apply()
        if comp is not None:
            if getattr(model, "_compiled_graph", None) is not model._graph:
                model._apply_compile()
            model._graph.set_optimizer_state(opt_steps, opt_slots or [])
            model._graph.scaler_state = [float(v) for v in scaler]
    except ValueError as e:
        r.fail(str(e))
    model._epochs_done, model._fit_seed = epochs, fit_seed
    model._calibrated = calibrated or model._calibrated
    return model


def _model_from_architecture(arch):
    from .layers import Input
    classes = _serial._classes()
    if not isinstance(arch, dict) or not isinstance(arch.get("seed"), int):
        raise ValueError("no model description")
    name, seed = arch["name"], arch["seed"]

    formats = arch.get("layer_formats", {})
    if not isinstance(formats, dict):
        raise ValueError("bad layer formats")

    def layer(cfg):
        obj = _serial.decode(cfg, classes)
        if not isinstance(obj, Layer) or isinstance(obj, _InputLayer):
            raise ValueError(f"expected a layer, got {type(obj).__name__}")
        fm = formats.get(obj.name)
        if fm is not None:
            if not hasattr(obj, "weight_format") or not isinstance(fm, dict) or set(fm) != set(ROLES):
                raise ValueError(f"bad formats for layer {obj.name}")
            for r, v in fm.items():
                f = _serial.decode(v, classes)
                if f is not None and not isinstance(f, _formats.Format):
                    raise ValueError(f"layer {obj.name}: {r} format is a {type(f).__name__}")
                setattr(obj, f"{r}_format", f)
        return obj

    if "sequential" in arch:
        model = Sequential([layer(c) for c in arch["sequential"]], name=name, seed=seed)
        model.build(tuple(arch["input_shape"]))
        return model
    tensors = []
    for node in arch["nodes"]:
        if "input" in node:
            tensors.append(Input(tuple(node["input"]), name=node["name"]))
        else:
            ins = [tensors[i] for i in node["inputs"] if 0 <= i < len(tensors)]
            if len(ins) != len(node["inputs"]):
                raise ValueError("layer inputs must come earlier in the node list")
            tensors.append(layer(node["layer"])(*ins))
    return Model(tensors[arch["input"]], tensors[arch["output"]], name=name, seed=seed)
