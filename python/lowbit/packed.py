"""Deployable inference files: ``model.export_packed(path)`` / ``lb.load_packed(path)``.

A packed file is a lowbit file (``lowbit.serial``: ZIP of ``.npy`` members and a JSON
header, no pickle, atomic writes, checked readers) of format ``"lowbit-packed"``. It
holds the architecture, the compiled precision (formats, loss, metrics; no optimizer)
and each weight in its number format, as codes along the layer's reduction axis:

============================  ==================================================================
weight format                 stored (``w<i>_codes`` ... per kernel)
============================  ==================================================================
``Binary``                    1 bit per weight (``np.packbits``, 1 = negative, sign(0) = +1),
                              plus ``_scale`` in fp32: per output channel of a Conv2D with
                              ``channel_mean_abs``, one per tensor with ``mean_abs``, none unscaled
``Int(b <= 16)``              b-bit two's-complement codes k, plus ``_amax`` (fp32 max|w| per
symmetric, minmax             output channel of a Conv2D with ``per_channel``, else one):
                              w = k * (amax / (2^(b-1) - 1)), the step in double as the quantizer
``Fixed(b <= 16)``            b-bit codes k, w = k * 2^(msb + 1 - b); the MSB in the header
``Ternary``                   2-bit codes in {-1, 0, 1} plus ``_scale`` (fp32 a)
``Float16``, ``BFloat16``,    the format's bit patterns (sign, exponent, mantissa; Float16 =
``MiniFloat`` (nearest)       IEEE binary16, BFloat16 = float32's top 16 bits), 1 + e + m bits
``MX`` (nearest)              element codes (float elements: bit patterns; MXINT8: k of k 2^-6)
                              plus ``_bscale``, one E8M0 byte per block (X = 2^(byte - 127))
``NVFP4`` (nearest)           E2M1 codes, ``_bscale`` one E4M3 byte per block and ``_tscale``
                              (fp32 max|w| of the tensor: the tensor scale is 2688 / max|w|)
anything else (stochastic     the fp32 latent weights (``w<i>``), quantized on load as the
rounding, Int asymmetric or   simulated model quantizes them (its quantizer state comes along)
non-minmax, > 16 bits)
============================  ==================================================================

Codes of 8, 16 or 32 bits are stored as that integer dtype (row-major (rows, K), one row
per conv filter (O, C kh kw) or dense unit (M, K)); other widths are bit-packed per row
(``np.packbits`` of each code's bits, most significant first; a row ends on a byte).
Biases, batch-norm parameters and float layers stay fp32 (``w<i>``). The quantizers'
state (activation ranges, calibrated MSBs, stochastic-rounding counters: ``step``,
``qmsb_*``, ``qs_*``, ``qh_*``, ``qr_*``, ``qrr_*`` as in a model file) comes along so that the
loaded model quantizes its activations as the exported one did.

**Size.** ``model.summary()``'s memory figure is the sum of the ``nbytes`` of the weight
arrays (``w<i>`` and ``w<i>_*``) of this file: quantizer state and header excluded.

**Exactness.** Export checks that the decoded weights equal the simulated layer's
quantized weights (bit for bit, but for the sign of zeros on integer grids) and that
its quantizer maps them to themselves (NVFP4: with the tensor's max|w| put back on its
largest weight, as the tensor scale depends on it); the loaded model keeps the formats
and has these as its weights, so it runs the same layers (and the same low-precision
kernels) and predicts bit for bit what the exported model predicts.

The loaded model is for inference: ``predict``, ``evaluate``, ``summary``, ``save``.
``fit`` and ``compute_gradients`` raise ValueError: its weights are the quantized ones,
the latent fp32 weights that training updates are not in the file (``model.save`` keeps
them).
"""
from __future__ import annotations

import re

import numpy as np

from . import formats as F
from . import serial as _serial

__all__ = ["export_packed", "load_packed", "encoding", "kernel_bytes", "WEIGHT_ARRAY"]

FORMAT = "lowbit-packed"
WEIGHT_ARRAY = re.compile(r"w\d{4}(_[a-z]+)?")  # the arrays summary() counts


# ----------------------------------------------------------------------- encodings
def encoding(fmt, kind):
    """How a kernel of layer kind ``kind`` ('conv2d'/'dense') in weight format ``fmt`` is
    stored: a dict (JSON-ready) with ``"codes"`` ('sign', 'int', 'fixed', 'ternary',
    'minifloat', 'mx', 'nvfp4' or None for fp32), ``"bits"`` per code and ``"scales"``
    ('channel', 'tensor', 'block' or None), plus the element's layout for float codes."""
    fp32 = {"codes": None, "bits": 32, "scales": None}
    if fmt is None or isinstance(fmt, F.Float32) or getattr(fmt, "rounding", None) == "stochastic":
        return fp32
    per_channel = "channel" if kind == "conv2d" else "tensor"  # the engine: rows = filters of OIHW, else 1
    c = fmt.config()
    if isinstance(fmt, F.Binary):
        scale = {"none": None, "mean_abs": "tensor", "channel_mean_abs": per_channel}[c["scale"]]
        return {"codes": "sign", "bits": 1, "scales": scale}
    if isinstance(fmt, F.Ternary):
        return {"codes": "ternary", "bits": 2, "scales": "tensor"}
    if isinstance(fmt, F.Int) and c["symmetric"] and c["calibration"] == "minmax" and fmt.bits <= 16:
        return {"codes": "int", "bits": fmt.bits, "scales": per_channel if c["per_channel"] else "tensor"}
    if isinstance(fmt, F.Fixed) and fmt.bits <= 16 and fmt.signed:  # codes are two's complement
        return {"codes": "fixed", "bits": fmt.bits, "scales": None}
    if isinstance(fmt, F.MX):
        el = fmt.element
        elem = {"int": True} if el == "int8" else {"exp_bits": el.exp_bits, "man_bits": el.man_bits,
                                                    "ieee": el.encoding == "ieee"}
        return {"codes": "nvfp4" if isinstance(fmt, F.NVFP4) else "mx", "bits": fmt.bits, "scales": "block",
                "block": fmt.block, "element": elem}
    if type(fmt) in (F.MiniFloat, F.Float16, F.BFloat16, F.FP8E4M3FN, F.FP8E5M2, F.FP6E3M2, F.FP6E2M3, F.FP4E2M1):
        return {"codes": "minifloat", "bits": fmt.bits, "scales": None, "exp_bits": fmt.exp_bits,
                "man_bits": fmt.man_bits, "ieee": fmt.encoding == "ieee"}
    return fp32


def _rows(shape, kind):
    """(rows, K): filters x (C kh kw) of an OIHW conv kernel, units x K of a (K, M) dense one."""
    if kind == "conv2d":
        return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))
    return int(shape[1]), int(shape[0])


def _scale_count(enc, shape, kind):
    """fp32 scales (block formats: their 8-bit block scales are counted apart)."""
    return {None: 0, "tensor": 1, "channel": _rows(shape, kind)[0], "block": int(enc["codes"] == "nvfp4")}[
        enc["scales"]]


def _blocks(enc, shape, kind):
    rows, k = _rows(shape, kind)
    return rows * -(-k // enc["block"]) if enc["scales"] == "block" else 0


def _code_bytes(bits, rows, k):
    return rows * k * bits // 8 if bits in (8, 16, 32) else rows * -(-k * bits // 8)


def kernel_bytes(fmt, shape, kind):
    """Bytes a kernel of ``shape`` in weight format ``fmt`` takes in a packed file."""
    enc = encoding(fmt, kind)
    if enc["codes"] is None:
        return 4 * int(np.prod(shape, dtype=np.int64))
    rows, k = _rows(shape, kind)
    return _code_bytes(enc["bits"], rows, k) + 4 * _scale_count(enc, shape, kind) + _blocks(enc, shape, kind)


def _to_rows(w, kind):
    return w.reshape(w.shape[0], -1) if kind == "conv2d" else w.T


def _from_rows(m, shape, kind):
    return np.ascontiguousarray(m.reshape(shape) if kind == "conv2d" else m.T)


def _signed(enc):
    """Two's-complement codes (integer grids) or bit patterns (sign bits, floats)."""
    return enc["codes"] in ("int", "fixed", "ternary") or bool(enc.get("element", {}).get("int"))


def _code_dtype(bits, signed):
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}").newbyteorder("<")


def _pack(codes, bits, signed):
    """(rows, K) integer codes -> their low ``bits`` bits, as an int array or bit-packed rows."""
    if bits in (8, 16, 32):
        return codes.astype(_code_dtype(bits, signed))
    u = codes.astype(np.int64) & ((1 << bits) - 1)
    shifts = np.arange(bits - 1, -1, -1)
    b = ((u[..., None] >> shifts) & 1).astype(np.uint8)  # (rows, K, bits), MSB first
    return np.packbits(b.reshape(len(codes), -1), axis=1)


def _unpack(data, bits, rows, k, signed):
    if bits in (8, 16, 32):
        return data.astype(np.int64)
    b = np.unpackbits(data, axis=1, count=k * bits).reshape(rows, k, bits).astype(np.int64)
    u = (b << np.arange(bits - 1, -1, -1)).sum(-1)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u) if signed else u


def _minifloat_codes(v, e, m, ieee):
    """Sign | biased exponent | mantissa of values on a MiniFloat grid (exact, no rounding)."""
    bias = 2 ** (e - 1) - 1
    a = np.abs(v.astype(np.float64))
    sign = np.signbit(v).astype(np.int64)
    mant, ex = np.frexp(a)  # a = mant 2^ex, mant in [0.5, 1)
    biased = np.where(a > 0, ex - 1 + bias, 0)
    sub = biased < 1
    frac = np.where(sub, a * 2.0 ** (bias - 1 + m), (mant * 2 - 1) * 2.0 ** m)
    biased = np.where(sub, 0, biased)
    inf = np.isinf(a)
    if ieee:
        biased, frac = np.where(inf, 2 ** e - 1, biased), np.where(inf, 0, frac)
    return (sign << (e + m)) | (biased.astype(np.int64) << m) | np.rint(frac).astype(np.int64)


def _minifloat_values(codes, e, m, ieee):
    bias = 2 ** (e - 1) - 1
    sign = np.where((codes >> (e + m)) & 1, -1.0, 1.0)
    biased, frac = (codes >> m) & (2 ** e - 1), (codes & (2 ** m - 1)).astype(np.float64)
    a = np.where(biased == 0, frac * 2.0 ** (1 - bias - m), (1 + frac / 2 ** m) * 2.0 ** (biased - bias))
    if ieee:
        a = np.where(biased == 2 ** e - 1, np.inf, a)
    return (sign * a).astype(np.float32)


def _block_view(m, block):
    """(rows, K) -> (rows, blocks, block), the last block of each row padded with zeros."""
    rows, k = m.shape
    nb = -(-k // block)
    out = np.zeros((rows, nb * block), m.dtype)
    out[:, :k] = m
    return out.reshape(rows, nb, block)


def _elements(elem):
    """The non-negative values of an MX element (ascending) and their codes."""
    if elem.get("int"):
        k = np.arange(128)
        return (k * 2.0 ** -6).astype(np.float32), k
    e, m = elem["exp_bits"], elem["man_bits"]
    codes = np.arange(2 ** (e + m))
    v = _minifloat_values(codes, e, m, elem["ieee"])
    ok = np.isfinite(v)
    return v[ok], codes[ok]


def _element_codes(y, d, elem, bits):
    """Codes of the elements c with fl32(c d) = y (the block format's dequantisation)."""
    vals, codes = _elements(elem)
    a = np.abs(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.searchsorted(vals, (a / d).astype(np.float32)).clip(0, len(vals) - 1)
    best = guess
    for cand in (guess - 1, guess, guess + 1):  # the exact one is a neighbour of |y| / d
        cand = cand.clip(0, len(vals) - 1)
        best = np.where((vals[cand] * d).astype(np.float32) == a, cand, best)
    k = codes[best].astype(np.int64)
    neg = np.signbit(y)
    if elem.get("int"):
        return np.where(neg, -k, k)
    return np.where(neg, k | (1 << (bits - 1)), k)


def _element_values(codes, elem, bits):
    if elem.get("int"):
        return (codes * 2.0 ** -6).astype(np.float32)
    return _minifloat_values(codes, elem["exp_bits"], elem["man_bits"], elem["ieee"])


def _nvfp4_scales(latent_rows, block):
    """NVFP4's fp32 tensor encode scale g = 2688 / max|x| and E4M3 block scales
    s_b = E4M3(max_b|x| / 6 g), in float32 as the quantizer computes them."""
    a = np.abs(latent_rows)
    amax = np.float32(a.max() if a.size else 0)
    bmax = _block_view(a, block).max(axis=2)
    sb = F.FP8E4M3FN().quantize((bmax / np.float32(6)).astype(np.float32) * _nvfp4_g(amax))
    return amax, sb


def _nvfp4_g(amax):
    with np.errstate(divide="ignore", over="ignore"):
        g = np.float32(2688) / np.float32(amax)
    return np.float32(g if 0 < g <= np.finfo(np.float32).max else 0)


def _mx_scale_exponents(latent_rows, block, elem):
    """MX: X = 2^(floor(log2 max|v|) - e_max), the exponent clipped to [-127, 127]."""
    bits = _block_view(np.abs(latent_rows), block).max(axis=2).view(np.uint32)
    emax = 0 if elem.get("int") else int(np.frexp(_elements(elem)[0].max())[1]) - 1
    return np.clip((bits >> 23).astype(np.int64) - 127 - emax, -127, 127)


def _block_decode_scales(enc, parts, rows, nb):
    """Per block: decode scale d and the factor e (NVFP4's zero blocks: e = 0)."""
    if enc["codes"] == "mx":
        x = parts["bscale"].astype(np.int64) - 127
        return np.ldexp(np.float32(1), x).astype(np.float32), np.ones((rows, nb), np.float32)
    g = _nvfp4_g(parts["tscale"][0])
    sb = _minifloat_values(parts["bscale"].astype(np.int64), 4, 3, False)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sb > 0, (sb / g).astype(np.float32), np.float32(1))
    return d.astype(np.float32), (sb > 0).astype(np.float32)


def _int_step(amax, bits):
    return amax.astype(np.float64) / (2.0 ** (bits - 1) - 1)  # as int_grid_of: in double


def _encode(enc, wq, kind, msb, latent):
    """Arrays (suffix -> array) and header extras holding the quantized kernel ``wq``
    (block formats read their scales from the ``latent`` weights)."""
    rows_q = _to_rows(wq, kind)
    rows, k = rows_q.shape
    code, bits = enc["codes"], enc["bits"]
    ns = _scale_count(enc, wq.shape, kind)
    # scale rows follow the quantizer's channels (filters of a conv kernel), the packed rows
    # the reduction axis: the same rows for a conv, per tensor for a dense kernel
    by_scale = wq.reshape(ns, -1) if ns else None
    extra, arrays = {}, {}
    if code == "sign":
        codes = np.signbit(rows_q).astype(np.int64)
        if ns:
            arrays["scale"] = np.abs(by_scale[:, 0]).astype(np.float32)
    elif code == "ternary":
        a = np.abs(wq).max() if wq.size else 0.0
        codes = np.sign(rows_q).astype(np.int64)
        arrays["scale"] = np.array([a], np.float32)
    elif code == "int":
        amax = np.abs(by_scale).max(axis=1).astype(np.float32)
        s = _int_step(amax, bits)
        codes_s = np.rint(by_scale / np.where(s > 0, s, 1)[:, None]).astype(np.int64)
        codes = _to_rows(codes_s.reshape(wq.shape), kind)
        arrays["amax"] = amax
    elif code == "fixed":
        codes = np.rint(rows_q.astype(np.float64) / 2.0 ** (msb + 1 - bits)).astype(np.int64)
        extra["msb"] = int(msb)
    elif code in ("mx", "nvfp4"):
        B, lat = enc["block"], _to_rows(latent, kind)
        if code == "mx":
            x = _mx_scale_exponents(lat, B, enc["element"])
            arrays["bscale"] = (x + 127).astype(np.uint8)  # E8M0
        else:
            amax, sb = _nvfp4_scales(lat, B)
            arrays["tscale"] = np.array([amax], np.float32)  # the tensor scale is 2688 / amax
            arrays["bscale"] = _minifloat_codes(sb, 4, 3, False).astype(np.uint8)  # E4M3
        d, _ = _block_decode_scales(enc, arrays, rows, arrays["bscale"].shape[1])
        dv = np.repeat(d, B, axis=1)[:, :k]
        codes = _element_codes(rows_q, dv, enc["element"], bits)
    else:
        codes = _minifloat_codes(rows_q, enc["exp_bits"], enc["man_bits"], enc["ieee"])
    arrays["codes"] = _pack(codes, bits, _signed(enc))
    return arrays, extra


def _decode(enc, arrays, shape, kind, msb):
    rows, k = _rows(shape, kind)
    code, bits = enc["codes"], enc["bits"]
    codes = _unpack(arrays["codes"], bits, rows, k, _signed(enc))
    if code == "sign":
        signs = np.where(codes == 1, -1.0, 1.0).astype(np.float32)
        w = _from_rows(signs, shape, kind)
        ns = _scale_count(enc, shape, kind)
        if ns:
            w = (w.reshape(ns, -1) * arrays["scale"][:, None]).reshape(shape)
        return np.ascontiguousarray(w, np.float32)
    if code == "ternary":
        return _from_rows((codes * arrays["scale"][0]).astype(np.float32), shape, kind)
    if code == "int":
        c = _from_rows(codes, shape, kind)
        s = _int_step(arrays["amax"], bits)
        return (c.reshape(len(s), -1) * s[:, None]).astype(np.float32).reshape(shape)
    if code == "fixed":
        return _from_rows((codes * 2.0 ** (msb + 1 - bits)).astype(np.float32), shape, kind)
    if code in ("mx", "nvfp4"):
        d, e = _block_decode_scales(enc, arrays, rows, arrays["bscale"].shape[1])
        B = enc["block"]
        dv, ev = np.repeat(d, B, axis=1)[:, :k], np.repeat(e, B, axis=1)[:, :k]
        y = ((_element_values(codes, enc["element"], bits) * dv).astype(np.float32) * ev).astype(np.float32)
        if code == "nvfp4" and _nvfp4_g(arrays["tscale"][0]) == 0:  # an all-zero tensor: +-0
            y = np.where(np.signbit(y), np.float32(-0.0), np.float32(0))
        return _from_rows(y, shape, kind)
    return _from_rows(_minifloat_values(codes, enc["exp_bits"], enc["man_bits"], enc["ieee"]), shape, kind)


def _latent(enc, wq, parts):
    """Weights whose quantization is ``wq``: ``wq`` itself (a fixed point of its format),
    but for NVFP4, whose tensor scale 2688 / max|x| would move with max|wq|: there the
    largest |wq| (6 d in a block of scale 448) becomes the tensor's max|x| again."""
    if enc["codes"] != "nvfp4" or not wq.size:
        return wq
    out = wq.copy().reshape(-1)
    i = int(np.argmax(np.abs(out)))
    out[i] = np.copysign(parts["tscale"][0], out[i])
    return out.reshape(wq.shape)


def _expected_arrays(enc, shape, kind):
    """Suffix -> (shape, dtype) of the arrays of an encoded kernel."""
    rows, k = _rows(shape, kind)
    bits = enc["bits"]
    out = {"codes": ((rows, k), _code_dtype(bits, _signed(enc)).str) if bits in (8, 16, 32)
           else ((rows, -(-k * bits // 8)), "|u1")}
    ns = _scale_count(enc, shape, kind)
    if enc["codes"] in ("sign", "ternary") and ns:
        out["scale"] = ((ns,), "<f4")
    if enc["codes"] == "int":
        out["amax"] = ((ns,), "<f4")
    if enc["scales"] == "block":
        out["bscale"] = ((rows, -(-k // enc["block"])), "|u1")
    if enc["codes"] == "nvfp4":
        out["tscale"] = ((1,), "<f4")
    return out


# ----------------------------------------------------------------------- the quantized kernels
def _kernels(model):
    """Per weight slot i of ``get_weights()``: (node, kind, weight format or None,
    '<layer> <parameter>', shape)."""
    from .summary import _kernel_formats
    formats, _ = _kernel_formats(model)
    g = model._graph
    out = []
    for layer, nodes in model._layers:
        fm = formats.get(id(layer)) or {}
        for n in nodes:
            for pname, shape, _ in g.node_params(n):
                quantized = pname == "kernel" and g.node_kind(n) in ("conv2d", "dense")
                out.append((n, g.node_kind(n), fm.get("weight") if quantized else None, f"{layer.name} {pname}",
                            tuple(int(d) for d in shape)))
    return out


def _engine_format(model, node, fmt):
    """``fmt`` with the MSB the engine's weight quantizer of ``node`` uses (a Fixed whose
    MSB was tracked in training or calibrated); other formats as they are."""
    if not isinstance(fmt, F.Fixed):
        return fmt
    msb = fmt.msb
    if fmt.msb_auto:
        tracked = model._graph.get_quant_state(node)[0][0]
        msb = tracked if tracked != -1000 else msb  # -1000: never tracked
    c = fmt.config()
    return F.Fixed(fmt.bits, msb=int(msb), rounding=c["rounding"], ste=c["ste"], overflow=c["overflow"])


def _quantized(fmt, w, kind, signs=None):
    """The weights the simulated layer multiplies by: ``fmt`` on ``w`` with the engine's
    channel rows (hysteresis: the engine's last signs where |w| <= threshold)."""
    import copy
    f = copy.deepcopy(fmt)
    if isinstance(f, F.MX):  # blocks along the reduction axis: C kh kw of OIHW, K of (K, M)
        q = f.quantize(w.reshape(w.shape[0], -1), axis=-1).reshape(w.shape) if kind == "conv2d" else \
            f.quantize(w, axis=0)
    else:
        q = f.quantize(w, w.shape[0] if kind == "conv2d" else 1)
    t = fmt.config().get("hysteresis", 0.0) if isinstance(fmt, F.Binary) else 0.0
    if t > 0 and signs is not None and signs.size == w.size:
        keep = np.abs(w) <= t
        q = np.where(keep & (np.sign(q) != signs.reshape(w.shape)), -q, q).astype(np.float32)
    return q


def _same_values(a, b):
    """Equal as numbers: integer codes have no -0, which rounding leaves on the grid
    (x * -0 and x * +0 add the same to every nonzero dot product)."""
    return a.shape == b.shape and np.array_equal(a, b)


# ----------------------------------------------------------------------- writing
def export_packed(model, path):
    """Write ``model`` for inference to ``path`` (see the module docs); returns the dict
    {array name: nbytes} of its weight arrays, whose sum is ``summary()``'s memory."""
    with model._lock:
        model._not_during_fit("export_packed")
        model._require_built()
        if model._compiled is None and model.default_precision is not None:
            raise ValueError(f"export_packed: model {model.name} has a default precision "
                             f"({model.default_precision!r}) that applies at compile(); compile it first")
        g = model._graph
        weights = model.get_weights()
        arrays, packed = {}, {}
        for i, ((node, kind, fmt, what, _), w) in enumerate(zip(_kernels(model), weights)):
            enc = encoding(fmt, kind)
            name = f"w{i:04d}"
            if enc["codes"] is None:
                arrays[name] = w
                continue
            efmt = _engine_format(model, node, fmt)
            signs = g.get_quant_state(node)[0][2]
            wq = _quantized(efmt, w, kind, signs)
            if not np.isfinite(wq).all() and enc["codes"] != "minifloat":
                raise ValueError(f"export_packed: {what}: quantized weights hold NaN or inf")
            got, extra = _encode(enc, wq, kind, getattr(efmt, "msb", None), w)
            back = _decode(enc, got, w.shape, kind, extra.get("msb"))
            if not _same_values(back, wq) or not _same_values(_quantized(efmt, _latent(enc, back, got), kind), back):
                raise ValueError(f"export_packed: {what}: {fmt!r} codes do not reproduce the layer's quantized "
                                 "weights exactly")
            arrays.update({f"{name}_{k}": v for k, v in got.items()})
            packed[name] = {**enc, **extra, "shape": list(w.shape), "kind": kind}
        state = model._state_arrays()
        for node, _, fmt, _, _ in _kernels(model):
            if fmt is not None and f"qh_{node}_0" in state:  # the weight quantizer's hysteresis signs: those
                state[f"qh_{node}_0"] = np.zeros(0, np.int8)  # of the stored weights, rebuilt on load
        state = {k: v for k, v in state.items() if not WEIGHT_ARRAY.fullmatch(k)}
        for node in range(g.num_nodes):  # quantizers never run or tracked: nothing to restore
            ks = [k for k in range(8) if f"qs_{node}_{k}" in state]
            if all(list(state[f"qs_{node}_{k}"]) == [-1000, 0] and state[f"qh_{node}_{k}"].size == 0
                   and state[f"qr_{node}_{k}"] == -1 and list(state[f"qrr_{node}_{k}"]) == [1, -1] for k in ks):
                for k in ks:
                    for pre in ("qs", "qh", "qr", "qrr"):
                        del state[f"{pre}_{node}_{k}"]
        header = {"model": model._architecture(), "packed": packed, "compile": None,
                  "training": {"calibrated": bool(model._calibrated)}}
        if model._compiled is not None:
            header["compile"] = {k: _serial.encode(v, f"export_packed: compile {k}") for k, v in (
                ("loss", model._compiled[1]), ("metrics", model._metrics), ("precision", model._precision))}
        _serial.write(path, FORMAT, header, {**arrays, **state}, "export_packed")
        return {k: int(np.asarray(v).nbytes) for k, v in arrays.items()}


# ----------------------------------------------------------------------- reading
class _Unpacked:
    """The decoded file as ``Model._read_state`` reads a model file (same checks)."""

    def __init__(self, reader, arrays, members):
        self.r, self._arrays, self._members = reader, arrays, set(members)
        self.header = {"format": FORMAT, "version": reader.header["version"]}
        self.fail = reader.fail

    def names(self):
        return sorted(set(self.r.names()) - self._members | set(self._arrays))

    def array(self, name, shape=None, dtype=None, what=None):
        if name in self._arrays:
            a = self._arrays[name]
            if shape is not None and a.shape != tuple(shape):
                self.fail(f"array {name} ({what}) decodes to shape {a.shape}, the model expects {tuple(shape)}")
            return a
        return self.r.array(name, shape, dtype, what)


def load_packed(path):
    """The inference model written by ``model.export_packed(path)`` (see the module docs).
    A truncated, corrupted, foreign or newer-version file raises ValueError naming it and
    the problem; a missing one FileNotFoundError."""
    from .model import _model_from_architecture
    r = _serial.Reader(path, "load_packed", expect=(FORMAT,))
    h = r.header
    try:
        model = _model_from_architecture(h["model"])
        comp, packed = h["compile"], h["packed"]
        if comp is not None:
            model.compile("sgd", **{k: _serial.decode(comp[k]) for k in ("loss", "metrics", "precision")})
        calibrated = h["training"]["calibrated"]
        if not isinstance(packed, dict) or not isinstance(calibrated, bool):
            raise ValueError("bad packed listing or training state")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        r.fail(f"corrupted model description ({type(e).__name__}: {e})")
    decoded, members = {}, []
    kernels = _kernels(model)
    for i, (node, kind, fmt, what, shape) in enumerate(kernels):
        name, enc = f"w{i:04d}", encoding(fmt, kind)
        if enc["codes"] is None:
            if name in packed:
                r.fail(f"array {name} ({what}) is listed as packed, but the model stores it in fp32")
            continue
        want = {**enc, "shape": list(shape), "kind": kind}
        got = packed.get(name)
        msb = got.get("msb") if isinstance(got, dict) else None
        if isinstance(got, dict) and enc["codes"] == "fixed":
            want["msb"] = msb
        if got != want or (enc["codes"] == "fixed" and (isinstance(msb, bool) or not isinstance(msb, int)
                                                        or not -126 <= msb <= 127)):
            r.fail(f"packed listing of {name} ({what}) is {got!r:.200}, expected {want!r:.200} for {fmt!r}")
        if name in r.arrays:
            r.fail(f"array {name} ({what}) is stored both packed and in fp32")
        parts = {}
        for suffix, (shp, dt) in _expected_arrays(enc, shape, kind).items():
            parts[suffix] = r.array(f"{name}_{suffix}", shp, dt, what)
            members.append(f"{name}_{suffix}")
        if any(not np.isfinite(v).all() for k, v in parts.items() if k != "codes"):
            r.fail(f"array {name} ({what}): scales hold NaN or infinite values")
        w = _latent(enc, _decode(enc, parts, shape, kind, msb), parts)
        if enc["codes"] != "minifloat" or np.isfinite(w).all():
            decoded[name] = w
        else:  # an overflowed IEEE weight (inf) is a valid code, but weights are checked finite
            r.fail(f"array {name} ({what}) decodes to infinite weights")
    extra = sorted(set(packed) - {f"w{i:04d}" for i in range(len(kernels))})
    if extra:
        r.fail(f"packed listing names arrays the model does not have: {', '.join(extra[:5])}")
    apply = model._read_state(_Unpacked(r, decoded, members))
    try:
        apply()
        if comp is not None and getattr(model, "_compiled_graph", None) is not model._graph:
            model._apply_compile()
    except ValueError as e:
        r.fail(str(e))
    model._calibrated = calibrated or model._calibrated
    model._packed_from = r.path
    return model
