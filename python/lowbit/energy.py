r"""Energy **estimate** of a model at its precision, from a per-operation table.

This is arithmetic on operation counts, not a measurement: it says what the same
network would cost on hardware that computes each multiply-add and moves each word
in the model's number formats, at the energies of one published 45 nm table.

Table (``ENERGY_PJ``, picojoules): M. Horowitz, "Computing's energy problem (and what
we can do about it)", ISSCC 2014, 45 nm, 0.9 V; the per-32-bit memory figures as
tabulated from it by Han et al., "Learning both weights and connections", NeurIPS 2015.

=====================  =========  =========  =========================================
operation              multiply   add        note
=====================  =========  =========  =========================================
fp32                   3.7        0.9
fp16                   1.1        0.4        also used for bf16 and smaller floats
int32                  3.1        0.1
int16                  0.8        0.05       multiply interpolated: 0.2 x (16/8)^2
int8                   0.2        0.03
binary (XNOR-popcnt)   0.00375    0.03       assumption, not in the paper: XNOR = one
                                             bit-slice of the 8-bit adder (0.03 / 8),
                                             popcount accumulation = one 8-bit add
SRAM read, 32 bit      5.0                   8 KB array
DRAM read, 32 bit      640.0
=====================  =========  =========  =========================================

A format without its own row takes the next wider row of its kind (bf16 and fp8 ->
fp16, int4 -> int8, Fixed(12) -> int16): an upper bound. MX block formats count as
their element (MXFP4 as a 4-bit float, MXINT8 as int8); the one scale multiply per
block is left out.

Formula, per image, for each Conv2D / Dense layer :math:`l` with :math:`M_l` MACs
(``graph.node_macs``: multiply-adds of the conv / dense op, no bias):

- multiply kind and width: both weight and input formats on an integer grid (Fixed,
  Int, Ternary, Binary) -> integer multiply of the wider (1 x 1 bit -> binary);
  otherwise float multiply of the wider float (no format = fp32);
- accumulate: an integer multiply adds into an **int32** accumulator; a float multiply
  adds at its own width (fp16 hardware adds in fp16), unless the layer has an
  ``accum`` format, whose row is used;
- backward: two products per forward MAC (input gradient and weight gradient) in the
  ``grad`` format (fp32 when the precision leaves gradients in fp32, as ``fixed8`` and
  ``fw16bw32`` do), accumulated in ``grad_accum`` when the layer has one;
- memory: the deployed weights (the model summary's memory: ``bits`` of the weight
  format per kernel entry, 32 for biases and batch-norm parameters) are read from DRAM
  once per batch; each layer's input and output are read / written once in SRAM at
  their format's width.

.. math::

   E_{\mathrm{inf}} = \sum_l M_l\,(e_{\times}(f_l) + e_{+}(a_l))
       + \frac{W_{\mathrm{bits}}}{32}\,\frac{e_{\mathrm{DRAM}}}{B}
       + \sum_l \frac{n^{in}_l b^{in}_l + n^{out}_l b^{out}_l}{32}\,e_{\mathrm{SRAM}}

   E_{\mathrm{train}} = E_{\mathrm{inf}} + \sum_l 2 M_l\,(e_{\times}(g_l) + e_{+}(g_l))
       + \frac{W_{\mathrm{bits}}}{32}\,\frac{e_{\mathrm{DRAM}}}{B}
       + 2\sum_l \frac{n^{in}_l b^{in}_l + n^{out}_l b^{out}_l}{32}\,e_{\mathrm{SRAM}}
       + 2 P\,\frac{e_{\mathrm{DRAM}}}{B}

(the backward reads the weights again and reads / writes activation gradients twice;
the update reads and writes the fp32 master copy of each of the :math:`P` parameters
once per batch; optimizer moments, pooling, activations and the loss are left out).
"""
from __future__ import annotations

from . import formats as F

__all__ = ["ENERGY_PJ", "SOURCE", "op_energy", "estimate"]

SOURCE = "estimate: Horowitz ISSCC 2014, 45 nm per-op energies"

ENERGY_PJ = {
    ("float", 32): {"mul": 3.7, "add": 0.9},
    ("float", 16): {"mul": 1.1, "add": 0.4},
    ("int", 32): {"mul": 3.1, "add": 0.1},
    ("int", 16): {"mul": 0.8, "add": 0.05},
    ("int", 8): {"mul": 0.2, "add": 0.03},
    ("binary", 1): {"mul": 0.03 / 8, "add": 0.03},
    "sram32": 5.0,
    "dram32": 640.0,
}

_INTEGER_GRID = (F.Fixed, F.Int, F.Binary, F.Ternary)


def _operand(fmt):
    """(kind, bits) of a tensor in format ``fmt`` (None = fp32)."""
    if fmt is None or isinstance(fmt, F.Float32):
        return "float", 32
    if isinstance(fmt, _INTEGER_GRID) or (isinstance(fmt, F.MX) and fmt.element == "int8"):
        return "int", int(fmt.bits)
    return "float", int(fmt.bits)  # MiniFloat, and MX blocks by their element


def _row(kind, bits):
    """The table row for ``kind`` at ``bits``: the next wider width of that kind."""
    if kind == "int" and bits == 1:
        return ENERGY_PJ[("binary", 1)]
    widths = sorted(b for k, b in (key for key in ENERGY_PJ if isinstance(key, tuple)) if k == kind)
    if not widths:
        raise ValueError(f"energy: no table row for kind {kind!r}")
    wider = [b for b in widths if b >= bits]
    return ENERGY_PJ[(kind, wider[0] if wider else widths[-1])]


def _mac(kind, bits, accum=None):
    """pJ of one multiply-add of ``kind`` ("int" or "float") operands of ``bits``."""
    row = _row(kind, bits)
    add = row["add"] if kind == "float" or bits == 1 else _row("int", 32)["add"]
    if accum is not None:
        add = _row(*_operand(accum))["add"]
    return row["mul"] + add


def op_energy(weight=None, input=None, accum=None):
    """pJ of one multiply-add with these formats (None = fp32), by the rules above."""
    (kw, bw), (ki, bi) = _operand(weight), _operand(input)
    if kw == ki == "int":
        return _mac("int", max(bw, bi), accum)
    return _mac("float", max(b for k, b in ((kw, bw), (ki, bi)) if k == "float"), accum)


def _numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def estimate(model, batch_size, summary=None):
    """Energy estimate of a built (and compiled) model in microjoules per image:
    ``{"inference_uJ", "train_uJ", "weight_bits", "macs"}`` by the module's formula.
    Counts (MACs, multiply widths, deployed weight bits) are those of the model's
    ``lowbit.summary.Summary`` (pass ``summary`` to reuse one): a layer's input takes
    its input format, or the grid of a QuantAct / BinAct / QuantizedReLU feeding it."""
    from .summary import Summary, _input_bits, _kernel_formats
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"energy.estimate: expected batch_size >= 1, got {batch_size!r}")
    s = summary if summary is not None else Summary(model)
    g = model._graph
    formats, _ = _kernel_formats(model)
    nodes_of = {layer.name: (layer, nodes) for layer, nodes in model._layers}
    producer = {nodes[-1]: layer for layer, nodes in model._layers}
    compute = backward = act = 0.0
    for row in s.rows:
        if row["mac_bits"] is None:  # not a conv / dense layer
            continue
        layer, nodes = nodes_of[row["name"]]
        fm = formats[id(layer)]
        in_bits = _input_bits(model, layer, fm, producer)
        in_kind = _operand(fm["input"])[0] if fm.get("input") is not None else ("int" if in_bits < 32 else "float")
        kind = "int" if _operand(fm.get("weight"))[0] == in_kind == "int" else "float"
        compute += row["macs"] * _mac(kind, row["mac_bits"], fm.get("accum"))
        backward += 2 * row["macs"] * _mac(*_operand(fm.get("grad")), fm.get("grad_accum"))
        n_in = _numel(g.node_shape(model._layer_inputs[id(layer)][0]))
        n_out = _numel(g.node_shape(nodes[0]))
        act += (n_in * in_bits + n_out * _operand(fm.get("output"))[1]) / 32 * ENERGY_PJ["sram32"]
    weight_bits = s.totals["memory_bytes"] * 8
    weights = weight_bits / 32 * ENERGY_PJ["dram32"] / batch_size
    inference = compute + weights + act
    train = inference + backward + weights + 2 * act + 2 * s.totals["params"] * ENERGY_PJ["dram32"] / batch_size
    return {"inference_uJ": inference * 1e-6, "train_uJ": train * 1e-6, "weight_bits": int(weight_bits),
            "macs": int(s.totals["macs"])}
