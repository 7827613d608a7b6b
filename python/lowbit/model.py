"""Model and Sequential: build the C++ graph from layers and drive it Keras-style.

The epoch loop (shuffle, batch, forward, backward, update, metrics) runs in C++ with
the GIL released; Python only draws the progress bar (a callback at most ~5 times a
second) and calls user callbacks between epochs.

Input conversion rule: x may be any real numeric array; it is converted once to
C-contiguous float32 (no copy when it already is one). Labels are integer classes
(any integer dtype, or floats holding whole numbers) or a (N, classes) float array of
targets (one-hot or soft). NaN/inf in x, labels out of range, or a wrong shape raise
ValueError; non-numeric data raises TypeError.
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import _core
from . import eager as _eager
from .kernel_table import kernel_table
from . import formats as _formats
from ._atomic import atomic_write
from . import optimizers as _optimizers
from . import precision as _precision
from .callbacks import Callback, History
from .layers import Layer, SymbolicTensor, _InputLayer

__all__ = ["Model", "Sequential"]

LOSSES = ("categorical_crossentropy", "mse")
_LOSS_ALIASES = {"categorical_crossentropy": "categorical_crossentropy",
                 "sparse_categorical_crossentropy": "categorical_crossentropy",
                 "crossentropy": "categorical_crossentropy",
                 "mse": "mse", "mean_squared_error": "mse"}


def as_input(x, what="x"):
    """Convert ``x`` by the documented rule: real numbers -> C-contiguous float32, finite."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what}: expected a real numeric array, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size and not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
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
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2 ** 63))
        _precision.get(precision)  # unknown names fail here, not at compile
        self.default_precision = precision
        self.stop_training = False
        self._graph = None
        self._compiled = None
        self._precision = None
        self._calibrated = False
        self._epochs_done = 0
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
        node_of, layers, used = {}, [], set()
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
            nodes = []
            for kind, cfg in layer.ops():
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
        self._graph, self._layers, self._io = g, layers, (inputs, outputs)
        self._layer_inputs = {id(t.layer): [node_of[id(u)] for u in t.inputs] for t in order if t.inputs}
        self.input_shape = tuple(inputs.layer.input_shape)
        self.output_shape = tuple(g.node_shape(g.output))

    @property
    def layers(self):
        return [layer for layer, _ in self._layers] if self._graph else []

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
        Conv kernels are OIHW (filters, in_channels/groups, kh, kw); Dense kernels (in, units)."""
        self._require_built()
        return [self._graph.get_param(n, k) for n, k in self._param_slots()]

    def set_weights(self, weights):
        self._require_built()
        slots = self._param_slots()
        if len(weights) != len(slots):
            raise ValueError(f"set_weights: expected {len(slots)} arrays, got {len(weights)}")
        for (n, k), w in zip(slots, weights):
            self._graph.set_param(n, k, as_input(w, "set_weights"))

    def save_weights(self, path):
        """Write all weights to ``path`` (.npz) atomically: a temporary file in the same
        folder, flushed to disk, then renamed over the target."""
        self._require_built()
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"save_weights: folder {folder} does not exist")
        arrays = {f"w{i:04d}": w for i, w in enumerate(self.get_weights())}
        arrays["step"] = np.array(self._graph.step, dtype=np.uint64)
        arrays.update(self._quant_state_arrays())
        atomic_write(path, lambda f: np.savez(f, **arrays))

    def load_weights(self, path):
        self._require_built()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_weights: no file {path}")
        with np.load(path) as z:
            keys = sorted(k for k in z.files if k.startswith("w"))
            self.set_weights([z[k] for k in keys])
            if "step" in z.files:
                self._graph.step = int(z["step"])
            self._load_quant_state(z)

    # Quantization state saved beside the weights: per kernel layer the calibrated MSB of
    # each Fixed format, and per engine node the quantizers' tracked MSB, stochastic
    # rounding counter, hysteresis signs and running activation range (Int).
    def _quant_state_arrays(self):
        out = {}
        for i, layer in enumerate(self._kernel_layers()):
            for role, f in getattr(layer, "_precision_formats", {}).items():
                if isinstance(f, _formats.Fixed) and getattr(f, "_calibrated", False):
                    out[f"qmsb_{i}_{role}"] = np.array(f.msb, np.int32)
        for _, nodes in self._layers:
            for n in nodes:
                for k, (msb, counter, signs, running) in enumerate(self._graph.get_quant_state(n)):
                    out[f"qs_{n}_{k}"] = np.array([msb, counter], np.int64)
                    out[f"qh_{n}_{k}"] = signs
                    out[f"qr_{n}_{k}"] = np.array(running, np.float32)
        return out

    def _load_quant_state(self, z):
        changed = False
        for i, layer in enumerate(self._kernel_layers()):
            for role, f in getattr(layer, "_precision_formats", {}).items():
                key = f"qmsb_{i}_{role}"
                if key in z.files and isinstance(f, _formats.Fixed):
                    msb = int(z[key])
                    changed |= f.msb != msb or not getattr(f, "_calibrated", False)
                    f._q.set_msb(msb)
                    f._config["msb"], f._calibrated = msb, True
        if changed:  # the engine's formats carry the static MSB: rebuild with the loaded ones
            self._rebuild()
            self._calibrated = True
        for _, nodes in self._layers:
            for n in nodes:
                k, states = 0, []
                while f"qs_{n}_{k}" in z.files:
                    msb, counter = (int(v) for v in z[f"qs_{n}_{k}"])
                    states.append((msb, counter, z[f"qh_{n}_{k}"], float(z[f"qr_{n}_{k}"])))
                    k += 1
                if states:
                    self._graph.set_quant_state(n, states)

    # ----- training -----------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss="categorical_crossentropy", metrics=None, precision=None):
        """``loss``: 'categorical_crossentropy' (fused with a final softmax, computed from
        logits; without a final softmax the outputs are taken as logits) or 'mse'.
        ``precision``: a preset name ('fp32', 'fp16', 'bf16', 'fixed16', 'fixed8', 'int8',
        'binary', 'w1a8', 'fw16bw32', 'fw16bw16') or an ``lb.Precision`` - see
        ``lowbit.precision``. Changing the precision rebuilds the engine graph; weights are
        kept, optimizer state starts afresh, and layers' ``trainable`` flags take effect."""
        if not isinstance(loss, str) or loss.lower() not in _LOSS_ALIASES:
            raise ValueError(f"compile: unknown loss {loss!r} (expected one of {', '.join(LOSSES)})")
        for m in metrics or []:
            if m not in ("accuracy", "acc"):
                raise ValueError(f"compile: unknown metric {m!r} (only 'accuracy' is supported)")
        opt = _optimizers.get(optimizer)
        self._compiled = (opt, _LOSS_ALIASES[loss.lower()])
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

    def _rebuild(self):
        """Rebuild the engine graph from the layers (after a format change), keeping weights."""
        weights, step = self.get_weights(), self._graph.step
        self._build_from(*self._io)
        self.set_weights(weights)
        self._graph.step = step
        if self._compiled is not None:
            self._apply_compile()

    def calibrate(self, x, percentile=None):
        """Choose the MSB of every ``Fixed(msb="auto")`` format of the model's precision
        from data (S4 Eq. 11): percentiles of each layer's kernel, input and output in a
        float32 forward pass over ``x`` (a few hundred samples suffice)."""
        p = self._precision
        if p is None:
            return {}
        pct = p.calibration_percentile if percentile is None else float(percentile)
        ks = self._kernel_layers()
        saved = {id(layer): layer._precision_formats for layer in ks}
        for layer in ks:
            layer._precision_formats = {}
        self._rebuild()  # float32 graph for the statistics
        g = self._graph
        g.forward(as_input(x, "calibrate: x"), False)
        chosen = {}
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
        for layer in ks:
            layer._precision_formats = saved[id(layer)]
        self._rebuild()
        self._calibrated = True
        return chosen

    def _maybe_calibrate(self, x):
        if self._precision is not None and self._precision.needs_calibration and not self._calibrated:
            self.calibrate(x[:256])

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
        if y is None:
            return x, None
        y = as_target(y, f"{what}: y")
        if len(y) != len(x):
            raise ValueError(f"{what}: x has {len(x)} samples but y has {len(y)}")
        return x, y

    def _build_lazily(self, shape):
        self._require_built()

    def fit(self, x, y, batch_size=32, epochs=1, validation_data=None, shuffle=True, seed=None, verbose=1,
            callbacks=None):
        """Train; returns a History whose ``.history`` has per-epoch lists ``loss``,
        ``accuracy``, ``val_loss``, ``val_accuracy`` (with validation_data), ``epoch_time``
        and ``learning_rate``. ``seed`` fixes shuffling and dropout masks (default: the
        model's seed)."""
        if self._compiled is None:
            raise ValueError("fit: call compile() first")
        batch_size = _batch_size(batch_size, "fit")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"fit: expected epochs >= 0, got {epochs!r}")
        x, y = self._prepare(x, y, "fit")
        if len(x) == 0:
            raise ValueError("fit: x is empty")
        self._ready(x)
        val = None
        if validation_data is not None:
            vx, vy = validation_data[:2]
            val = self._prepare(vx, vy, "fit: validation_data")
        seed = self.seed if seed is None else int(seed)
        history = History()
        cbs = [history] + list(callbacks or [])
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(f"fit: callbacks must be lb.callbacks.Callback instances, got {type(cb).__name__}")
            cb.model = self
        self.stop_training = False
        for cb in cbs:
            cb.on_train_begin()
        n = len(x)
        for e in range(int(epochs)):
            epoch = self._epochs_done
            for cb in cbs:
                cb.on_epoch_begin(e)
            bar = None
            if verbose:
                from tqdm.auto import tqdm
                bar = tqdm(total=n, desc=f"epoch {e + 1}/{epochs}", unit="img", leave=True)

                def progress(done, loss, acc, bar=bar):
                    bar.update(done - bar.n)
                    bar.set_postfix(loss=f"{loss:.4f}", accuracy=f"{acc:.4f}", refresh=False)
            else:
                progress = None
            t0 = time.perf_counter()
            m = self._graph.fit_epoch(x, y, batch_size, bool(shuffle), seed, epoch, progress)
            logs = {"loss": m["loss"], "accuracy": m["accuracy"], "epoch_time": time.perf_counter() - t0,
                    "learning_rate": self._graph.learning_rate}
            self._epochs_done += 1
            if val is not None:
                v = self._graph.evaluate(val[0], val[1], 256)
                logs["val_loss"], logs["val_accuracy"] = v["loss"], v["accuracy"]
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "learning_rate"})
                bar.close()
            for cb in cbs:
                cb.on_epoch_end(e, logs)
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end()
        return history

    def evaluate(self, x, y, batch_size=256, verbose=0):
        """Returns {'loss', 'accuracy'} with inference-mode layers (dropout off, BN running stats)."""
        if self._compiled is None:
            raise ValueError("evaluate: call compile() first")
        batch_size = _batch_size(batch_size, "evaluate")
        x, y = self._prepare(x, y, "evaluate")
        self._ready(x)
        return dict(self._graph.evaluate(x, y, batch_size))

    def predict(self, x, batch_size=256):
        batch_size = _batch_size(batch_size, "predict")
        x, _ = self._prepare(x, None, "predict")
        self._maybe_calibrate(x)
        return self._graph.predict(x, batch_size)

    def compute_gradients(self, x, y):
        """(loss, gradients in get_weights() order) for one batch: training-mode forward
        (dropout active with the current step's mask), running statistics untouched."""
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
        shape = tuple(input_shape) if input_shape is not None else self._stack[0].input_shape
        if shape is None:
            raise ValueError("Sequential.build: no input_shape")
        if not self._stack:
            raise ValueError("Sequential.build: no layers")
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
