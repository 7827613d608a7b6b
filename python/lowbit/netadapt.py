"""NetAdapt (Yang et al. 2018; S1 Algorithm 1): shrink a network's filters layer by layer
until a resource budget - multiply-accumulates or latency measured on this machine - is
met, keeping at each iteration the candidate that loses the least accuracy.

    table = lb.netadapt.build_latency_table(model, steps=8, path="lut.json")
    small, history = lb.netadapt.adapt(model, (x, y), (xv, yv), budget=0.65 * table.predict(filters0),
                                       resource="latency", table=table, state_path="netadapt.json")
    print(history)                     # the table of S1 Figure 38a

Networks: ``Sequential`` stacks of Conv2D / Dense layers (with pools, batch norm, dropout,
flatten between them), e.g. ``lb.models.lenet``, ``alexnet_cifar``, ``alexnet_netadapt``.
Every kernel layer but the last (the classifier) can lose filters; pruning builds a new,
narrower network and copies the kept filters' weights, their batch-norm entries and the
next layer's matching input channels.

Resource model: the network's cost is the sum over its kernel layers of a cost of
(input channels, output channels). For MACs that cost is exact -
``macs * cin * cout / (C_in * C_out)`` since spatial sizes do not change. For latency it is
the measured lookup table: per kernel layer, the layers from the previous kernel layer's
output up to and including it (pools, flatten, the fused activation) on a grid of widths,
bilinearly interpolated between grid points, plus the network's fixed per-call cost. Each
entry is timed inside the whole network (``Model.profile``: per-node times within a
``predict`` call, that layer and the one before it at the entry's widths, the others
full). Segments timed alone as separate networks (table format 1) each paid a call's
fixed cost and ran with caches the network does not give them: for AlexNet-CIFAR at batch
1 (AMD EPYC, 1 thread) they summed to 0.90x the measured latency with warm caches and
1.07x with flushed ones (2.2x in notebook 06's run on a loaded machine); timed inside the
network, 0.99x and 1.00x.
"""
from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np

from . import layers as L
from ._atomic import atomic_write
from .experiments import cpu_model as cpu_name
from .model import Sequential

__all__ = ["LatencyTable", "build_latency_table", "measure_latency", "with_filters", "prune", "filters_of",
           "resource_of", "adapt", "AdaptHistory"]

_TABLE_FORMAT = "lowbit-latency-table/2"
_OLD_FORMATS = ("lowbit-latency-table/1",)  # segments timed alone, no per-call term


def _atomic_write(path, write):
    """``write(file)`` into ``path`` atomically (text mode); the folder must exist."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"netadapt: folder {folder} does not exist")
    atomic_write(os.fspath(path), write, mode="w")


# ----------------------------------------------------------------------- network surgery
def _check_model(model, fn):
    if not isinstance(model, Sequential):
        raise TypeError(f"{fn}: expected a lb.Sequential network (e.g. lb.models.lenet), got {type(model).__name__}")
    model._require_built()
    ks = _kernel_positions(model)
    if len(ks) < 2:
        raise ValueError(f"{fn}: {model.name} needs at least two Conv2D/Dense layers to prune one")
    for p in ks:
        layer = model.layers[p]
        if isinstance(layer, L.Conv2D) and layer.groups != 1:
            raise ValueError(f"{fn}: {layer.name} is a grouped convolution; only groups=1 can be pruned")
    return ks


def _kernel_positions(model):
    return [i for i, layer in enumerate(model.layers) if isinstance(layer, (L.Conv2D, L.Dense))]


def _width(layer):
    return layer.filters if isinstance(layer, L.Conv2D) else layer.units


def _set_width(layer, n):
    if isinstance(layer, L.Conv2D):
        layer.filters = int(n)
    else:
        layer.units = int(n)


def filters_of(model):
    """Widths of the kernel layers (filters of a Conv2D, units of a Dense), classifier included."""
    return [_width(model.layers[p]) for p in _kernel_positions(model)]


def _input_shape(model):
    return tuple(model._io[0].shape)


def with_filters(model, filters):
    """A new, untrained network of the same layers with kernel-layer widths ``filters``
    (the classifier's width cannot change)."""
    ks = _check_model(model, "with_filters")
    filters = [int(f) for f in filters]
    if len(filters) != len(ks) or any(f < 1 for f in filters):
        raise ValueError(f"with_filters: expected {len(ks)} positive widths, got {filters!r}")
    if filters[-1] != _width(model.layers[ks[-1]]):
        raise ValueError(f"with_filters: the classifier keeps {_width(model.layers[ks[-1]])} outputs, got {filters[-1]}")
    layers = [copy.deepcopy(layer) for layer in model.layers]
    for p, f in zip(ks, filters):
        _set_width(layers[p], f)
    m = Sequential(layers, name=model.name, seed=model.seed, precision=model.default_precision)
    m.build(_input_shape(model))
    return m


def _weights_by_layer(model):
    g = model._graph
    return [[g.get_param(n, k) for n in nodes for k in range(len(g.node_params(n)))] for _, nodes in model._layers]


def _filter_norms(model, j):
    """L2 norm of every filter (output channel / unit) of kernel layer j."""
    p = _kernel_positions(model)[j]
    w = _weights_by_layer(model)[p][0]
    return np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(1)) if w.ndim == 4 else np.sqrt((w ** 2).sum(0))


def prune(model, j, keep):
    """The network with kernel layer ``j`` reduced to the filters ``keep`` (indices): a new
    network holding the kept filters' weights, their batch-norm entries and the next
    kernel layer's matching input channels (through a flatten: all positions of a kept channel)."""
    ks = _check_model(model, "prune")
    if not 0 <= j < len(ks) - 1:
        raise ValueError(f"prune: layer index {j} is not a prunable kernel layer (0..{len(ks) - 2})")
    old = _width(model.layers[ks[j]])
    keep = np.unique(np.asarray(keep, dtype=np.int64))
    if keep.size == 0 or keep[0] < 0 or keep[-1] >= old:
        raise ValueError(f"prune: keep must be non-empty indices in [0, {old}), got {keep.tolist()}")
    filters = filters_of(model)
    filters[j] = int(keep.size)
    new = with_filters(model, filters)
    w = _weights_by_layer(model)
    p, q = ks[j], ks[j + 1]
    kernel = w[p][0]
    w[p][0] = kernel[keep] if kernel.ndim == 4 else kernel[:, keep]
    w[p][1:] = [b[keep] for b in w[p][1:]]  # bias
    for between in range(p + 1, q):  # batch norm: gamma, beta, moving mean and variance
        w[between] = [a[keep] for a in w[between]]
    nxt = w[q][0]
    if nxt.ndim == 4:  # OIHW
        w[q][0] = nxt[:, keep]
    else:  # (in, units); a flatten in between gives in = channels x positions, NCHW order
        per = nxt.shape[0] // old
        w[q][0] = nxt.reshape(old, per, -1)[keep].reshape(keep.size * per, -1)
    new.set_weights([a for arrays in w for a in arrays])
    return new


# ----------------------------------------------------------------------- resources
def _segments(model):
    """Per kernel layer: (the layers from the previous kernel layer's output up to it,
    the segment's input shape at full width)."""
    ks = _kernel_positions(model)
    g = model._graph
    out = []
    prev = -1
    for p in ks:
        shape = _input_shape(model) if prev < 0 else tuple(g.node_shape(model._layers[prev][1][-1]))
        out.append((model.layers[prev + 1:p + 1], shape))
        prev = p
    return out


def measure_latency(model, repeat=20, batch=1, seed=0, flush_mb=0):
    """Median wall time in ms of ``model.predict`` on a random batch (one warm-up run first):
    ``Model.profile``'s whole-call time.

    ``flush_mb > 0`` writes that many MiB before every timed run, evicting the caches: a
    layer timed alone keeps its weights in cache from run to run, which a layer inside a
    network does not when the other layers' weights pass through the cache in between
    (S1's AlexNet: 4096x4096 fp32 weights are 64 MiB, 1365x4096 fit a 32 MiB L3)."""
    model._require_built()
    x = np.random.default_rng(seed).standard_normal((int(batch),) + _input_shape(model)).astype(np.float32)
    return model.profile(x, batch_size=int(batch), repeat=repeat, flush_mb=flush_mb).call_ms


def _grid(width, steps):
    """``steps`` widths evenly up to ``width`` (rounded, unique, ending at ``width``)."""
    return sorted({max(1, int(round(width * k / steps))) for k in range(1, steps + 1)})


class LatencyTable:
    """Per kernel layer a grid of measured latencies (ms) over (input channels, output
    channels). JSON on disk (the seed's lut_alexnet.pkl, readable): ``save`` / ``load``."""

    def __init__(self, layers, model="", cpu="", threads=1, batch=1, repeat=1, statistic="median", flush_mb=0,
                 overhead_ms=0.0, timing="in-network"):
        self.layers, self.flush_mb = layers, flush_mb
        self.overhead_ms, self.timing = float(overhead_ms), timing
        self.model, self.cpu, self.threads, self.batch, self.repeat = model, cpu, threads, batch, repeat
        self.statistic = statistic
        for e in layers:
            ms = np.asarray(e["ms"], dtype=float)
            if ms.shape != (len(e["in_channels"]), len(e["out_channels"])):
                raise ValueError(f"LatencyTable: layer {e['name']}: ms has shape {ms.shape}, expected "
                                 f"({len(e['in_channels'])}, {len(e['out_channels'])})")

    def to_dict(self):
        return {"format": _TABLE_FORMAT, "model": self.model, "cpu": self.cpu, "threads": self.threads,
                "batch": self.batch, "repeat": self.repeat, "statistic": self.statistic, "flush_mb": self.flush_mb,
                "unit": "ms", "timing": self.timing, "overhead_ms": self.overhead_ms,
                "layers": self.layers}

    def save(self, path):
        _atomic_write(path, lambda f: json.dump(self.to_dict(), f, indent=1))

    @classmethod
    def load(cls, path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"LatencyTable.load: no file {path}")
        with open(path) as f:
            d = json.load(f)
        if d.get("format") in _OLD_FORMATS:  # still usable: its entries are whole predict calls
            return cls(d["layers"], d["model"], d["cpu"], d["threads"], d["batch"], d["repeat"], d["statistic"],
                       d.get("flush_mb", 0), 0.0, "alone")
        if d.get("format") != _TABLE_FORMAT:
            raise ValueError(f"LatencyTable.load: {path} is not a {_TABLE_FORMAT} file")
        return cls(d["layers"], d["model"], d["cpu"], d["threads"], d["batch"], d["repeat"], d["statistic"],
                   d["flush_mb"], d["overhead_ms"], d["timing"])

    def __eq__(self, other):
        return isinstance(other, LatencyTable) and self.to_dict() == other.to_dict()

    def lookup(self, j, cin, cout):
        """Latency (ms) of kernel layer j at (cin, cout), bilinear between grid points."""
        e = self.layers[j]
        ci, co = np.asarray(e["in_channels"], float), np.asarray(e["out_channels"], float)
        # A layer with more channels is never faster: measured dips are timing noise, so the
        # lookup uses the monotone envelope (running max along both axes) of the medians.
        ms = np.maximum.accumulate(np.maximum.accumulate(np.asarray(e["ms"], float), axis=0), axis=1)
        row = np.array([np.interp(cout, co, r) for r in ms]) if len(co) > 1 else ms[:, 0]
        return float(np.interp(cin, ci, row)) if len(ci) > 1 else float(row[0])

    def predict(self, filters):
        """Predicted latency (ms) of the network with kernel-layer widths ``filters``: its
        segments' plus the per-call overhead."""
        if len(filters) != len(self.layers):
            raise ValueError(f"LatencyTable.predict: expected {len(self.layers)} widths, got {len(filters)}")
        cins = [self.layers[0]["in_channels"][-1]] + list(filters[:-1])
        return sum(self.lookup(j, ci, co) for j, (ci, co) in enumerate(zip(cins, filters))) + self.overhead_ms


def build_latency_table(model, input_shape=None, steps=8, repeat=10, batch=1, path=None, flush_mb=0, verbose=1):
    """Measure, on this machine, each kernel layer's segment (see the module doc) for
    every (input channels, output channels) pair on a grid of ``steps`` widths per layer
    (an int or one per kernel layer), inside the whole network with the two layers at
    those widths: median of ``repeat`` profiled ``predict`` calls at batch ``batch``, with
    ``flush_mb`` MiB written before each call (cold caches; see ``measure_latency``).
    The full network's per-call overhead (``Model.profile``'s) is the table's constant
    term. ``input_shape`` (C, H, W) defaults to the model's. Saved as JSON to ``path``."""
    ks = _check_model(model, "build_latency_table")
    if input_shape is not None and tuple(input_shape) != _input_shape(model):
        model = _rebuilt(model, tuple(input_shape))
    per = list(steps) if isinstance(steps, (list, tuple)) else [steps] * len(ks)
    if len(per) != len(ks) or any(not isinstance(s, (int, np.integer)) or s < 1 for s in per):
        raise ValueError(f"build_latency_table: expected steps >= 1 (one int or {len(ks)} of them), got {steps!r}")
    if int(repeat) < 1:
        raise ValueError(f"build_latency_table: expected repeat >= 1, got {repeat}")
    if flush_mb < 0:
        raise ValueError(f"build_latency_table: expected flush_mb >= 0, got {flush_mb}")
    widths = filters_of(model)
    outs = [_grid(w, s) for w, s in zip(widths[:-1], per[:-1])] + [[widths[-1]]]
    segs = _segments(model)
    spans = [range(prev + 1, p + 1) for prev, p in zip([-1] + ks[:-1], ks)]  # layer positions per segment

    def profiled(m):
        return m.profile(batch_size=int(batch), repeat=int(repeat), flush_mb=flush_mb)
    from tqdm.auto import tqdm
    total = sum(len(o) * (len(outs[j - 1]) if j else 1) for j, o in enumerate(outs))
    bar = tqdm(total=total, desc="latency table", unit="pair", disable=not verbose)
    entries = []
    for j, (layers, shape) in enumerate(segs):
        ins = [shape[0]] if j == 0 else outs[j - 1]
        ms = []
        for cin in ins:
            row = []
            for cout in outs[j]:
                f = list(widths)
                if j:
                    f[j - 1] = cin
                f[j] = cout
                p = profiled(with_filters(model, f))
                row.append(sum(p[i]["ms"] for i in spans[j]))
                bar.update(1)
            ms.append(row)
        entries.append({"name": layers[-1].name, "kind": type(layers[-1]).__name__,
                        "segment": [x.name for x in layers], "input_shape": list(shape),
                        "in_channels": ins, "out_channels": outs[j], "ms": ms})
    bar.close()
    overhead = profiled(with_filters(model, widths)).overhead_ms
    from . import _core
    table = LatencyTable(entries, model.name, cpu_name(), int(_core.build_info()["openmp_threads"]), int(batch),
                         int(repeat), flush_mb=flush_mb, overhead_ms=overhead)
    if path is not None:
        table.save(path)
    return table


def _rebuilt(model, shape):
    m = Sequential([copy.deepcopy(x) for x in model.layers], name=model.name, seed=model.seed,
                   precision=model.default_precision)
    m.build(shape)
    return m


def _mac_costs(model):
    """Per kernel layer MACs / (C_in * C_out): the MACs scale with the product of widths."""
    rows = {r["name"]: r["macs"] for r in model.summary(print_fn=None).rows}
    ks = _kernel_positions(model)
    widths = filters_of(model)
    cins = [_input_shape(model)[0]] + widths[:-1]
    return [rows[model.layers[p].name] / (ci * co) for p, ci, co in zip(ks, cins, widths)], cins[0]


def resource_of(model, resource="macs", table=None):
    """The network's MACs per sample, or its latency (ms) predicted by ``table``."""
    return _resource_fn(model, resource, table)(filters_of(model))


def _resource_fn(model, resource, table):
    if resource == "macs":
        unit, c0 = _mac_costs(model)

        def f(filters):
            cins = [c0] + list(filters[:-1])
            return float(sum(u * ci * co for u, ci, co in zip(unit, cins, filters)))
        return f
    if resource == "latency":
        if not isinstance(table, LatencyTable):
            raise ValueError("netadapt: resource='latency' needs table=a LatencyTable (build_latency_table)")
        if len(table.layers) != len(_kernel_positions(model)):
            raise ValueError(f"netadapt: the latency table has {len(table.layers)} layers, "
                             f"{model.name} {len(_kernel_positions(model))} kernel layers")
        return table.predict
    raise ValueError(f"netadapt: unknown resource {resource!r} (expected 'macs' or 'latency')")


# ----------------------------------------------------------------------- Algorithm 1
class AdaptHistory(list):
    """Rows (dicts: iteration, accuracy, resource, block, filters) printed as S1 Figure 38a."""

    resource_name = "resource"

    def __str__(self):
        head = f"{'Iter':>5}  {'Accuracy':>9}  {self.resource_name:>16}  {'Block':>12}  Filters"
        lines = [head, "-" * len(head)]
        for r in self:
            res = f"{r['resource']:,.0f}" if self.resource_name == "MACs" else f"{r['resource']:.3f}"
            lines.append(f"{r['iteration']:>5}  {100 * r['accuracy']:>8.2f}%  {res:>16}  {str(r['block']):>12}  "
                         f"{r['filters']}")
        return "\n".join(lines)

    def to_pandas(self):
        import pandas as pd
        return pd.DataFrame(list(self))


def _settings_key(d):
    return json.loads(json.dumps(d))


def adapt(model, train, val, budget, resource="macs", table=None, reduction_schedule=0.05, short_term_steps=50,
          long_term_epochs=1, filter_choice="l2_norm", filter_step=None, optimizer=None, batch_size=64,
          state_path=None, max_iterations=100, seed=0, verbose=1):
    """S1 Algorithm 1 (NetAdapt). ``model``: a trained, compiled-or-not Sequential network;
    ``train`` / ``val``: (x, y); ``budget``: the target resource (MACs per sample, or ms
    predicted by ``table`` with ``resource="latency"``).

    Iteration i: constraint = resource - reduction_schedule(i) (a fraction of the
    initial resource, a list of fractions, or a callable of i giving one); for every
    prunable kernel layer, the most filters (counted down in ``filter_step`` - an int or
    one per layer, default 1/32 of the layer's original width) that meet the constraint;
    which filters: the largest L2 norms (``filter_choice="l2_norm"``); short-term
    fine-tune (``short_term_steps`` batches of ``batch_size``) and score on ``val``; the
    most accurate candidate is kept. Repeats until the budget is met, then long-term
    fine-tunes (``long_term_epochs`` on all of ``train``). Optimizer: ``optimizer`` (an
    lb.optimizers instance; default Adam(1e-4)).

    ``state_path``: a JSON file (and the weights beside it, ``<state_path>.npz``) written
    atomically after every finished iteration; a later call with the same settings
    resumes from it. Returns (adapted model, AdaptHistory)."""
    from . import optimizers as O
    ks = _check_model(model, "adapt")
    if filter_choice != "l2_norm":
        raise ValueError(f"adapt: unknown filter_choice {filter_choice!r} (expected 'l2_norm')")
    res = _resource_fn(model, resource, table)
    xt, yt = train
    xv, yv = val
    if len(xt) != len(yt) or len(xv) != len(yv) or len(xt) == 0 or len(xv) == 0:
        raise ValueError("adapt: train and val must be non-empty (x, y) pairs of equal lengths")
    widths0 = filters_of(model)
    r0 = res(widths0)
    if not budget > 0:
        raise ValueError(f"adapt: expected budget > 0, got {budget!r}")
    if callable(reduction_schedule):
        schedule = reduction_schedule
    elif isinstance(reduction_schedule, (list, tuple)):
        sched = list(reduction_schedule)
        schedule = lambda i: sched[min(i, len(sched) - 1)] * r0  # noqa: E731
    elif isinstance(reduction_schedule, (int, float)) and 0 < reduction_schedule < 1:
        schedule = lambda i: reduction_schedule * r0  # noqa: E731
    else:
        raise ValueError(f"adapt: reduction_schedule must be a fraction in (0, 1), a list of them or a callable, "
                         f"got {reduction_schedule!r}")
    if filter_step is None:
        steps = [max(1, w // 32) for w in widths0[:-1]]
    elif isinstance(filter_step, (list, tuple)):
        steps = [int(s) for s in filter_step]
    else:
        steps = [int(filter_step)] * (len(ks) - 1)
    if len(steps) != len(ks) - 1 or any(s < 1 for s in steps):
        raise ValueError(f"adapt: filter_step must be >= 1, one or {len(ks) - 1} of them, got {filter_step!r}")
    opt = optimizer or O.Adam(1e-4)

    def compiled(m):
        m.compile(opt, "categorical_crossentropy", metrics=["accuracy"], precision=model.default_precision)
        return m

    def accuracy(m):
        return float(m.evaluate(xv, yv, batch_size=256)["accuracy"])

    settings = _settings_key({"model": model.name, "filters0": widths0, "resource": resource, "budget": budget,
                              "short_term_steps": short_term_steps, "long_term_epochs": long_term_epochs,
                              "filter_step": steps, "batch_size": batch_size, "seed": seed,
                              "train": len(xt), "val": len(xv)})
    history = AdaptHistory()
    history.resource_name = "MACs" if resource == "macs" else "latency (ms)"
    current, start, done = model, 1, False
    weights_path = None if state_path is None else os.fspath(state_path) + ".npz"
    if state_path is not None and os.path.isfile(state_path):
        with open(state_path) as f:
            state = json.load(f)
        if state["settings"] != settings:
            raise ValueError(f"adapt: {state_path} holds a run with other settings: {state['settings']} "
                             f"(this run: {settings}); remove it or pass another state_path")
        current = with_filters(model, state["filters"])
        current.load_weights(weights_path)
        history.extend(state["history"])
        start, done = state["iteration"] + 1, state["done"]
    compiled(current)
    if not history:
        history.append({"iteration": 0, "accuracy": accuracy(current), "resource": r0, "block": "-",
                        "filters": widths0})

    def save(i, finished):
        if state_path is None:
            return
        current.save_weights(weights_path)
        state = {"settings": settings, "iteration": i, "done": finished, "filters": filters_of(current),
                 "history": list(history)}
        _atomic_write(state_path, lambda f: json.dump(state, f, indent=1))

    from tqdm.auto import tqdm
    i = start
    bar = tqdm(total=max(1, int(np.ceil((r0 - budget) / max(schedule(0), 1e-12)))), initial=start - 1,
               desc="NetAdapt", unit="iter", disable=not verbose)
    while not done and res(filters_of(current)) > budget and i <= max_iterations:
        widths = filters_of(current)
        constraint = max(res(widths) - schedule(i - 1), budget)
        best = None
        for j in tqdm(range(len(ks) - 1), desc=f"iteration {i}", leave=False, disable=not verbose):
            n = widths[j] - steps[j]
            while n >= 1:
                trial = list(widths)
                trial[j] = n
                if res(trial) <= constraint:
                    break
                n -= steps[j]
            if n < 1:
                continue
            keep = np.sort(np.argsort(-_filter_norms(current, j), kind="stable")[:n])
            cand = compiled(prune(current, j, keep))
            rng = np.random.default_rng(seed + 1000 * i + j)
            idx = rng.choice(len(xt), size=min(len(xt), short_term_steps * batch_size), replace=False)
            if short_term_steps > 0:
                cand.fit(xt[idx], yt[idx], batch_size=batch_size, epochs=1, seed=seed + i, verbose=0)
            acc = accuracy(cand)
            if best is None or acc > best[0]:
                best = (acc, j, cand)
        if best is None:  # Algorithm 1 has no move left: keep what was reached, say so
            warnings.warn(f"adapt: no layer can lose filters to meet {constraint:.6g} (budget {budget:.6g}); "
                          f"stopping at {res(widths):.6g} - lower filter_step or raise the budget", RuntimeWarning)
            break
        acc, j, current = best
        history.append({"iteration": i, "accuracy": acc, "resource": res(filters_of(current)),
                        "block": model.layers[ks[j]].name, "filters": filters_of(current)})
        save(i, False)
        bar.update(1)
        i += 1
    bar.close()
    if not done:
        if long_term_epochs > 0:
            current.fit(xt, yt, batch_size=batch_size, epochs=long_term_epochs, seed=seed, verbose=verbose)
        history.append({"iteration": i, "accuracy": accuracy(current), "resource": res(filters_of(current)),
                        "block": "long-term", "filters": filters_of(current)})
        save(i, True)
    if verbose:
        print(history)
    return current, history
