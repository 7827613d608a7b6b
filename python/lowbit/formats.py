r"""Number formats: each maps float32 values onto its grid (``quantize``) and defines the
straight-through gradient (``backward``). Implemented in C++ (``cpp/src/formats``).

=====================  ==========================================================
``Float32()``          identity
``Float16()``          IEEE binary16, bit-exact with ``numpy.float16``
``BFloat16()``         top 16 bits of float32, round half to even
``MiniFloat(e, m)``    IEEE-like: bias :math:`2^{e-1}-1`, top exponent reserved,
                       subnormals, round half to even; saturates by default
``FP8E4M3FN()``        OCP FP8 E4M3 (``encoding="fn"``): no inf, top exponent holds
                       normals, one NaN code S.1111.111; max 448. Saturating:
                       overflow and :math:`\pm\infty` give :math:`\pm 448`; with
                       ``saturate=False`` they give NaN (as ``ml_dtypes``)
``FP8E5M2()``          OCP FP8 E5M2 = IEEE-like (5, 2): inf and NaN codes; max 57344;
                       saturating by default (OCP), else overflow gives inf
``FP6E3M2()``,         OCP FP6 / FP4 (``encoding="fn"``, no NaN): every code finite,
``FP6E2M3()``,         max 28 / 7.5 / 6; overflow and :math:`\pm\infty` always give
``FP4E2M1()``          :math:`\pm` max; a NaN input stays NaN (no code; the OCP spec
                       leaves it open, ``ml_dtypes`` gives -0)
``MX(element, 32)``    OCP MX v1.0: blocks of 32 along the reduction axis share
                       :math:`X = 2^{\lfloor\log_2 \max|v|\rfloor - e_{max}}` (E8M0,
                       exponent clipped to [-127, 127]); elements
                       :math:`X\,\mathrm{sat}(\mathrm{round}(v/X))`; a block with NaN
                       or inf is all NaN. ``MXFP8`` (E4M3 or E5M2), ``MXFP6``
                       (E2M3 or E3M2), ``MXFP4`` (E2M1), ``MXINT8`` (:math:`k\,2^{-6}`,
                       :math:`|k| \le 127`)
``NVFP4()``            blocks of 16 E2M1 values with an E4M3 block scale and an fp32
                       tensor scale (float32 arithmetic, in this order):
                       :math:`g = 2688/\max|x|` (finite values), :math:`s_b =
                       \mathrm{E4M3}(\max_b|v|/6 \cdot g)`, :math:`d = s_b/g`,
                       :math:`y = d\,\mathrm{E2M1}(v/d)`; :math:`s_b = 0` gives 0
``Fixed(bits, msb)``   S4 quantclip: :math:`A = 2^{msb}`, :math:`q = 2A/2^{bits}`,
                       :math:`x_q = \mathrm{clip}(\mathrm{round}(x/q), -2^{b-1}, 2^{b-1}-1)\,q`
                       ``signed=False``: :math:`q = A/2^{bits}`, :math:`k \in [0, 2^b - 1]`
                       (all :math:`2^b` levels for ReLU outputs)
``Int(bits)``          uniform integer grid with a data-dependent scale
``Binary()``           :math:`\mathrm{sign}(x)` (sign(0) = +1), optionally times :math:`\|x\|_1/n`
``Ternary()``          :math:`\{-a, 0, +a\}`, threshold :math:`0.7\,\overline{|x|}` (TWN)
=====================  ==========================================================

Gradient rules (``ste=``): ``identity`` (:math:`\partial q/\partial x = 1`), ``clipped``
(:math:`1_{|x| \le c}`, c = 1 for sign/ternary, A for Fixed), ``hardtanh``
(:math:`1_{|x|\le 1}`), ``approx_sign`` (Bi-Real: :math:`\max(0, 2 - 2|x|)`), ``none``.
On a standalone array, data-dependent scales use that array's own statistics.

Rounding: every float format (``Float16``, ``BFloat16``, ``MiniFloat`` and the OCP
formats, MX elements) takes ``rounding="stochastic"`` with a ``seed``: the value rounds
away from zero with probability (distance to the grid point below) / ulp, with random
bits from (seed, call number, element index), counter-based as ``Fixed``'s: two runs
with the same seed are bit-identical whatever the thread count.

Block axis (MX, NVFP4): blocks run along the reduction axis of the layer's product, as
MX hardware does: a conv kernel (O, C, kh, kw) in blocks of C kh kw (one row per output
channel, a partial last block per row), a dense kernel (K, M) along K, activations
(N, C, H, W) along the channels at each pixel and (N, F) along the features; gradients
follow the tensor they belong to. A standalone ``quantize(x, axis=-1)`` blocks along
``axis``. Memory: ``bits_per_element`` and ``storage_bits(n)`` count element and scale
bits (MXFP4: 4 + 8/32 = 4.25 bits per value).
"""
from __future__ import annotations

import numbers
import threading

import numpy as np

from . import _core
from .serial import Recorded

__all__ = ["Format", "Float32", "Float16", "BFloat16", "MiniFloat", "Fixed", "Int", "Binary", "Ternary",
           "FP8E4M3FN", "FP8E5M2", "FP6E3M2", "FP6E2M3", "FP4E2M1", "MX", "MXFP8", "MXFP6", "MXFP4", "MXINT8",
           "NVFP4", "msb_from_percentile", "get", "from_config"]

STE_RULES = ("identity", "clipped", "hardtanh", "approx_sign", "none")


def as_float32(x, what):
    """Any real numeric array (or nested list) -> C-contiguous float32 of the same shape;
    other dtypes raise TypeError."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what}: expected a real numeric array, got dtype {a.dtype}")
    with np.errstate(over="ignore"):  # beyond float32 becomes +-inf, which callers check
        return np.asarray(a, dtype=np.float32, order="C")


def _int_arg(v, name, cls, lo=None, hi=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{cls}: expected {name} to be an integer, got {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{cls}: expected {name} in [{lo}, {hi}], got {v}")
    return v


def _ste(ste, cls):
    if ste not in STE_RULES:
        raise ValueError(f"{cls}: unknown ste {ste!r} (expected one of {', '.join(STE_RULES)})")
    return ste


def _rounding(r, cls, allowed=("nearest", "stochastic")):
    if r not in allowed:
        raise ValueError(f"{cls}: unknown rounding {r!r} (expected {', '.join(allowed)})")
    return r


def _overflow(o, cls):
    if o not in ("saturate", "wrap"):
        raise ValueError(f"{cls}: unknown overflow {o!r} (expected 'saturate' or 'wrap')")
    return o


class Format(Recorded):
    """Base class: ``quantize(x)``, ``backward(x, grad)``, ``bits``, ``config()``."""
    bits = 32

    def __init__(self, **config):
        self._config = config
        self._q = _core.Quantizer(config)
        self._lock = threading.Lock()  # the quantizer's state (tracked MSB, steps) per call

    def config(self):
        return dict(self._config)

    def quantize(self, x, channels=1):
        """Values of ``x`` on this format's grid (float32, same shape)."""
        a = as_float32(x, f"{type(self).__name__}.quantize")
        # Fixed(msb="auto") not yet calibrated: the array's own max |x| sets the MSB
        track = bool(getattr(self, "msb_auto", False)) and not getattr(self, "_calibrated", False)
        channels = _int_arg(channels, "channels", f"{type(self).__name__}.quantize", 1)
        if a.size and a.size % channels:
            raise ValueError(f"{type(self).__name__}.quantize: {a.size} values do not split into {channels} channels")
        with self._lock:
            return self._q.quantize(a, channels, track)

    __call__ = quantize

    def backward(self, x, grad):
        """The straight-through gradient of ``quantize`` at ``x`` applied to ``grad``."""
        a = as_float32(x, f"{type(self).__name__}.backward")
        g = as_float32(grad, f"{type(self).__name__}.backward")
        if a.shape != g.shape:
            raise ValueError(f"{type(self).__name__}.backward: x has shape {a.shape} but grad {g.shape}")
        return self._q.backward(a, g)

    @property
    def bits_per_element(self):
        """Storage per value in bits, scales included (block formats: element + scale/block)."""
        return float(self.bits)

    def storage_bits(self, n, rows=1):
        """Bits to store ``n`` values held as ``rows`` rows along the block axis (a partial
        last block per row): elements plus the scales of block formats (per-tensor and
        per-channel scales of Int/Binary are not counted; ``summary()`` counts the bytes of
        ``model.export_packed``'s file, see ``lowbit.packed``)."""
        n, rows = int(n), int(rows)
        if n < 0 or rows < 1 or n % rows:
            raise ValueError(f"storage_bits: expected n >= 0 split into rows >= 1 equal rows, got n={n}, rows={rows}")
        return n * self.bits + self._scale_bits(n, rows)

    def _scale_bits(self, n, rows):
        return 0

    @property
    def last_step(self):
        """Grid step(s) of the last ``quantize`` call (Fixed q, Int s, Binary/Ternary scale)."""
        with self._lock:
            return list(self._q.step)

    def __repr__(self):
        return repr(self._q)

    def __deepcopy__(self, memo):
        """A fresh format with the same configuration (and its own quantizer state)."""
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("_q", "_config", "_lock")})
        new._config = dict(self._config)
        new._q = _core.Quantizer(new._config)
        new._lock = threading.Lock()
        return new

    def __eq__(self, other):
        return isinstance(other, Format) and type(self) is type(other) and self._config == other._config

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self._config.items()))))


class Float32(Format):
    bits = 32

    def __init__(self):
        super().__init__(kind="float32")


class MiniFloat(Format):
    r"""Float with ``exp_bits`` exponent and ``man_bits`` mantissa bits (1 + e + m bits).
    ``encoding="ieee"``: top exponent reserved for inf/NaN, largest finite
    :math:`(2 - 2^{-m})\,2^{2^e - 2 - bias}`. ``encoding="fn"`` (OCP): no inf, the top
    exponent holds normals; ``nan`` (default: True for 8-bit, as FP8 E4M3FN; False for
    FP6/FP4) reserves the code S.1..1.1..1 for NaN. ``saturate`` clips overflow to the
    largest finite value instead of inf (ieee) or NaN (fn with NaN); fn formats without
    NaN always saturate. ``rounding``: ``nearest`` (half to even) or ``stochastic``."""

    def __init__(self, exp_bits, man_bits, saturate=True, ste="identity", encoding="ieee", nan=None,
                 rounding="nearest", seed=0):
        e = _int_arg(exp_bits, "exp_bits", "MiniFloat", 2, 8)
        m = _int_arg(man_bits, "man_bits", "MiniFloat", 0, 23)
        if encoding not in ("ieee", "fn"):
            raise ValueError(f"MiniFloat: unknown encoding {encoding!r} (expected 'ieee' or 'fn')")
        if nan is not None and encoding != "fn":
            raise ValueError("MiniFloat: nan= applies to encoding='fn' (ieee formats always have NaN codes)")
        fn_nan = encoding == "fn" and (1 + e + m == 8 if nan is None else bool(nan))
        self.exp_bits, self.man_bits, self.saturate = e, m, bool(saturate)
        self.encoding, self.has_nan = encoding, encoding == "ieee" or fn_nan
        self.rounding = _rounding(rounding, "MiniFloat")
        self.bits = 1 + e + m
        super().__init__(kind="minifloat", bits=min(self.bits, 32), exp_bits=e, man_bits=m, saturate=int(bool(saturate)),
                         ste=_ste(ste, "MiniFloat"), fn=int(encoding == "fn"), fn_nan=int(fn_nan), rounding=rounding,
                         seed=int(seed))

    @property
    def max(self):
        """Largest finite value."""
        e, m = self.exp_bits, self.man_bits
        bias = 2 ** (e - 1) - 1
        if self.encoding == "ieee":
            return (2 - 2.0 ** -m) * 2.0 ** (2 ** e - 2 - bias)
        return (2 - 2.0 ** ((1 - m) if self.has_nan else -m)) * 2.0 ** (2 ** e - 1 - bias)


class Float16(MiniFloat):
    """IEEE binary16: round half to even, overflow to inf, subnormals (numpy.float16)."""

    def __init__(self, ste="identity", rounding="nearest", seed=0):
        super().__init__(5, 10, saturate=False, ste=ste, rounding=rounding, seed=seed)


class BFloat16(MiniFloat):
    """bfloat16: float32's exponent, 7 mantissa bits, round half to even."""

    def __init__(self, ste="identity", rounding="nearest", seed=0):
        super().__init__(8, 7, saturate=False, ste=ste, rounding=rounding, seed=seed)


class FP8E4M3FN(MiniFloat):
    """OCP FP8 E4M3 (``ml_dtypes.float8_e4m3fn``): bias 7, max 448, one NaN code, no inf."""

    def __init__(self, saturate=True, ste="identity", rounding="nearest", seed=0):
        super().__init__(4, 3, saturate=saturate, ste=ste, encoding="fn", rounding=rounding, seed=seed)


class FP8E5M2(MiniFloat):
    """OCP FP8 E5M2 (``ml_dtypes.float8_e5m2``): IEEE-like, bias 15, max 57344."""

    def __init__(self, saturate=True, ste="identity", rounding="nearest", seed=0):
        super().__init__(5, 2, saturate=saturate, ste=ste, rounding=rounding, seed=seed)


class FP6E3M2(MiniFloat):
    """OCP FP6 E3M2 (``ml_dtypes.float6_e3m2fn``): bias 3, max 28, no inf or NaN."""

    def __init__(self, ste="identity", rounding="nearest", seed=0):
        super().__init__(3, 2, ste=ste, encoding="fn", rounding=rounding, seed=seed)


class FP6E2M3(MiniFloat):
    """OCP FP6 E2M3 (``ml_dtypes.float6_e2m3fn``): bias 1, max 7.5, no inf or NaN."""

    def __init__(self, ste="identity", rounding="nearest", seed=0):
        super().__init__(2, 3, ste=ste, encoding="fn", rounding=rounding, seed=seed)


class FP4E2M1(MiniFloat):
    """OCP FP4 E2M1 (``ml_dtypes.float4_e2m1fn``): bias 1, values 0, 0.5, 1, 1.5, 2, 3, 4, 6."""

    def __init__(self, ste="identity", rounding="nearest", seed=0):
        super().__init__(2, 1, ste=ste, encoding="fn", rounding=rounding, seed=seed)


_ELEMENTS = {"fp8_e4m3": FP8E4M3FN, "fp8_e5m2": FP8E5M2, "fp6_e3m2": FP6E3M2, "fp6_e2m3": FP6E2M3,
             "fp4_e2m1": FP4E2M1, "e4m3": FP8E4M3FN, "e5m2": FP8E5M2, "e3m2": FP6E3M2, "e2m3": FP6E2M3,
             "e2m1": FP4E2M1}


class MX(Format):
    r"""OCP MX v1.0 block format: ``block`` values along the reduction axis share one E8M0
    power-of-two scale :math:`X = 2^{\lfloor\log_2\max|v|\rfloor - e_{max}}` (e_max: exponent
    of the element's largest normal); each value is stored as round(v / X) in ``element``
    with saturation. ``element``: an OCP float format (``FP8E4M3FN()``, ...) or its name
    (``"fp8_e4m3"``, ``"e2m1"``, ...), or ``"int8"`` (MXINT8: :math:`k\,2^{-6}`, :math:`|k| \le 127`).
    ``quantize(x, axis=-1)`` blocks a standalone array along ``axis``; in a layer the blocks
    run along the reduction axis (see the module docs)."""

    scale_bits = 8

    def __init__(self, element="fp8_e4m3", block=32, rounding="nearest", seed=0, ste="identity", _scale="e8m0"):
        cls = type(self).__name__
        if isinstance(element, str) and element.lower() == "int8":
            self.element, elem = "int8", dict(elem_int=1, exp_bits=2, man_bits=0)
            self.bits = 8
        else:
            el = _ELEMENTS[element.lower()]() if isinstance(element, str) and element.lower() in _ELEMENTS else element
            if not isinstance(el, MiniFloat) or el.exp_bits > 5 or el.man_bits > 10:
                raise ValueError(f"{cls}: element must be 'int8', one of {', '.join(_ELEMENTS)} or a MiniFloat with "
                                 f"exp_bits <= 5 and man_bits <= 10, got {element!r}")
            self.element = el
            elem = dict(exp_bits=el.exp_bits, man_bits=el.man_bits, fn=int(el.encoding == "fn"),
                        fn_nan=int(el.encoding == "fn" and el.has_nan))
            self.bits = el.bits
        self.block = _int_arg(block, "block", cls, 1, 4096)
        self.rounding = _rounding(rounding, cls)
        super().__init__(kind="block", bits=self.bits, block=self.block, block_scale=_scale, saturate=1,
                         rounding=rounding, seed=int(seed), ste=_ste(ste, cls), **elem)

    def quantize(self, x, axis=-1):
        """Values of ``x`` on the block format's grid, blocks along ``axis`` (float32, same shape)."""
        a = np.ascontiguousarray(x, dtype=np.float32)
        if a.ndim == 0:
            return self._q.quantize(a, 1, False)
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -a.ndim <= axis < a.ndim:
            raise ValueError(f"{type(self).__name__}.quantize: axis {axis!r} out of range for shape {a.shape}")
        axis = int(axis) % a.ndim
        return self._q.quantize(a, 1, False, int(a.shape[axis]), int(np.prod(a.shape[axis + 1:], dtype=np.int64)))

    __call__ = quantize

    @property
    def bits_per_element(self):
        return self.bits + self.scale_bits / self.block

    def _scale_bits(self, n, rows):
        return rows * -(-(n // rows) // self.block) * self.scale_bits


class MXFP8(MX):
    """MXFP8: E4M3 (default) or E5M2 elements, blocks of 32, E8M0 scale (8.25 bits per value)."""

    def __init__(self, element="e4m3", block=32, rounding="nearest", seed=0, ste="identity"):
        if element not in ("e4m3", "e5m2"):
            raise ValueError(f"MXFP8: expected element 'e4m3' or 'e5m2', got {element!r}")
        super().__init__(element, block, rounding, seed, ste)


class MXFP6(MX):
    """MXFP6: E2M3 (default) or E3M2 elements, blocks of 32, E8M0 scale (6.25 bits per value)."""

    def __init__(self, element="e2m3", block=32, rounding="nearest", seed=0, ste="identity"):
        if element not in ("e2m3", "e3m2"):
            raise ValueError(f"MXFP6: expected element 'e2m3' or 'e3m2', got {element!r}")
        super().__init__(element, block, rounding, seed, ste)


class MXFP4(MX):
    """MXFP4: E2M1 elements, blocks of 32, E8M0 scale (4.25 bits per value)."""

    def __init__(self, block=32, rounding="nearest", seed=0, ste="identity"):
        super().__init__("e2m1", block, rounding, seed, ste)


class MXINT8(MX):
    r"""MXINT8: int8 elements :math:`k\,2^{-6}`, :math:`|k| \le 127`, blocks of 32, E8M0 scale."""

    def __init__(self, block=32, rounding="nearest", seed=0, ste="identity"):
        super().__init__("int8", block, rounding, seed, ste)


class NVFP4(MX):
    """NVFP4: blocks of 16 E2M1 values with an E4M3 block scale and an fp32 per-tensor scale
    (4.5 bits per value plus 32 per tensor); see the module docs for the arithmetic."""

    def __init__(self, block=16, rounding="nearest", seed=0, ste="identity"):
        super().__init__("e2m1", block, rounding, seed, ste, _scale="nvfp4")

    def _scale_bits(self, n, rows):
        return super()._scale_bits(n, rows) + 32  # + the fp32 tensor scale


class Fixed(Format):
    r"""Two's-complement fixed point (S4's quantclip). ``msb``: :math:`A = 2^{msb}`;
    ``frac_bits=f`` is the Q-format spelling, msb = bits - 1 - f; ``msb="auto"``
    takes the MSB from calibration (S4 Eq. 11; until calibrated it is 0).
    ``rounding``: ``nearest`` (half to even), ``floor`` (the seed's), ``stochastic``.
    ``overflow``: ``saturate`` clips k to :math:`[-2^{b-1}, 2^{b-1}-1]`; ``wrap`` keeps the
    low ``bits`` bits as two's complement does (what an accumulator register does).
    ``signed=False``: unsigned, :math:`q = A/2^{bits}`, k in :math:`[0, 2^b - 1]`, the range
    :math:`[0, A)`; after a ReLU the signed grid leaves its :math:`2^{b-1}` negative codes
    unused, this one has twice the resolution at the same bits (negative values give 0;
    the ``clipped`` STE passes :math:`0 \le x \le A`)."""

    def __init__(self, bits, msb=None, frac_bits=None, rounding="nearest", ste="identity", seed=0,
                 overflow="saturate", signed=True):
        b = _int_arg(bits, "bits", "Fixed", 1, 32)
        if msb is not None and frac_bits is not None:
            raise ValueError("Fixed: give msb or frac_bits, not both")
        auto = msb == "auto"
        if frac_bits is not None:
            msb = b - 1 - _int_arg(frac_bits, "frac_bits", "Fixed")
        elif msb is None or auto:
            msb = 0
        else:
            msb = _int_arg(msb, "msb", "Fixed", -126, 127)
        if rounding not in ("nearest", "floor", "stochastic"):
            raise ValueError(f"Fixed: unknown rounding {rounding!r} (expected nearest, floor, stochastic)")
        self.bits, self.rounding, self.msb_auto = b, rounding, auto
        self.overflow = _overflow(overflow, "Fixed")
        if not isinstance(signed, (bool, np.bool_)):
            raise ValueError(f"Fixed: expected signed True or False, got {signed!r}")
        if not signed and self.overflow == "wrap":
            raise ValueError("Fixed: overflow='wrap' is two's complement; it needs signed=True")
        self.signed = bool(signed)
        # "signed" is written only when False: signed configs stay as saved before
        super().__init__(kind="fixed", bits=b, msb=msb, msb_auto=int(auto), rounding=rounding, ste=_ste(ste, "Fixed"),
                         seed=int(seed), overflow=self.overflow, **({} if signed else {"signed": 0}))

    @property
    def msb(self):
        return self._q.msb

    @property
    def step(self):
        return 2.0 ** (self.msb + int(self.signed) - self.bits)

    def calibrate(self, x, percentile=99.99):
        """Set the MSB from data (S4 Eq. 11) and return it."""
        msb = msb_from_percentile(x, percentile)
        with self._lock:
            self._q.set_msb(msb)
        self._config["msb"] = msb
        self._calibrated = True
        return msb


class Int(Format):
    """Uniform integer quantization: symmetric range :math:`\\pm(2^{b-1}-1)\\,s` with
    s from max|x| (``minmax``), the 99.99th percentile of |x| (``percentile``) or the
    clipping that minimises the squared error (``mse``); asymmetric uses a zero point on
    the range [min(x, 0), max(x, 0)]. As an activation (a layer's input or output), training
    quantizes with each batch's range and keeps an exponential moving average (0.99) of it,
    max|x| or (min, max), which evaluate and predict use: a prediction does not depend on the
    rest of its batch. Weights always use their own range.
    As ``accum_format``, ``Int(bits)`` is an integer accumulator register of ``bits`` bits
    holding :math:`\\sum k_x k_w` of the layer's integer-grid input and weight, with
    ``overflow="saturate"`` or ``"wrap"`` at every add (an accumulator-width study, cf. A2Q)."""

    def __init__(self, bits, symmetric=True, per_channel=False, calibration="minmax", ste="identity",
                 overflow="saturate"):
        b = _int_arg(bits, "bits", "Int", 2, 32)
        if calibration not in ("minmax", "percentile", "mse"):
            raise ValueError(f"Int: unknown calibration {calibration!r} (expected minmax, percentile, mse)")
        self.bits = b
        self.overflow = _overflow(overflow, "Int")
        super().__init__(kind="int", bits=b, symmetric=int(bool(symmetric)), per_channel=int(bool(per_channel)),
                         calibration=calibration, ste=_ste(ste, "Int"), overflow=self.overflow)


class Binary(Format):
    """sign(x) with sign(0) = +1; ``scale="mean_abs"`` multiplies by :math:`\\|x\\|_1/n`
    (XNOR-Net, S1), ``"channel_mean_abs"`` per output channel; ``hysteresis=t`` keeps a
    value's previous sign until it crosses -t or +t (S1 Figure 21)."""

    bits = 1

    def __init__(self, scale=None, hysteresis=0.0, ste="clipped"):
        if scale not in (None, "mean_abs", "channel_mean_abs"):
            raise ValueError(f"Binary: unknown scale {scale!r} (expected None, 'mean_abs', 'channel_mean_abs')")
        if float(hysteresis) < 0:
            raise ValueError(f"Binary: expected hysteresis >= 0, got {hysteresis}")
        super().__init__(kind="binary", bits=1, scale=scale or "none", hysteresis=float(hysteresis),
                         ste=_ste(ste, "Binary"))


class Ternary(Format):
    """{-a, 0, +a}: |x| <= threshold -> 0; a = mean |x| of the rest (TWN, Li et al. 2016)."""

    bits = 2

    def __init__(self, threshold=None, ste="clipped"):
        if threshold is not None and float(threshold) < 0:
            raise ValueError(f"Ternary: expected threshold >= 0, got {threshold}")
        super().__init__(kind="ternary", bits=2, threshold=None if threshold is None else float(threshold),
                         ste=_ste(ste, "Ternary"))


def msb_from_percentile(x, percentile=99.99):
    """S4 Equation 11: ``ceil(log2(max |limit|))`` with the limits the ``percentile``-th
    and (100 - percentile)-th percentiles of x."""
    a = as_float32(x, "msb_from_percentile").reshape(-1)
    if a.size == 0:
        raise ValueError("msb_from_percentile: empty input")
    return int(_core.msb_from_percentile(a, float(percentile)))


def from_config(cfg):
    """The Format whose ``config()`` is ``cfg`` (a saved model's formats)."""
    if not isinstance(cfg, dict) or "kind" not in cfg:
        raise ValueError(f"from_config: expected a format config dict with a 'kind', got {cfg!r}")
    c, kind = dict(cfg), cfg["kind"]
    if kind == "float32":
        return Float32()
    if kind == "minifloat":
        e, m, sat = int(c["exp_bits"]), int(c["man_bits"]), bool(c.get("saturate", True))
        if not sat and (e, m) == (5, 10):
            return Float16(ste=c.get("ste", "identity"))
        if not sat and (e, m) == (8, 7):
            return BFloat16(ste=c.get("ste", "identity"))
        return MiniFloat(e, m, saturate=sat, ste=c.get("ste", "identity"))
    if kind == "fixed":
        auto = bool(c.get("msb_auto", 0))
        f = Fixed(int(c["bits"]), msb="auto" if auto else int(c["msb"]), rounding=c.get("rounding", "nearest"),
                  ste=c.get("ste", "identity"), seed=int(c.get("seed", 0)), overflow=c.get("overflow", "saturate"),
                  signed=bool(c.get("signed", 1)))
        if auto and int(c.get("msb", 0)) != 0:  # an auto MSB that calibration had chosen
            f._q.set_msb(int(c["msb"]))
            f._config["msb"], f._calibrated = int(c["msb"]), True
        return f
    if kind == "int":
        return Int(int(c["bits"]), symmetric=bool(c.get("symmetric", 1)), per_channel=bool(c.get("per_channel", 0)),
                   calibration=c.get("calibration", "minmax"), ste=c.get("ste", "identity"),
                   overflow=c.get("overflow", "saturate"))
    if kind == "binary":
        scale = c.get("scale", "none")
        return Binary(scale=None if scale == "none" else scale, hysteresis=float(c.get("hysteresis", 0.0)),
                      ste=c.get("ste", "clipped"))
    if kind == "ternary":
        return Ternary(threshold=c.get("threshold"), ste=c.get("ste", "clipped"))
    raise ValueError(f"from_config: unknown format kind {kind!r}")


_ALIASES = {"fp32": Float32, "float32": Float32, "fp16": Float16, "float16": Float16, "bf16": BFloat16,
            "bfloat16": BFloat16, "fp8": FP8E4M3FN, "mxfp8": MXFP8, "mxfp6": MXFP6, "mxfp4": MXFP4, "mxint8": MXINT8,
            "nvfp4": NVFP4, **{k: v for k, v in _ELEMENTS.items() if "_" in k}}


def get(f):
    """A Format from an instance, None (fp32) or an alias ('fp16', 'bf16', 'fp32', 'fp8',
    'fp8_e4m3', 'fp8_e5m2', 'fp6_e3m2', 'fp6_e2m3', 'fp4_e2m1', 'mxfp8', 'mxfp6', 'mxfp4',
    'mxint8', 'nvfp4')."""
    if f is None:
        return None
    if isinstance(f, Format):
        return f
    if isinstance(f, str) and f.lower() in _ALIASES:
        return _ALIASES[f.lower()]()
    raise ValueError(f"unknown number format {f!r}")
