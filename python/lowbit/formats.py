r"""Number formats: each maps float32 values onto its grid (``quantize``) and defines the
straight-through gradient (``backward``). Implemented in C++ (``cpp/src/formats``).

=====================  ==========================================================
``Float32()``          identity
``Float16()``          IEEE binary16, bit-exact with ``numpy.float16``
``BFloat16()``         top 16 bits of float32, round half to even
``MiniFloat(e, m)``    IEEE-like: bias :math:`2^{e-1}-1`, top exponent reserved,
                       subnormals, round half to even; saturates by default
``Fixed(bits, msb)``   S4 quantclip: :math:`A = 2^{msb}`, :math:`q = 2A/2^{bits}`,
                       :math:`x_q = \mathrm{clip}(\mathrm{round}(x/q), -2^{b-1}, 2^{b-1}-1)\,q`
``Int(bits)``          uniform integer grid with a data-dependent scale
``Binary()``           :math:`\mathrm{sign}(x)` (sign(0) = +1), optionally times :math:`\|x\|_1/n`
``Ternary()``          :math:`\{-a, 0, +a\}`, threshold :math:`0.7\,\overline{|x|}` (TWN)
=====================  ==========================================================

Gradient rules (``ste=``): ``identity`` (:math:`\partial q/\partial x = 1`), ``clipped``
(:math:`1_{|x| \le c}`, c = 1 for sign/ternary, A for Fixed), ``hardtanh``
(:math:`1_{|x|\le 1}`), ``approx_sign`` (Bi-Real: :math:`\max(0, 2 - 2|x|)`), ``none``.
On a standalone array, data-dependent scales use that array's own statistics.
"""
from __future__ import annotations

import numbers
import threading

import numpy as np

from . import _core
from .serial import Recorded

__all__ = ["Format", "Float32", "Float16", "BFloat16", "MiniFloat", "Fixed", "Int", "Binary", "Ternary",
           "msb_from_percentile", "get"]

STE_RULES = ("identity", "clipped", "hardtanh", "approx_sign", "none")


def as_float32(x, what):
    """Any real numeric array (or nested list) -> C-contiguous float32 of the same shape;
    other dtypes raise TypeError."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what}: expected a real numeric array, got dtype {a.dtype}")
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
    """IEEE-like float with ``exp_bits`` exponent and ``man_bits`` mantissa bits
    (1 + e + m bits). ``saturate`` clips overflow to the largest finite value
    :math:`(2 - 2^{-m})\,2^{2^e - 2 - bias}` instead of inf."""

    def __init__(self, exp_bits, man_bits, saturate=True, ste="identity"):
        e = _int_arg(exp_bits, "exp_bits", "MiniFloat", 2, 8)
        m = _int_arg(man_bits, "man_bits", "MiniFloat", 0, 23)
        self.exp_bits, self.man_bits, self.saturate = e, m, bool(saturate)
        self.bits = 1 + e + m
        super().__init__(kind="minifloat", bits=min(self.bits, 32), exp_bits=e, man_bits=m, saturate=int(bool(saturate)),
                         ste=_ste(ste, "MiniFloat"))

    @property
    def max(self):
        bias = 2 ** (self.exp_bits - 1) - 1
        return (2 - 2.0 ** -self.man_bits) * 2.0 ** (2 ** self.exp_bits - 2 - bias)


class Float16(MiniFloat):
    """IEEE binary16: round half to even, overflow to inf, subnormals (numpy.float16)."""

    def __init__(self, ste="identity"):
        super().__init__(5, 10, saturate=False, ste=ste)


class BFloat16(MiniFloat):
    """bfloat16: float32's exponent, 7 mantissa bits, round half to even."""

    def __init__(self, ste="identity"):
        super().__init__(8, 7, saturate=False, ste=ste)


class Fixed(Format):
    r"""Two's-complement fixed point (S4's quantclip). ``msb``: :math:`A = 2^{msb}`;
    ``frac_bits=f`` is the Q-format spelling, msb = bits - 1 - f; ``msb="auto"``
    takes the MSB from calibration (S4 Eq. 11; until calibrated it is 0).
    ``rounding``: ``nearest`` (half to even), ``floor`` (the seed's), ``stochastic``.
    ``overflow``: ``saturate`` clips k to :math:`[-2^{b-1}, 2^{b-1}-1]`; ``wrap`` keeps the
    low ``bits`` bits as two's complement does (what an accumulator register does)."""

    def __init__(self, bits, msb=None, frac_bits=None, rounding="nearest", ste="identity", seed=0,
                 overflow="saturate"):
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
        super().__init__(kind="fixed", bits=b, msb=msb, msb_auto=int(auto), rounding=rounding, ste=_ste(ste, "Fixed"),
                         seed=int(seed), overflow=self.overflow)

    @property
    def msb(self):
        return self._q.msb

    @property
    def step(self):
        return 2.0 ** (self.msb + 1 - self.bits)

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
    clipping that minimises the squared error (``mse``); asymmetric uses a zero point.
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


_ALIASES = {"fp32": Float32, "float32": Float32, "fp16": Float16, "float16": Float16, "bf16": BFloat16,
            "bfloat16": BFloat16}


def get(f):
    """A Format from an instance, None (fp32) or an alias ('fp16', 'bf16', 'fp32')."""
    if f is None:
        return None
    if isinstance(f, Format):
        return f
    if isinstance(f, str) and f.lower() in _ALIASES:
        return _ALIASES[f.lower()]()
    raise ValueError(f"unknown number format {f!r}")
