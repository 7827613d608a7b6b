r"""Study S4 (seed 004): adapt a trained float network to a low-resolution convolution
engine - calibration, off-model and on-model quantization, progressive quantization.

The quantizer is S4's quantclip (``lb.formats.Fixed``): :math:`A = 2^{MSB}`,
:math:`q = 2A/2^n`, :math:`x_q = \lfloor \mathrm{clip}(x, -A, A)/q \rfloor q`; resolutions
are written w-i-o (kernel, input, output bits), e.g. 8-6-6.

    stats = lb.quantize.extract(model, x_val[:32])              # kernels, inputs, outputs
    lb.quantize.percentile_limits(stats, role="kernel")         # Tables 2-3
    lb.quantize.msb_table(stats)                                # Eq. 11 per layer: Table 11
    q = lb.quantize.quantize_weights(model, lb.formats.Fixed(8, msb=0, rounding="floor"))
    lb.quantize.quantize_layers(model, (8, 6, 6), msb=(0, 9, 9))  # on-model: Tables 6-9
    h = lb.quantize.progressive(model, (x, y), (xv, yv), strategy="quantize_while_train",
                                resolutions=(8, 6, 6), msb=98, epochs_per_layer=10,
                                recalibrate=True, learning_rate="cosine")

Layers are grouped into *units* for progressive quantization: by default the part of a
layer's name before the first "/" (SqueezeNet's fire2/squeeze1x1, fire2/expand1x1 and
fire2/expand3x3 form the unit fire2, as in the seed), every other kernel layer alone.
"""
from __future__ import annotations

import copy
import json
import math
import numbers
import os
import tempfile
import time

import numpy as np

from . import formats as F
from . import optimizers as O
from .experiments import Table

__all__ = ["PERCENTILES", "STRATEGIES", "ORDERS", "SCHEMES", "Scheme", "Histogram", "Extraction", "Limits",
           "ProgressiveHistory", "kernel_layers", "units", "extract", "percentile_limits", "msb_from_limits",
           "msb_table", "copy_model", "quantize_weights", "quantize_layers", "clear_quantization", "layer_formats",
           "apply_layer_formats", "fold_batch_norm", "grl_schedule", "progressive"]

PERCENTILES = (95, 98, 99.9, 99.99)

ROLES = ("kernel", "input", "output")
_FORMAT_ROLE = {"kernel": "weight", "input": "input", "output": "output"}
STRATEGIES = ("quantize_and_lock", "quantize_while_train", "gradual_resolution_loss")
ORDERS = ("input_to_output", "output_to_input", "random")


# ----------------------------------------------------------------------------- layers
def kernel_layers(model, layers=None):
    """The model's Conv2D/Dense layers in graph order; ``layers``: names of layers or of
    units (see ``units``) to keep."""
    model._require_built()
    ks = [layer for layer in model.layers if hasattr(layer, "weight_format")]
    if layers is None:
        return ks
    if isinstance(layers, str):
        layers = [layers]
    groups = dict(units(model))
    out, names = [], {k.name for k in ks}
    for name in layers:
        if name in names:
            out += [k for k in ks if k.name == name]
        elif name in groups:
            out += groups[name]
        else:
            raise ValueError(f"{model.name}: no layer or unit {name!r} with a kernel "
                             f"(have {', '.join(k.name for k in ks)})")
    seen = set()
    return [k for k in ks if k in out and not (id(k) in seen or seen.add(id(k)))]


def _unit_name(layer):
    return layer.name.split("/")[0]


def units(model, grouping="module"):
    """[(unit name, [layers])] in graph order: ``"module"`` groups layers by the name part
    before the first "/" (a Fire module), ``"layer"`` keeps every kernel layer alone."""
    if grouping not in ("module", "layer"):
        raise ValueError(f"units: unknown grouping {grouping!r} (expected 'module' or 'layer')")
    out = {}
    for layer in kernel_layers(model):
        out.setdefault(_unit_name(layer) if grouping == "module" else layer.name, []).append(layer)
    return list(out.items())


def _nodes(model, layer):
    for lay, nodes in model._layers:
        if lay is layer:
            return nodes
    raise ValueError(f"{model.name}: layer {layer.name} is not in the model")


def _layer_params(model):
    """{layer name: [arrays]} in each layer's parameter order."""
    g = model._graph
    return {layer.name: [g.get_param(n, k) for n in nodes for k in range(len(g.node_params(n)))]
            for layer, nodes in model._layers}


# -------------------------------------------------------------------------- histogram
class Histogram:
    """Streaming histogram on ``bins`` equal bins over [-R, R); R is a power of two that
    doubles when a value falls outside, merging bin pairs exactly, so values can be added
    batch by batch without a first pass. Percentiles are within one bin width."""

    def __init__(self, bins=4096):
        if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 4 or bins % 4:
            raise ValueError(f"Histogram: expected bins a multiple of 4, >= 4, got {bins!r}")
        self.bins, self.range = int(bins), None
        self.counts = np.zeros(self.bins, np.int64)
        self.n, self.min, self.max = 0, math.inf, -math.inf

    @property
    def width(self):
        return 2 * self.range / self.bins if self.range else 0.0

    @property
    def edges(self):
        return np.linspace(-self.range, self.range, self.bins + 1)

    def _double(self):
        # old bin i covers [-R + i w, -R + (i+1) w): in the doubled grid that is bin B/4 + i // 2
        new = np.zeros_like(self.counts)
        new[self.bins // 4: self.bins // 4 + self.bins // 2] = self.counts.reshape(-1, 2).sum(1)
        self.counts, self.range = new, self.range * 2

    def add(self, x):
        a = np.asarray(x, np.float64).reshape(-1)
        if a.size == 0:
            return self
        if not np.isfinite(a).all():
            raise ValueError("Histogram.add: expected finite values")
        amax = float(np.abs(a).max())
        if self.range is None:
            self.range = 2.0 ** math.ceil(math.log2(amax)) if amax > 0 else 1.0
        while amax >= self.range:
            self._double()
        idx = np.floor((a + self.range) / (2 * self.range) * self.bins).astype(np.int64)
        self.counts += np.bincount(np.clip(idx, 0, self.bins - 1), minlength=self.bins)
        self.n += a.size
        self.min, self.max = min(self.min, float(a.min())), max(self.max, float(a.max()))
        return self

    def merge(self, other):
        """A new histogram of both (same number of bins)."""
        if other.bins != self.bins:
            raise ValueError(f"Histogram.merge: {self.bins} bins vs {other.bins}")
        a, b = copy.deepcopy(self), copy.deepcopy(other)
        if a.range is None or b.range is None:
            return b if a.range is None else a
        while a.range < b.range:
            a._double()
        while b.range < a.range:
            b._double()
        a.counts += b.counts
        a.n += b.n
        a.min, a.max = min(a.min, b.min), max(a.max, b.max)
        return a

    def _order_stat(self, k, cum):
        """The k-th smallest value (0-based), placed evenly inside its bin."""
        i = min(int(np.searchsorted(cum, k, side="right")), self.bins - 1)
        before = cum[i - 1] if i else 0
        v = -self.range + self.width * (i + (k - before + 0.5) / max(self.counts[i], 1))
        return min(max(v, self.min), self.max)

    def percentile(self, p):
        """numpy.percentile's linear interpolation between the order statistics around
        rank p/100 (n - 1), each located inside its bin."""
        if self.n == 0:
            raise ValueError("Histogram.percentile: no values")
        rank = float(p) / 100.0 * (self.n - 1)
        cum = np.cumsum(self.counts)
        k = int(math.floor(rank))
        lo = self._order_stat(k, cum)
        hi = self._order_stat(min(k + 1, self.n - 1), cum)
        return float(lo + (rank - k) * (hi - lo))

    def __repr__(self):
        return f"Histogram(n={self.n}, range=+-{self.range}, bins={self.bins})"


# ------------------------------------------------------------------------- extraction
class Extraction:
    """Values per kernel layer and role ('kernel', 'input', 'output'), as arrays or as
    Histograms. ``get(layer, role)``; ``values(role)`` over all layers (S4 Figures 15, 17)."""

    def __init__(self, data, kinds, unit_of, histogram):
        self.data, self.kinds, self.unit_of, self.histogram = data, kinds, unit_of, histogram

    @property
    def layers(self):
        return list(self.data)

    def get(self, layer, role):
        if layer not in self.data:
            raise ValueError(f"Extraction: no layer {layer!r} (have {', '.join(self.data)})")
        if role not in self.data[layer]:
            raise ValueError(f"Extraction: role {role!r} was not extracted (have {', '.join(self.data[layer])})")
        return self.data[layer][role]

    def values(self, role, layers=None):
        parts = [self.get(name, role) for name in (layers or self.layers)]
        if self.histogram:
            out = parts[0]
            for h in parts[1:]:
                out = out.merge(h)
            return out
        return np.concatenate([np.ravel(p) for p in parts])

    def by_unit(self):
        """{unit: [layer names]} in order."""
        out = {}
        for name in self.layers:
            out.setdefault(self.unit_of[name], []).append(name)
        return out

    def save(self, path):
        """Arrays (or histogram counts) to an .npz file, keys ``<layer>:<role>``."""
        arrays = {}
        for name, roles in self.data.items():
            for role, v in roles.items():
                if self.histogram:
                    arrays[f"{name}:{role}:counts"] = v.counts
                    arrays[f"{name}:{role}:range"] = np.array([v.range, v.min, v.max, v.n], np.float64)
                else:
                    arrays[f"{name}:{role}"] = v
        np.savez_compressed(path, **arrays)

    def __repr__(self):
        roles = sorted({r for v in self.data.values() for r in v})
        return f"Extraction({len(self.data)} layers, roles={roles}, {'histograms' if self.histogram else 'arrays'})"


def extract(model, x, layers=None, roles=ROLES, batch_size=64, histogram=False, bins=4096):
    r"""Run ``x`` through the model (inference mode) and collect, per Conv2D/Dense layer,
    the kernel, the layer's input and its output before bias and activation (the
    convolution result :math:`z = x * w`), as arrays or, with ``histogram=True``,
    streaming Histograms (any number of samples in bounded memory). A quantized model
    gives the values as it computes them (quantized input, quantized z)."""
    from .model import as_input
    model._require_built()
    for r in roles:
        if r not in ROLES:
            raise ValueError(f"extract: unknown role {r!r} (expected some of {', '.join(ROLES)})")
    x = as_input(x, "extract: x")
    if x.shape[1:] != tuple(model.input_shape):
        raise ValueError(f"extract: expected samples of shape {tuple(model.input_shape)}, got {x.shape[1:]}")
    if len(x) == 0:
        raise ValueError("extract: x is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"extract: expected batch_size >= 1, got {batch_size!r}")
    model._maybe_calibrate(x)
    chosen = kernel_layers(model, layers)
    g = model._graph
    parts = {k.name: {r: [] for r in roles} for k in chosen}
    hists = {k.name: {r: Histogram(bins) for r in roles} for k in chosen} if histogram else None
    for b0 in range(0, len(x), int(batch_size)):
        g.forward(x[b0:b0 + int(batch_size)], False)
        for layer in chosen:
            nodes = _nodes(model, layer)
            got = {}
            if "input" in roles:
                got["input"] = g.activation(model._layer_inputs[id(layer)][0])
            if "output" in roles:
                z = g.activation(nodes[0])
                if layer.use_bias:  # the op adds the bias after the (quantized) product
                    b = g.get_param(nodes[0], 1)
                    z = z - b.reshape((1, -1) + (1,) * (z.ndim - 2))
                got["output"] = z
            for r, v in got.items():
                (hists[layer.name][r].add(v) if histogram else parts[layer.name][r].append(v))
    data = {}
    for layer in chosen:
        nodes = _nodes(model, layer)
        d = hists[layer.name] if histogram else {r: np.concatenate(v) for r, v in parts[layer.name].items()
                                                if r != "kernel"}
        if "kernel" in roles:
            w = g.get_param(nodes[0], 0)
            d["kernel"] = Histogram(bins).add(w) if histogram else w
        data[layer.name] = {r: d[r] for r in roles}
    return Extraction(data, {k.name: type(k).__name__ for k in chosen}, {k.name: _unit_name(k) for k in chosen},
                      histogram)


# ------------------------------------------------------------------ percentiles and MSB
def msb_from_limits(limits):
    r"""S4 Equation 11: :math:`MSB = \lceil \log_2 \max |limit| \rceil` - the smallest
    power-of-two range :math:`\pm 2^{MSB}` holding the limits. ``limits``: a number, a
    (low, high) pair or any array of limits; all-zero limits give 0 (as
    ``lb.formats.msb_from_percentile``)."""
    a = np.abs(np.asarray(limits, np.float64)).reshape(-1)
    if a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"msb_from_limits: expected finite limits, got {limits!r}")
    m = float(a.max())
    return 0 if m == 0 else int(math.ceil(math.log2(m)))


def _limits(v, p):
    if isinstance(v, Histogram):
        return v.percentile(100 - p), v.percentile(p)
    lo, hi = np.percentile(np.asarray(v, np.float64).reshape(-1), [100 - p, p])
    return float(lo), float(hi)


def _stats_by_layer(stats, role, by):
    """{name: values} from an Extraction (per layer or per unit), a dict or one array."""
    if isinstance(stats, Extraction):
        if by == "layer":
            return {name: stats.get(name, role) for name in stats.layers}
        return {u: stats.values(role, names) for u, names in stats.by_unit().items()}
    if isinstance(stats, dict):
        return dict(stats)
    return {"values": stats}


class Limits(Table):
    """Percentile limits per layer (or unit) and overall ('all'): low, high, max |limit|
    and the MSB of Equation 11."""

    def msb(self, percentile):
        """{layer: MSB} at one percentile."""
        rows = self.where(percentile=percentile)
        if not rows:
            raise ValueError(f"Limits.msb: percentile {percentile} not in the table")
        return {r["layer"]: r["msb"] for r in rows}


def percentile_limits(stats, percentiles=PERCENTILES, role="kernel", by="layer"):
    """Limits (the (100-p)-th and p-th percentiles, as numpy.percentile) of the values of
    ``role`` per layer (``by="unit"``: per unit) and over all layers - S4 Tables 2-3 and
    Figures 16, 18. ``stats``: an Extraction, {name: values} or one array."""
    if role not in ROLES:
        raise ValueError(f"percentile_limits: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    if by not in ("layer", "unit"):
        raise ValueError(f"percentile_limits: expected by='layer' or 'unit', got {by!r}")
    ps = [float(p) for p in (percentiles if isinstance(percentiles, (list, tuple)) else [percentiles])]
    for p in ps:
        if not 50 < p <= 100:
            raise ValueError(f"percentile_limits: expected percentiles in (50, 100], got {p}")
    named = _stats_by_layer(stats, role, by)
    if isinstance(stats, Extraction):
        named["all"] = stats.values(role)
    rows = []
    for name, v in named.items():
        for p in ps:
            lo, hi = _limits(v, p)
            rows.append({"layer": name, "percentile": p, "low": lo, "high": hi, "limit": max(abs(lo), abs(hi)),
                         "msb": msb_from_limits((lo, hi))})
    return Limits(rows, [("layer", "layer", None), ("percentile", "percentile", "{:g}"), ("low", "low", "{:.4g}"),
                         ("high", "high", "{:.4g}"), ("limit", "max |limit|", "{:.4g}"), ("msb", "MSB", "{}")],
                  title=f"{role} percentile limits (S4 Eq. 11 MSB)")


def msb_table(stats, percentiles=PERCENTILES, roles=("kernel", "output"), by="unit"):
    """S4 Table 11: the Equation 11 MSB of each role at each percentile, one row per unit
    (or layer)."""
    rows = {}
    for role in roles:
        for r in percentile_limits(stats, percentiles, role, by):
            if r["layer"] == "all":
                continue
            rows.setdefault(r["layer"], {"layer": r["layer"]})[f"{role}_{r['percentile']:g}"] = r["msb"]
    cols = [("layer", "layer", None)] + [(f"{role}_{float(p):g}", f"{role} {float(p):g}%", "{}")
                                        for role in roles for p in percentiles]
    return Table(list(rows.values()), cols, title="MSB per layer and percentile (S4 Table 11)")


def _best_msb(values, bits, rounding, around, signed=True):
    """The MSB (of a few around ``around``) whose Fixed grid has the least squared error on
    ``values`` - the trade-off of S4 Table 7 between clipping and resolution."""
    v = np.ascontiguousarray(values, np.float32).reshape(-1)
    if v.size > 1 << 20:  # a fixed stride sample is plenty for a mean squared error
        v = np.ascontiguousarray(v[:: v.size // (1 << 20) + 1])
    best, best_err = around, math.inf
    for m in range(around - 4, around + 1):
        q = F.Fixed(bits, msb=max(min(m, 127), -126), rounding=rounding, signed=signed).quantize(v)
        err = float(np.mean((q.astype(np.float64) - v) ** 2))
        if err < best_err:
            best, best_err = m, err
    return best


# ---------------------------------------------------------------------------- schemes
class Scheme:
    """How a layer's w-i-o bits and MSBs become number formats.

    ``weight``: ``"fixed"`` - S4's Fixed(bits, msb) over the whole kernel; ``"per_channel"``
    - Int(bits) with one scale per output channel, the clipping chosen by least squared
    error (beyond the seed). ``activation``: ``"fixed"`` - Fixed(bits, msb) on the input and
    output; ``"int"`` - Int(bits) scaled by a running 99.99th percentile of |x|.
    ``rounding``: ``"floor"`` (the seed's quantclip, biased by -q/2) or ``"nearest"`` for
    the Fixed roles; ``ste``: their gradient rule ("identity" as the seed, or "clipped":
    zero outside the range). ``unsigned_input=True``: the input is an unsigned
    Fixed(bits, msb, signed=False) - every layer's input is a ReLU output (or the image),
    the signed grid leaves half its codes unused on it (beyond the seed).
    ``unsigned_output=True``: the output too. It is taken before the bias and the ReLU, so
    this is exact only where the bias is <= 0; where b > 0 a z in (-b, 0) gives relu(b)
    for relu(z + b) (an error below b), for twice the resolution of z >= 0."""

    def __init__(self, weight="fixed", activation="fixed", rounding="floor", ste="identity", name="custom",
                 unsigned_input=False, unsigned_output=False):
        if weight not in ("fixed", "per_channel"):
            raise ValueError(f"Scheme: unknown weight {weight!r} (expected 'fixed' or 'per_channel')")
        if activation not in ("fixed", "int"):
            raise ValueError(f"Scheme: unknown activation {activation!r} (expected 'fixed' or 'int')")
        if rounding not in ("floor", "nearest"):
            raise ValueError(f"Scheme: unknown rounding {rounding!r} (expected 'floor' or 'nearest')")
        if ste not in ("identity", "clipped"):
            raise ValueError(f"Scheme: unknown ste {ste!r} (expected 'identity' or 'clipped')")
        for what, v in (("unsigned_input", unsigned_input), ("unsigned_output", unsigned_output)):
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"Scheme: expected {what} True or False, got {v!r}")
            if v and activation != "fixed":
                raise ValueError(f"Scheme: {what}=True needs activation='fixed'")
        self.weight, self.activation, self.rounding, self.ste, self.name = weight, activation, rounding, ste, name
        self.unsigned_input, self.unsigned_output = bool(unsigned_input), bool(unsigned_output)

    def signed(self, role):
        return not {"input": self.unsigned_input, "output": self.unsigned_output}.get(role, False)

    def uses_msb(self, role):
        return (self.weight if role == "kernel" else self.activation) == "fixed"

    def format(self, role, bits, msb):
        if bits is None:
            return None
        if not self.uses_msb(role):
            if role == "kernel":
                return F.Int(bits, per_channel=True, calibration="mse")
            return F.Int(bits, calibration="percentile")
        return F.Fixed(bits, msb=int(msb), rounding=self.rounding, ste=self.ste, signed=self.signed(role))

    def config(self):
        return {"name": self.name, "weight": self.weight, "activation": self.activation, "rounding": self.rounding,
                "ste": self.ste, "unsigned_input": self.unsigned_input, "unsigned_output": self.unsigned_output}

    def __repr__(self):
        return (f"Scheme({self.name!r}, weight={self.weight!r}, activation={self.activation!r}, "
                f"rounding={self.rounding!r}, ste={self.ste!r}, unsigned_input={self.unsigned_input}, "
                f"unsigned_output={self.unsigned_output})")


SCHEMES = {
    "s4": lambda: Scheme("fixed", "fixed", "floor", name="s4"),
    "nearest": lambda: Scheme("fixed", "fixed", "nearest", name="nearest"),
    "per_channel": lambda: Scheme("per_channel", "fixed", "nearest", name="per_channel"),
    "per_channel_int": lambda: Scheme("per_channel", "int", "nearest", name="per_channel_int"),
    "unsigned_input": lambda: Scheme("fixed", "fixed", "nearest", name="unsigned_input", unsigned_input=True),
    "per_channel_unsigned_input": lambda: Scheme("per_channel", "fixed", "nearest", name="per_channel_unsigned_input",
                                                 unsigned_input=True),
    # the clipped STE: an unsigned output gives 0 for z < 0, so no gradient may pass there
    "unsigned": lambda: Scheme("fixed", "fixed", "nearest", "clipped", name="unsigned", unsigned_input=True,
                               unsigned_output=True),
}


def _scheme(s):
    if isinstance(s, Scheme):
        return s
    if isinstance(s, str) and s in SCHEMES:
        return SCHEMES[s]()
    raise ValueError(f"unknown quantization scheme {s!r} (expected one of {', '.join(SCHEMES)} or a Scheme)")


def _resolutions(r, what="resolutions"):
    if isinstance(r, str):
        r = r.replace(":", "-").split("-")
    try:
        r = tuple(r)
    except TypeError:
        raise ValueError(f"{what}: expected (w, i, o) bits such as (8, 6, 6), got {r!r}") from None
    if len(r) != 3:
        raise ValueError(f"{what}: expected (w, i, o) bits such as (8, 6, 6), got {r!r}")
    out = []
    for b in r:
        if b is None or b in ("", "-", "none", "None"):
            out.append(None)
            continue
        try:
            b = int(b)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: expected integer bits, got {r!r}") from None
        if not 2 <= b <= 24:
            raise ValueError(f"{what}: expected bits in [2, 24], got {b}")
        out.append(b)
    return tuple(out)


def _bits_str(bits):
    return "-".join("f" if b is None else str(b) for b in bits)


def _msb_tuple(m, what):
    if isinstance(m, (tuple, list)) and len(m) == 3 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in m):
        return tuple(int(v) for v in m)
    raise ValueError(f"{what}: expected (w, i, o) MSB exponents, got {m!r}")


def _check_msb(msb):
    """'auto', a percentile, a (w, i, o) tuple, {layer or unit: (w, i, o)} or a list per unit."""
    if msb == "auto":
        return msb
    if isinstance(msb, numbers.Real) and not isinstance(msb, bool):
        if not 50 < float(msb) <= 100:
            raise ValueError(f"msb: expected a percentile in (50, 100], got {msb}")
        return float(msb)
    if isinstance(msb, dict):
        return {k: _msb_tuple(v, f"msb[{k!r}]") for k, v in msb.items()}
    if isinstance(msb, (tuple, list)) and len(msb) == 3 and all(isinstance(v, numbers.Integral) for v in msb):
        return _msb_tuple(msb, "msb")
    if isinstance(msb, (tuple, list)):
        return [_msb_tuple(v, f"msb[{i}]") for i, v in enumerate(msb)]
    raise ValueError(f"msb: expected 'auto', a percentile, (w, i, o) or per-layer MSBs, got {msb!r}")


def choose_msbs(model, layers, bits, msb, scheme, x=None, unit_index=None):
    """{layer name: (w, i, o) MSB} for ``layers`` at ``bits`` (see ``quantize_layers``)."""
    scheme, msb = _scheme(scheme), _check_msb(msb)
    if isinstance(msb, tuple):
        return {k.name: msb for k in layers}
    if isinstance(msb, dict):
        out = {}
        for k in layers:
            key = k.name if k.name in msb else _unit_name(k)
            if key not in msb:
                raise ValueError(f"msb: no MSBs given for layer {k.name}")
            out[k.name] = msb[key]
        return out
    if isinstance(msb, list):
        names = [u for u, _ in units(model)]
        out = {}
        for k in layers:
            i = names.index(_unit_name(k)) if unit_index is None else unit_index
            if i >= len(msb):
                raise ValueError(f"msb: {len(msb)} MSB triples given, unit {_unit_name(k)} is number {i + 1}")
            out[k.name] = msb[i]
        return out
    if x is None:
        raise ValueError("quantize_layers: msb from data ('auto' or a percentile) needs x (calibration samples)")
    roles = [r for r, b in zip(ROLES, bits) if b is not None and scheme.uses_msb(r)]
    stats = extract(model, x, [k.name for k in layers], roles=roles or ("kernel",)) if roles else None
    out = {}
    for k in layers:
        m = []
        for role, b in zip(ROLES, bits):
            if role not in roles:
                m.append(0)
                continue
            v = stats.get(k.name, role)
            lim = _limits(v, 100.0 if msb == "auto" else msb)
            if not scheme.signed(role):  # Eq. 11 on the high limit: [0, 2^MSB) holds no negatives
                lim = max(lim[1], 0.0)
            if msb == "auto":
                m.append(_best_msb(v, b, scheme.rounding, msb_from_limits(lim), scheme.signed(role)))
            else:
                m.append(msb_from_limits(lim))
        out[k.name] = tuple(m)
    return out


# ------------------------------------------------------------------------------ copies
def _topological(outputs):
    order, seen, stack = [], set(), [(outputs, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        stack += [(u, False) for u in reversed(t.inputs) if id(u) not in seen]
    return order


def _rebuilt(model, replace=None):
    """A new functional Model of copies of the layers; ``replace(t, new_inputs)`` may
    return a tensor to use instead of copying layer t (or None)."""
    from .layers import Input
    from .model import Model
    inp, out = model._io
    new = {}
    for t in _topological(out):
        if t is inp:
            new[id(t)] = Input(inp.layer.input_shape, name=inp.layer.name)
            continue
        ins = [new[id(u)] for u in t.inputs]
        r = replace(t, ins) if replace else None
        new[id(t)] = r if r is not None else copy.deepcopy(t.layer)(*ins)
    return Model(new[id(inp)], new[id(out)], name=model.name, seed=model.seed)


def _compile_like(new, model):
    if model._compiled is not None:
        opt, loss = model._compiled
        new.compile(copy.deepcopy(opt), loss, metrics=["accuracy"], precision=copy.deepcopy(model._precision))
    new._epochs_done = model._epochs_done


def copy_model(model):
    """An independent copy: same layers (and their formats), weights, quantizer state,
    compile settings (with fresh optimizer state) and step."""
    from .model import Sequential
    model._require_built()
    if isinstance(model, Sequential):
        new = Sequential(copy.deepcopy(model.layers), name=model.name, seed=model.seed)
        new.build(model.input_shape)
    else:
        new = _rebuilt(model)
    _compile_like(new, model)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "w.npz")
        model.save_weights(p)
        new.load_weights(p)
    new._calibrated = model._calibrated
    return new


# ------------------------------------------------------------------ off-/on-model
def _per_layer(spec, layers, what):
    if isinstance(spec, dict):
        missing = [k.name for k in layers if k.name not in spec and _unit_name(k) not in spec]
        if missing:
            raise ValueError(f"{what}: no format for layer(s) {', '.join(missing)}")
        return {k.name: spec.get(k.name, spec.get(_unit_name(k))) for k in layers}
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(layers):
            raise ValueError(f"{what}: {len(spec)} formats for {len(layers)} layers")
        return {k.name: f for k, f in zip(layers, spec)}
    return {k.name: spec for k in layers}


def quantize_weights(model, formats, layers=None):
    """Off-model quantization (S4 Tables 4-5): a copy of ``model`` whose kernels are
    replaced by their quantized values, ``formats`` one Format for all chosen layers,
    {layer or unit: Format} or a list per layer. Per-channel formats take the conv's
    output channels as rows. The model itself is not changed; biases stay float."""
    chosen = kernel_layers(model, layers)
    per = _per_layer(formats, chosen, "quantize_weights")
    out = copy_model(model)
    g = out._graph
    for k in kernel_layers(out, [c.name for c in chosen]):
        f = F.get(per[k.name])
        if f is None:
            continue
        f = copy.deepcopy(f)  # each kernel its own quantizer state
        n = _nodes(out, k)[0]
        w = g.get_param(n, 0)
        rows = w.shape[0] if w.ndim == 4 else 1  # OIHW conv kernels: per output channel
        g.set_param(n, 0, f.quantize(w, rows))
    return out


def _set_roles(layer, fmts):
    for role, f in fmts.items():
        setattr(layer, f"{_FORMAT_ROLE[role]}_format", f)


def quantize_layers(model, resolutions=(8, 6, 6), msb="auto", layers=None, x=None, scheme="s4"):
    """On-model quantization (S4 Tables 6-9), in place: kernel, input and output of the
    chosen layers (names of layers or units; default all) get formats of ``resolutions``
    (w, i, o) bits - None leaves that role float - and the graph is rebuilt keeping the
    weights. ``msb``: (w, i, o) for every layer (the seed's generic 0-9-9), a percentile
    (Eq. 11 on each layer's values in ``x``), ``"auto"`` (per layer and role the MSB with
    the least squared quantization error on ``x``), {layer or unit: (w, i, o)} or a list
    per unit. Returns {layer: {"bits", "msb", "formats"}}."""
    bits = _resolutions(resolutions)
    scheme = _scheme(scheme)
    chosen = kernel_layers(model, layers)
    msbs = choose_msbs(model, chosen, bits, msb, scheme, x=x)
    out = {}
    for k in chosen:
        fmts = {r: scheme.format(r, b, m) for r, b, m in zip(ROLES, bits, msbs[k.name])}
        _set_roles(k, fmts)
        out[k.name] = {"bits": list(bits), "msb": list(msbs[k.name]),
                       "formats": {r: (f.config() if f else None) for r, f in fmts.items()}}
    model._rebuild()
    return out


def clear_quantization(model, layers=None):
    """Remove the kernel/input/output formats set on layers (back to float), in place."""
    for k in kernel_layers(model, layers):
        _set_roles(k, dict.fromkeys(ROLES))
    model._rebuild()


def layer_formats(model):
    """{layer: {role: format config}} of the formats set on layers (JSON-ready)."""
    out = {}
    for k in kernel_layers(model):
        fm = {r: getattr(k, f"{_FORMAT_ROLE[r]}_format") for r in ROLES}
        fm = {r: f.config() for r, f in fm.items() if f is not None}
        if fm:
            out[k.name] = fm
    return out


def apply_layer_formats(model, spec):
    """Set the formats of ``layer_formats`` output on the layers of the same names and
    rebuild (keeping weights)."""
    ks = {k.name: k for k in kernel_layers(model)}
    unknown = sorted(set(spec) - set(ks))
    if unknown:
        raise ValueError(f"{model.name}: the saved formats name layers it does not have: {', '.join(unknown)}")
    for name, k in ks.items():
        fm = spec.get(name, {})
        _set_roles(k, {r: (F.from_config(fm[r]) if r in fm else None) for r in ROLES})
    model._rebuild()


# -------------------------------------------------------------------- batch-norm folding
def fold_batch_norm(model):
    r"""A new model with every BatchNormalization that directly follows a Conv2D/Dense
    without activation (and is its only consumer) folded into that layer (inference
    statistics): :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`, :math:`w' = s\,w` per
    output channel, :math:`b' = s\,(b - \mu) + \beta`. Quantizing w' then quantizes what
    the network really multiplies by (Jacob et al. 2018)."""
    from .layers import BatchNormalization
    model._require_built()
    inp, out = model._io
    order = _topological(out)
    consumers = {}
    for t in order:
        for u in t.inputs:
            consumers[id(u)] = consumers.get(id(u), 0) + 1
    folded = {}  # new kernel layer name -> (old kernel layer, bn layer)

    def replace(t, ins):
        if not isinstance(t.layer, BatchNormalization):
            return None
        src = t.inputs[0]
        k = src.layer
        if not hasattr(k, "weight_format") or k.activation is not None or consumers.get(id(src), 0) != 1:
            return None
        conv_t = ins[0]  # the copy of k, made just before (topological order)
        conv_t.layer.use_bias = True
        folded[conv_t.layer.name] = (k, t.layer)
        return conv_t

    new = _rebuilt(model, replace)
    old = _layer_params(model)
    g = new._graph
    for layer, nodes in new._layers:
        if layer.name in folded:
            k, bn = folded[layer.name]
            w = old[k.name][0]
            b = old[k.name][1] if k.use_bias else np.zeros(w.shape[0] if w.ndim == 4 else w.shape[1], np.float32)
            gamma, beta, mean, var = (a.astype(np.float64) for a in old[bn.name])
            s = gamma / np.sqrt(var + bn.epsilon)
            w2 = w * (s.reshape(-1, 1, 1, 1) if w.ndim == 4 else s.reshape(1, -1))
            params = [w2.astype(np.float32), (s * (b - mean) + beta).astype(np.float32)]
        else:
            params = old[layer.name]
        i = 0
        for n in nodes:
            for k_ in range(len(g.node_params(n))):
                g.set_param(n, k_, np.ascontiguousarray(params[i], np.float32))
                i += 1
    _compile_like(new, model)
    return new


# ------------------------------------------------------------------------- progressive
def grl_schedule(resolutions, steps=(16, 12, 8, 6, 4)):
    """Gradual Resolution Loss: the w-i-o bits of each phase - every role at the step's
    bits, never below its target - until the targets are reached, e.g. (8, 6, 6) ->
    16-16-16, 12-12-12, 8-8-8, 8-6-6."""
    target = _resolutions(resolutions)
    if not steps or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 2 for s in steps):
        raise ValueError(f"grl_schedule: expected steps of integer bits >= 2, got {steps!r}")
    if list(steps) != sorted(steps, reverse=True):
        raise ValueError(f"grl_schedule: expected decreasing steps, got {steps!r}")
    out = []
    for s in list(steps) + [0]:
        bits = tuple(None if t is None else max(int(s), t) for t in target)
        if not out or bits != out[-1]:
            out.append(bits)
        if bits == target:
            break
    return out


class ProgressiveHistory(Table):
    """One row per epoch (epoch 0: the model before quantization): phase, unit just
    quantized (for GRL the bits), train and validation loss/accuracy. ``phases``: per phase
    the unit, bits, MSBs, first epoch and the validation accuracy right after quantizing
    (before any training). ``plot()`` draws S4 Figures 22-25."""

    def __init__(self, rows, phases, settings):
        cols = [("epoch", "epoch", "{}"), ("phase", "phase", "{}"), ("unit", "unit", None), ("bits", "w-i-o", None),
                ("loss", "loss", "{:.4f}"), ("accuracy", "accuracy", "{:.4f}"), ("val_loss", "val loss", "{:.4f}"),
                ("val_accuracy", "val accuracy", "{:.4f}"), ("epoch_time", "s/epoch", "{:.1f}")]
        super().__init__(rows, cols, title=f"progressive quantization: {settings.get('strategy')}")
        self.phases, self.settings = phases, settings

    @property
    def final_accuracy(self):
        return self.rows[-1]["val_accuracy"]

    def plot(self, path=None, title=None, label=None):
        from .plots import plot_progressive
        return plot_progressive({label or self.settings.get("strategy"): self}, path=path, title=title)

    def to_dict(self):
        return dict(super().to_dict(), phases=self.phases, settings=self.settings)


def _fingerprint(model):
    """A hash of the weights and data-independent layout: a run resumes only from the same
    starting model."""
    import hashlib
    h = hashlib.sha1()
    for w in model.get_weights():
        h.update(str(w.shape).encode())
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_int(v, name, lo=0):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"progressive: expected {name} an integer >= {lo}, got {v!r}")
    return int(v)


def _run_schedule(learning_rate, model, total_epochs):
    """The schedule of a progressive run: None keeps the compiled one; "cosine_restarts"
    gives the rate to restart from at every phase."""
    if learning_rate is None:
        return None
    if isinstance(learning_rate, O.Schedule):
        return learning_rate
    if learning_rate == "cosine":
        return O.CosineDecay(model._compiled[0].learning_rate, t_max=max(total_epochs, 1), per_step=True)
    if learning_rate == "cosine_restarts":
        return O.Schedule(model._compiled[0].learning_rate)
    if isinstance(learning_rate, numbers.Real) and not isinstance(learning_rate, bool) and learning_rate > 0:
        return O.Schedule(float(learning_rate))
    raise ValueError(f"progressive: expected learning_rate None, 'cosine', 'cosine_restarts', a rate > 0 or an "
                     f"lb.optimizers Schedule, got {learning_rate!r}")


def progressive(model, train, val, strategy="quantize_while_train", resolutions=(8, 6, 6), msb="auto",
                epochs_per_layer=1, order="input_to_output", relax_epochs=0, scheme="s4",
                steps=(16, 12, 8, 6, 4), grouping="module", batch_size=128, calibration_samples=256,
                recalibrate=False, learning_rate=None, checkpoint_dir=None, seed=0, verbose=1, callbacks=None):
    """Progressive quantization (S4 section 5.5), in place on a compiled model.

    - ``"quantize_and_lock"``: unit by unit (``order``: ``"input_to_output"``,
      ``"output_to_input"``, ``"random"`` or a list of all unit names), quantize it,
      freeze it, train the rest ``epochs_per_layer`` epochs.
    - ``"quantize_while_train"``: the same, but every layer keeps training.
    - ``"gradual_resolution_loss"``: all layers quantized at once, their bits lowered step
      by step (``grl_schedule(resolutions, steps)``), ``epochs_per_layer`` epochs each.

    ``msb`` as in ``quantize_layers``, chosen for each unit when it is quantized, on the
    first ``calibration_samples`` training images passed through the model as it is then.
    ``relax_epochs``: training after the last phase. ``recalibrate=True``: at every phase
    (and before relaxing) choose again the MSBs of the units quantized before that still
    train - under QwT their weights and activations keep moving away from the ranges they
    were quantized with - measured with their formats removed, so a range can grow as well
    as shrink (needs ``msb`` from data: "auto" or a percentile; locked QaL units keep theirs).
    ``learning_rate``: None trains with the compiled optimizer as it is (epochs counted over
    the model's life); a number or an ``lb.optimizers`` Schedule replaces its schedule for
    this run, epoch 0 being the run's first; ``"cosine"``: a per-step cosine from the
    compiled rate to 0 over all the run's epochs; ``"cosine_restarts"``: the same within
    every phase (warm restarts, Loshchilov & Hutter 2017), so the last units quantized get
    as much training as the first. ``checkpoint_dir``: weights and
    progress after every phase; a later call with the same settings and starting model
    resumes after the last finished phase. Frozen flags are restored at the end (the model stays quantized).
    ``seed`` fixes the order, shuffling and dropout. Returns a ProgressiveHistory."""
    if strategy not in STRATEGIES:
        raise ValueError(f"progressive: unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
    if isinstance(order, str) and order not in ORDERS or not isinstance(order, (str, list, tuple)):
        raise ValueError(f"progressive: unknown order {order!r} (expected one of {', '.join(ORDERS)} or a list of "
                         f"unit names)")
    if model._compiled is None:
        raise ValueError("progressive: call compile() first (its optimizer fine-tunes the model)")
    bits = _resolutions(resolutions)
    sch = _scheme(scheme)
    msb = _check_msb(msb)
    epochs = _check_int(epochs_per_layer, "epochs_per_layer")
    relax = _check_int(relax_epochs, "relax_epochs")
    seed = _check_int(seed, "seed")
    _check_int(calibration_samples, "calibration_samples", 1)
    if not isinstance(recalibrate, (bool, np.bool_)):
        raise ValueError(f"progressive: expected recalibrate True or False, got {recalibrate!r}")
    if recalibrate and not (msb == "auto" or isinstance(msb, float)):
        raise ValueError(f"progressive: recalibrate=True chooses MSBs from data; it needs msb='auto' or a "
                         f"percentile, got {msb!r}")
    try:
        (x, y), (xv, yv) = train, val
    except (TypeError, ValueError):
        raise ValueError("progressive: expected train and val as (x, y) pairs") from None
    groups = units(model, grouping)
    if strategy == "gradual_resolution_loss":
        everything = [k for _, ks in groups for k in ks]
        phases = [(_bits_str(b), everything, b) for b in grl_schedule(bits, steps)]
    else:
        seq = list(groups)
        if isinstance(order, (list, tuple)):  # an explicit order: every unit once
            names = [u for u, _ in seq]
            if sorted(map(str, order)) != sorted(names):
                raise ValueError(f"progressive: order must name every unit once ({', '.join(names)}), got {order!r}")
            seq = [seq[names.index(u)] for u in order]
        elif order == "output_to_input":
            seq = seq[::-1]
        elif order == "random":
            seq = [seq[i] for i in np.random.default_rng(seed).permutation(len(seq))]
        phases = [(u, ks, bits) for u, ks in seq]
    total_epochs = len(phases) * epochs + relax
    schedule = _run_schedule(learning_rate, model, total_epochs)
    settings = {"strategy": strategy, "resolutions": list(bits), "msb": msb if not isinstance(msb, dict) else
                {k: list(v) for k, v in msb.items()}, "epochs_per_layer": epochs, "order": order,
                "relax_epochs": relax, "scheme": sch.config(), "steps": list(steps), "grouping": grouping,
                "batch_size": int(batch_size), "calibration_samples": int(calibration_samples), "seed": seed,
                "recalibrate": bool(recalibrate), "learning_rate": None if schedule is None else
                dict(schedule.config(), initial_learning_rate=schedule.initial_learning_rate,
                     restarts=learning_rate == "cosine_restarts"),
                "units": [p[0] for p in phases], "train_samples": int(len(x)), "model": model.name,
                "start_weights": _fingerprint(model)}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    frozen_before = {k.name: k.trainable for k in kernel_layers(model)}
    if schedule is not None:
        opt, loss = model._compiled
        opt = copy.deepcopy(opt)  # the caller's optimizer object keeps its schedule
        opt.schedule = schedule
        model._compiled = (opt, loss)
        model._apply_compile()
    rows, done_phases, start = [], [], 0
    quantized = {}  # layer name -> the bits it is quantized at
    state_path = os.path.join(checkpoint_dir, "progress.json") if checkpoint_dir else None
    if state_path:
        os.makedirs(checkpoint_dir, exist_ok=True)
        if os.path.exists(state_path):
            start, rows, done_phases = _resume(model, state_path, settings, sch)
            for ph in done_phases:
                quantized.update({name: tuple(d["bits"]) for name, d in ph["layers"].items()})
    if not rows:
        ev = model.evaluate(xv, yv, batch_size=256)
        rows.append({"epoch": 0, "phase": 0, "unit": "float", "bits": "32-32-32", "loss": None, "accuracy": None,
                     "val_loss": ev["loss"], "val_accuracy": ev["accuracy"], "epoch_time": 0.0})
    total = len(phases) + (1 if relax else 0)
    for i in range(start, total):
        relaxing = i == len(phases)
        unit, layers, b = ("relax", [], bits) if relaxing else phases[i]
        t0 = time.perf_counter()
        info = {"phase": i + 1, "unit": unit, "bits": _bits_str(b), "start_epoch": rows[-1]["epoch"] + 1,
                "layers": {}}
        todo = [] if relaxing else [(k, b) for k in layers]
        now = {id(k) for k in layers}
        if recalibrate:  # and the units quantized before that still train, with their bits
            todo += [(k, tuple(quantized[k.name])) for k in kernel_layers(model)
                     if k.name in quantized and id(k) not in now and k.trainable]
            for k, _ in todo:  # measure float values: a quantized z is clipped at its old range
                _set_roles(k, dict.fromkeys(ROLES))
            model._rebuild()
        msbs = {}
        for bb in dict.fromkeys(bb for _, bb in todo):
            msbs.update(choose_msbs(model, [k for k, kb in todo if kb == bb], bb, msb, sch, x=x[:calibration_samples],
                                    unit_index=[u for u, _ in groups].index(unit) if isinstance(msb, list) else None))
        for k, bb in todo:
            _set_roles(k, {r: sch.format(r, v, m) for r, v, m in zip(ROLES, bb, msbs[k.name])})
            entry = {"bits": list(bb), "msb": list(msbs[k.name])}
            if id(k) in now:
                if strategy == "quantize_and_lock":
                    k.trainable = False
                info["layers"][k.name] = dict(entry, locked=not k.trainable)
                quantized[k.name] = bb
            else:
                info.setdefault("recalibrated", {})[k.name] = entry
        if todo:
            model._rebuild()  # new formats and frozen flags; fresh optimizer state
            info["val_accuracy_quantized"] = model.evaluate(xv, yv, batch_size=256)["accuracy"]
        n_ep = relax if relaxing else epochs
        if verbose:
            extra = f", val accuracy right after quantizing {info['val_accuracy_quantized']:.4f}" if todo else ""
            print(f"phase {i + 1}/{total}: {unit} at {_bits_str(b)}{extra}; {n_ep} epochs", flush=True)
        at = {} if schedule is None else {"initial_epoch": rows[-1]["epoch"]}  # the run's own epochs
        if learning_rate == "cosine_restarts":  # epochs of the phase: 0 .. n_ep - 1
            opt, loss = model._compiled
            opt.schedule = O.CosineDecay(schedule.initial_learning_rate, t_max=max(n_ep, 1), per_step=True)
            model._apply_compile()
            at = {"initial_epoch": 0}
        h = model.fit(x, y, batch_size=batch_size, epochs=n_ep + at.get("initial_epoch", 0),
                      validation_data=(xv, yv), seed=seed + 1000 * (i + 1), verbose=verbose, callbacks=callbacks,
                      **at)
        for e in range(len(h.history.get("loss", []))):
            rows.append({"epoch": rows[-1]["epoch"] + 1, "phase": i + 1, "unit": unit, "bits": _bits_str(b),
                         **{k: h.history[k][e] for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                                        "epoch_time")}})
        info["seconds"] = time.perf_counter() - t0
        done_phases.append(info)
        if state_path:
            _checkpoint(model, checkpoint_dir, state_path, settings, i + 1, rows, done_phases)
    for k in kernel_layers(model):
        k.trainable = frozen_before.get(k.name, True)
    model._rebuild()
    return ProgressiveHistory(rows, done_phases, settings)


def _checkpoint(model, folder, state_path, settings, phases_done, rows, phases):
    weights = os.path.join(folder, f"phase_{phases_done:03d}.npz")
    model.save_weights(weights)
    _write_json(state_path, {"settings": settings, "phases_done": phases_done, "weights": os.path.basename(weights),
                             "epochs_done": model._epochs_done, "rows": rows, "phases": phases,
                             "trainable": {k.name: k.trainable for k in kernel_layers(model)}})
    for f in os.listdir(folder):  # the progress file now points past older weights
        if f.startswith("phase_") and f.endswith(".npz") and f != os.path.basename(weights):
            os.unlink(os.path.join(folder, f))


def _resume(model, state_path, settings, scheme):
    with open(state_path) as f:
        st = json.load(f)
    if st.get("settings") != settings:
        old = st.get("settings") or {}
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise ValueError(f"progressive: the checkpoint in {os.path.dirname(state_path)} was made with other settings "
                         f"({', '.join(diff)}); use another checkpoint_dir or the same settings")
    ks = {k.name: k for k in kernel_layers(model)}
    for ph in st["phases"]:
        for name, d in ph["layers"].items():
            if name not in ks:
                raise ValueError(f"progressive: the checkpoint names a layer {name!r} the model does not have")
            _set_roles(ks[name], {r: scheme.format(r, b, m) for r, b, m in zip(ROLES, d["bits"], d["msb"])})
        for name, d in ph.get("recalibrated", {}).items():
            _set_roles(ks[name], {r: scheme.format(r, b, m) for r, b, m in zip(ROLES, d["bits"], d["msb"])})
    for name, trainable in st["trainable"].items():
        ks[name].trainable = trainable
    model._rebuild()
    model.load_weights(os.path.join(os.path.dirname(state_path), st["weights"]))
    model._epochs_done = int(st["epochs_done"])
    return int(st["phases_done"]), st["rows"], st["phases"]
