"""Model summary as a table object: the per-layer view Larq printed for S2 (Tables 5.1
and 6.1) - parameters, bits per parameter, memory and multiply-accumulates by precision.

``model.summary()`` prints it and returns it; ``Summary.rows`` is a list of dicts,
``Summary.totals`` a dict, ``to_pandas()`` a DataFrame, and Jupyter renders it as HTML.

Conventions (those of Larq's summary):

- bits per parameter: a Conv2D/Dense kernel has the bits of its weight format in the
  precision the model is compiled with (fp32 32, Float16/BFloat16 16, MiniFloat(e, m)
  1 + e + m, Fixed/Int(bits) bits, Ternary 2, Binary 1); biases, batch-norm parameters
  and moving statistics stay float32.
- Memory: the bytes of the layer's weight arrays in ``model.export_packed``'s file
  (``lowbit.packed``; training keeps fp32 master weights): a quantized kernel is its
  codes, ``bits`` per weight with each row along the reduction axis (a conv filter, a
  dense unit) padded to whole bytes, plus its fp32 scales (Binary: one per conv filter
  with ``channel_mean_abs``, one per tensor with ``mean_abs``; Int: max|w| per filter or
  per tensor; Ternary: one); everything else 4 bytes per parameter, including the kernels
  of formats that file keeps in fp32 (MX, NVFP4, stochastic rounding, asymmetric or
  non-minmax Int: ``Format.storage_bits`` gives their packed size).
- MACs: multiply-adds of the conv and dense layers per sample, bias excluded:
  :math:`O\\,H_o W_o\\,(C/g)\\,k_h k_w` for a convolution, :math:`K M` for a dense layer.
- MAC precision: the bits of the multiply, max(weight bits, input bits). The input bits
  are those of the layer's input format, or of a ``QuantAct``/``BinAct``/``QuantizedReLU``
  feeding it (through flatten, dropout and max pooling, which keep the grid); else 32.
"""
from __future__ import annotations

import html

from . import layers as _layers
from . import packed as _packed
from . import precision as _precision

__all__ = ["Summary"]

COLUMNS = ("name", "type", "output_shape", "params", "trainable_params", "bits", "memory_bytes", "macs",
           "mac_bits")
_HEADERS = ("Layer (type)", "Output shape", "Params", "Bits", "Memory", "MACs", "MAC bits")
# layers whose output values lie on their input's grid
_KEEP_GRID = (_layers.Flatten, _layers.Dropout, _layers.MaxPooling2D)
_KERNEL_OPS = ("conv2d", "dense")


def readable_bytes(n):
    """1536 -> '1.50 KiB' (binary units, as Larq)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024


def _kernel_formats(model):
    """Format per tensor role of every Conv2D/Dense: the compiled precision's (before
    compile, the default precision's), overridden by formats set on the layer."""
    ks = model._kernel_layers()
    compiled = model._compiled is not None
    p = model._precision if compiled else _precision.get(model.default_precision)
    out = {}
    for i, layer in enumerate(ks):
        if compiled:
            fm = dict(getattr(layer, "_precision_formats", {}))
        else:
            fm = p.formats_for(i, len(ks)) if p is not None else {}
        fm.update({r: getattr(layer, f"{r}_format") for r in _layers.ROLES
                   if getattr(layer, f"{r}_format", None) is not None})
        out[id(layer)] = fm
    return out, p


def _input_bits(model, layer, fm, producer):
    if fm.get("input") is not None:
        return fm["input"].bits
    node = (model._layer_inputs.get(id(layer)) or [None])[0]
    while node in producer:
        prev = producer[node]
        if isinstance(prev, _layers.QuantizedReLU):
            return prev.bits  # 2^bits levels on [0, 1): unsigned
        if isinstance(prev, _layers.QuantAct):
            return prev.format.bits
        if not isinstance(prev, _KEEP_GRID):
            break
        node = model._layer_inputs[id(prev)][0]
    return 32


class Summary:
    """Rows (one dict per layer, keys ``COLUMNS``) and totals of a built model."""

    columns = COLUMNS

    def __init__(self, model):
        model._require_built()
        g = model._graph
        formats, p = _kernel_formats(model)
        producer = {nodes[-1]: layer for layer, nodes in model._layers}
        self.name = model.name
        self.precision = getattr(p, "name", "fp32") if p is not None else "fp32"
        self.rows = []
        params_by_bits, macs_by_bits = {}, {}
        trainable = 0
        for layer, nodes in model._layers:
            fm = formats.get(id(layer))
            wf = fm["weight"] if fm and fm.get("weight") is not None else None
            wbits = wf.bits if wf is not None else 32
            n_params = n_train = mem_bits = 0
            for n in nodes:
                for pname, shape, is_trainable in g.node_params(n):
                    size = 1
                    for d in shape:
                        size *= int(d)
                    bits = wbits if pname == "kernel" else 32
                    n_params += size
                    n_train += size if is_trainable else 0
                    if pname == "kernel" and g.node_kind(n) in _KERNEL_OPS:  # as model.export_packed stores it
                        mem_bits += 8 * _packed.kernel_bytes(wf, shape, g.node_kind(n))
                    else:
                        mem_bits += size * bits
                    params_by_bits[bits] = params_by_bits.get(bits, 0) + size
            macs, mac_bits = 0, None
            if fm is not None:
                macs = sum(int(g.node_macs(n)) for n in nodes if g.node_kind(n) in _KERNEL_OPS)
                mac_bits = max(wbits, _input_bits(model, layer, fm, producer))
                macs_by_bits[mac_bits] = macs_by_bits.get(mac_bits, 0) + macs
            trainable += n_train
            self.rows.append(dict(
                name=layer.name, type=type(layer).__name__, output_shape=tuple(g.node_shape(nodes[-1])),
                params=n_params, trainable_params=n_train,
                bits=wbits if n_params else None,
                memory_bytes=mem_bits / 8, macs=macs, mac_bits=mac_bits))
        total = sum(r["params"] for r in self.rows)
        self.totals = dict(
            params=total, trainable_params=trainable, non_trainable_params=total - trainable,
            memory_bytes=sum(r["memory_bytes"] for r in self.rows), float32_bytes=4 * total,
            macs=sum(r["macs"] for r in self.rows),
            params_by_bits=dict(sorted(params_by_bits.items(), reverse=True)),
            memory_by_bits={b: n * b / 8 for b, n in sorted(params_by_bits.items(), reverse=True)},
            macs_by_bits=dict(sorted(macs_by_bits.items(), reverse=True)))

    # ----- views --------------------------------------------------------------------
    def _cells(self):
        for r in self.rows:
            yield (f"{r['name']} ({r['type']})", str(r["output_shape"]), f"{r['params']:,}",
                   "" if r["bits"] is None else str(r["bits"]), readable_bytes(r["memory_bytes"]) if r["params"] else "",
                   f"{r['macs']:,}" if r["mac_bits"] else "", "" if r["mac_bits"] is None else str(r["mac_bits"]))

    def _total_lines(self):
        t = self.totals
        ratio = t["float32_bytes"] / t["memory_bytes"] if t["memory_bytes"] else 1.0
        by_bits = ", ".join(f"{b}-bit {n:,}" for b, n in t["params_by_bits"].items())
        macs = ", ".join(f"{b}-bit {n:,}" for b, n in t["macs_by_bits"].items())
        return [f"Total params: {t['params']:,} (trainable {t['trainable_params']:,}, "
                f"non-trainable {t['non_trainable_params']:,})",
                f"Params by precision: {by_bits or 'none'}",
                f"Model size: {readable_bytes(t['memory_bytes'])} "
                f"(float-32 equivalent {readable_bytes(t['float32_bytes'])}, {ratio:.2f}x smaller)",
                f"MACs per sample: {t['macs']:,}" + (f" ({macs})" if macs else "")]

    def __str__(self):
        rows = [_HEADERS] + list(self._cells())
        widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADERS))]
        right = (False, False, True, True, True, True, True)

        def fmt(r):
            return "  ".join(c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right)).rstrip()

        line = "-" * (sum(widths) + 2 * (len(widths) - 1))
        out = [f'Model: "{self.name}"  precision: {self.precision}', line, fmt(rows[0]), line]
        out += [fmt(r) for r in rows[1:]]
        return "\n".join(out + [line] + self._total_lines() + [line])

    def __repr__(self):
        return str(self)

    def _repr_html_(self):
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for h in _HEADERS)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in self._cells())
        totals = "".join(f"<li>{esc(s)}</li>" for s in self._total_lines())
        return (f"<div><b>Model: {esc(self.name)}</b> &middot; precision: {esc(self.precision)}"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><ul>{totals}</ul></div>")

    def to_pandas(self):
        """The rows as a pandas DataFrame (totals in ``df.attrs['totals']``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Summary.to_pandas needs pandas (pip install pandas); "
                              "the same data is in .rows and .totals") from None
        df = pd.DataFrame(self.rows, columns=list(COLUMNS))
        df.attrs["totals"] = dict(self.totals)
        return df
