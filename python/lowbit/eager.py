"""Layers called on arrays: ``y = lb.layers.Conv2D(8, 3)(x)`` runs at once on the engine.

No second implementation: a layer called on arrays runs through a small engine graph of
its own - its inputs, then the same ops a Model builds from it - so forward, backward,
quantizers and straight-through estimators are the C++ ones. One graph per input shape
(and op configuration) is kept.

Weights live in one engine graph at a time, the layer's *home*: its own graph once it
was called on arrays, or the graph of the Model it was later built into (the Model takes
over the weights the layer built; from then on ``layer.get_weights()`` reads the model's
and an array call runs on a copy of them, writing running statistics and quantizer
state back after a ``training=True`` call).
"""
from __future__ import annotations

import collections
import numbers
import zlib

import numpy as np

from . import _core

__all__ = ["Gradients"]

Gradients = collections.namedtuple("Gradients", ["dx", "dweights"])
Gradients.__doc__ = """What ``layer.backward(x, dy)`` returns: ``dx``, the gradient with respect
to the input (a list, one per input, for Add / Concatenate), and ``dweights``, the
gradients of the layer's weights in ``get_weights()`` order (zeros for BatchNorm's
moving statistics, which are not trained)."""

_CACHE = 4  # engine graphs kept per layer (one per input shape / op configuration)


class _Slots:
    """A layer's ops inside one engine graph: its weights and quantizer states."""

    def __init__(self, graph, nodes, own):
        self.graph, self.nodes, self.own = graph, list(nodes), own
        self.slots = [(n, k) for n in self.nodes for k in range(len(graph.node_params(n)))]

    def shapes(self):
        return [tuple(self.graph.node_params(n)[k][1]) for n, k in self.slots]

    def get_weights(self):
        return [self.graph.get_param(n, k) for n, k in self.slots]

    def get_grads(self):
        return [self.graph.get_grad(n, k) for n, k in self.slots]

    def set_weights(self, weights):
        for (n, k), w in zip(self.slots, weights):
            self.graph.set_param(n, k, w)

    def get_quant_state(self):
        return [self.graph.get_quant_state(n) for n in self.nodes]

    def set_quant_state(self, states):
        for n, s in zip(self.nodes, states):
            if s:
                self.graph.set_quant_state(n, list(s))

    def copy_from(self, other, layer):
        if other.shapes() != self.shapes():
            raise ValueError(f"{layer.name}: the layer's weights have shapes {other.shapes()}, but these inputs "
                             f"need {self.shapes()} (a layer is built for one input size)")
        self.set_weights(other.get_weights())
        self.set_quant_state(other.get_quant_state())


def default_seed(layer):
    """Seed of a layer built by an array call: its ``seed``, else one derived from its name
    (conv2d_1, ...), so a fresh session rebuilds the same weights."""
    return int(layer.seed) if layer.seed is not None else zlib.crc32(layer.name.encode())


def attach(layer, graph, nodes):
    """Called by Model when it builds ``layer`` into ``graph``: weights the layer built from
    arrays move into the model, and the model's graph becomes the layer's home."""
    home = layer._home
    slots = _Slots(graph, nodes, own=False)
    if home is not None and home.own:
        slots.copy_from(home, layer)
    layer._home = slots


def _training_flag(training, layer):
    if training is None:
        return False
    if isinstance(training, (bool, np.bool_)):
        return bool(training)
    raise TypeError(f"{layer.name}: expected training=True/False, got {training!r}")


def _arrays(layer, inputs):
    """The positional arguments of a call as float32 batches (N, ...), checked."""
    from .model import as_input
    multi = layer._multi_input
    if multi and len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
        inputs = tuple(inputs[0])
    if multi and len(inputs) < 2:
        raise ValueError(f"{layer.name}: expected at least 2 input arrays, got {len(inputs)}")
    if not multi and len(inputs) != 1:
        raise ValueError(f"{layer.name}: expected one input array, got {len(inputs)}")
    xs = []
    for k, a in enumerate(inputs):
        what = f"{layer.name}: input {k}" if multi else f"{layer.name}: input"
        if a is None or isinstance(a, (str, bytes, dict)):
            raise TypeError(f"{what}: expected a numeric array, got {type(a).__name__}")
        try:
            a = np.asarray(a)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"{what}: not a regular array ({e})") from None
        a = as_input(a, what)
        if not 2 <= a.ndim <= 4:
            raise ValueError(f"{what}: expected a batch of shape (N, C, H, W) or (N, features) - the first axis "
                             f"is the batch - got an array of shape {a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"{what}: the batch is empty (shape {a.shape})")
        if 0 in a.shape:
            raise ValueError(f"{what}: expected non-empty samples, got shape {a.shape}")
        xs.append(a)
    if len({a.shape[0] for a in xs}) > 1:
        raise ValueError(f"{layer.name}: the inputs differ in batch size: {[a.shape[0] for a in xs]}")
    return xs


def _build_graph(layer, shapes):
    g = _core.Graph()
    ins = [g.add_input(list(s)) for s in shapes]
    nodes = []
    for kind, cfg in layer.ops():
        try:
            nid = g.add(kind, ins, cfg)
        except ValueError as e:
            got = ", ".join(str(s) for s in shapes)
            raise ValueError(f"{layer.name}: {e} (called on samples of shape {got}; the first axis of the "
                             f"array is the batch)") from None
        nodes.append(nid)
        ins = [nid]
    g.set_output(nodes[-1])
    g.init_params(default_seed(layer))
    return _Slots(g, nodes, own=True)


def _binding(layer, xs):
    """The layer's engine graph for these input shapes, holding the layer's current state."""
    shapes = tuple(a.shape[1:] for a in xs)
    key = (shapes, repr(layer.ops()))  # a model's precision changes the ops
    cache = layer.__dict__.setdefault("_eager_graphs", collections.OrderedDict())
    b = cache.get(key) or _build_graph(layer, shapes)
    home = layer._home
    if home is not None and home is not b:
        b.copy_from(home, layer)
    if home is None or home.own:  # the layer's own graphs: the state moves to the one in use
        layer._home = b
    cache[key] = b
    cache.move_to_end(key)
    while len(cache) > _CACHE:
        cache.popitem(last=False)
    return b


def call(layer, inputs, training=None):
    """``layer(x)`` on arrays: the forward of the layer's ops; ``training=True`` runs the
    training-mode forward (dropout masks, batch statistics - moving averages updated -
    and quantizer tracking). Each training call draws the next dropout mask."""
    training = _training_flag(training, layer)
    xs = _arrays(layer, inputs)
    b = _binding(layer, xs)
    if training:
        b.graph.step = layer._eager_step
        layer._eager_step += 1
    y = b.graph.forward_inputs(xs, training, training)
    if training and layer._home is not b:  # running statistics and quantizer state go home
        layer._home.set_weights(b.get_weights())
        layer._home.set_quant_state(b.get_quant_state())
    return y


def backward(layer, x, dy):
    """The training-mode forward, then the engine's backward for the output gradient
    ``dy`` - what a training step differentiates (the engine's backward follows a
    training forward: batch statistics, max-pooling indices, dropout masks). Returns
    ``Gradients(dx, dweights)``. No state changes: running statistics stay, quantizer
    state is restored, and the dropout mask is the last training call's (the first
    one's before any)."""
    from .model import as_input
    inputs = tuple(x) if layer._multi_input and isinstance(x, (list, tuple)) else (x,)
    xs = _arrays(layer, inputs)
    b = _binding(layer, xs)
    g = b.graph
    saved = b.get_quant_state()
    g.step = max(layer._eager_step - 1, 0)
    y_shape = g.forward_inputs(xs, True, False).shape
    dy = as_input(dy, f"{layer.name}: dy")
    if dy.shape != y_shape:
        raise ValueError(f"{layer.name}: expected dy of the output's shape {y_shape}, got {dy.shape}")
    dxs = g.backward_inputs(dy)
    grads = b.get_grads()
    b.set_quant_state(saved)
    return Gradients(dxs if layer._multi_input else dxs[0], grads)


def build(layer, input_shape):
    """Create the layer's weights for samples of ``input_shape`` ((C, H, W) or (features,);
    a list of shapes for Add / Concatenate) without running it."""
    shapes = []
    for s in list(input_shape) if layer._multi_input else [input_shape]:
        s = (s,) if isinstance(s, numbers.Integral) else s
        if not (isinstance(s, (tuple, list)) and 1 <= len(s) <= 3 and all(
                isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in s)):
            raise ValueError(f"{layer.name}: expected input_shape as (C, H, W) or (features,), got {input_shape!r}")
        shapes.append(tuple(int(d) for d in s))
    _binding(layer, [np.zeros((1,) + s, np.float32) for s in shapes])


def get_weights(layer):
    return layer._home.get_weights() if layer._home is not None else []


def set_weights(layer, weights):
    from .model import as_input
    home = layer._home
    if home is None:
        raise ValueError(f"{layer.name}: the layer has no weights yet - call it on data or build(input_shape) first")
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"{layer.name}: set_weights expects a list of arrays, got {type(weights).__name__}")
    shapes = home.shapes()
    if len(weights) != len(shapes):
        raise ValueError(f"{layer.name}: set_weights expects {len(shapes)} arrays, got {len(weights)}")
    ws = [as_input(w, f"{layer.name}: set_weights") for w in weights]
    for i, (w, s) in enumerate(zip(ws, shapes)):
        if w.shape != s:
            raise ValueError(f"{layer.name}: set_weights: array {i} has shape {w.shape}, expected {s}")
    home.set_weights(ws)
