"""Kernels that compute in the low-precision format itself, with run-time dispatch.

Binary x binary layers (xnor-popcount): a value's sign is one bit (1 for ``x < 0``;
``sign(0) = +1`` as :class:`lowbit.formats.Binary` does), packed into 64-bit words along
the reduction axis, and for K values in {-1, +1}

    dot(a, b) = K - 2 * popcount(bits(a) xor bits(b)),
    y = float32(dot) * scale + bias        (per output channel, two fp32 roundings).

A convolution's zero padding is exact: a padded tap adds 0, as in the simulated layer.

``info()`` tells which path this CPU uses: ``"avx512_vpopcntdq"`` (AVX-512 VPOPCNTDQ) or
``"portable"``. ``LOWBIT_PORTABLE_KERNELS=1`` in the environment forces the portable
path; every function also takes ``path="auto" | "native" | "portable"``.

The engine runs quantized Conv2D/Dense layers on a kernel of the format itself in
``evaluate``/``predict`` (training keeps the simulated layers, whose backward needs the
quantized fp32 copies); ``use_in_engine(False)`` switches back to the simulated layers.
One dispatch for every family; ``info()[family]`` says what this CPU runs:

- ``binary``: input format ``Binary()`` (no scale) and weight format ``Binary`` with or
  without scale: the xnor-popcount kernels above, the same numbers exactly. A weight
  scale (XNOR-Net's mean |w|, per tensor or per output channel, as the ``binary`` preset)
  multiplies the exact popcount dot in the epilogue, and the simulated layer computes
  ``alpha * (x . sign w)`` the same way (before, its fp32 partial sums of +-alpha terms
  rounded: a zero dot came out as +-1 ulp, whose sign the next binary layer saw).
- ``int8``: ``Int(b <= 8)`` weights (symmetric; per tensor, or per output channel of a
  Conv2D) and inputs (symmetric: s8; asymmetric: u8 with the grid's zero point): oneDNN
  u8/s8 x s8 -> s32 convolution / matmul on VNNI, dequantised in its output scales,
  ``z = float(acc) * (s_x * s_w)``. The simulated layer sums ``float(k_x s_x) float(k_w s_w)``
  in fp32; both lie within ``(K + 4) 2^-24 sum|x_q w_q|`` of the exact sum (K the
  reduction length), and an ``output_format=Int(8)`` output within one output LSB.
  Without VNNI oneDNN's int8 kernels saturate 16-bit pair sums: such CPUs stay simulated.
- ``bf16`` / ``fp16``: ``BFloat16()`` / ``Float16()`` weights and inputs: oneDNN bf16/f16
  primitives, fp32 accumulation. Products of these formats are exact in fp32, so only the
  summation order differs: ``|z - z_sim| <= 2 K 2^-24 sum|x_q w_q|``. Where oneDNN has no
  (non-reference) primitive for the type on this CPU (f16 without AVX512-FP16 / AVX2-VNNI-2)
  the layers stay simulated and ``info()`` says why.

``LOWBIT_PORTABLE_KERNELS=1`` makes the oneDNN families fall back to the simulated
layers (and binary to its portable path). Quantized weights are prepared once per weight
version (an optimizer step or ``set_weights`` makes a new one), not at every call.

fp16 accumulation: a Conv2D/Dense with ``accum_format`` / ``grad_accum_format``
``Float16()`` whose operands are binary16 values (fp16 inputs, weights, gradients) runs
its dot products on a kernel with a binary16 accumulator, one round-to-nearest-even per
multiply-add in the simulation's order, bit for bit the simulation's result:
``"avx512_fp16"`` (native fp16 FMA), ``"avx512f"`` (fp32 FMAs rounded up and down give
round-to-odd, then one conversion to fp16), ``"avx2"`` (fp32 TwoSum gives round-to-odd,
then F16C's conversion) or ``"portable"`` (standard C++: TwoSum, round-to-odd, fp16
rounding on the bits); other operands keep the simulation.
``info()["fp16_accum"]`` names the path; :func:`fp16_accum_path` chooses one
(``"simulate"`` runs the float64 simulation itself).
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _core

PATHS = ("auto", "native", "portable")
BinaryWeights = _core.BinaryWeights


def info():
    """What this CPU runs: 'binary' (its path), 'binary_native_supported', and per oneDNN
    family 'int8' / 'bf16' / 'fp16': ``"onednn:<implementation>"`` or ``"simulated"`` (then
    '<family>_simulated_because' says why); 'portable_forced'; 'engine': whether
    evaluate/predict use the kernels; 'engine_<family>_calls': layer calls run on them so
    far; 'engine_weight_preparations': weight copies the kernels prepared; 'fp16_accum':
    the path of Float16 accumulators (with 'fp16_accum_kernel_calls' /
    'fp16_accum_simulated_calls': dot products run on a kernel / on the simulation so far);
    and the CPU features the engine sees."""
    d = dict(_core.kernel_info())
    d.update(_core.fp16_accum_info())
    d["cpu"] = {k: v for k, v in _core.build_info().items() if k.startswith("avx")}
    return d


def use_in_engine(on=None):
    """Whether evaluate/predict run quantized layers on the kernels (default True);
    with ``on`` given, set it. Returns the previous setting."""
    was = bool(_core.engine_kernels_enabled())
    if on is not None:
        _core.set_engine_kernels(bool(on))
    return was


FP16_ACCUM_PATHS = ("auto", "simulate", "portable", "avx2", "avx512f", "avx512_fp16")


def fp16_accum_path(path=None):
    """The path of Float16 accumulators in the engine: ``"auto"`` (default: the best this
    CPU has; ``LOWBIT_PORTABLE_KERNELS=1`` makes it ``"portable"``), ``"simulate"``,
    ``"portable"``, ``"avx2"``, ``"avx512f"`` or ``"avx512_fp16"``. With ``path`` given, set it
    (ValueError for an unknown name or one this CPU cannot run). Returns the previous setting."""
    if path is None:
        return _core.fp16_accum_info()["fp16_accum_setting"]
    if not isinstance(path, str) or path not in FP16_ACCUM_PATHS:
        raise ValueError(f"fp16_accum_path: unknown path {path!r} (expected one of {FP16_ACCUM_PATHS})")
    return _core.set_fp16_accum_path(path)


def popcount_peak(seconds=0.2):
    """Measured VPOPCNTQ throughput of one thread (bits per second): the bound of an
    xnor-popcount kernel (one popcounted bit per binary multiply-accumulate)."""
    return _core.popcount_peak(float(seconds))


def _path(path):
    if not isinstance(path, str) or path not in PATHS:
        raise ValueError(f"kernels: unknown path {path!r} (expected one of {PATHS})")
    return path


def _floats(x, what, ndim=None):
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{what}: expected a numeric array, got {type(x).__name__}")
    try:
        a = np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: expected a numeric array ({e})") from None
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions, got shape {a.shape}")
    return a


def _channel_vector(v, n, what):
    if v is None:
        return None
    a = _floats(v, what)
    if a.ndim == 0:
        a = np.full(n, a, dtype=np.float32)
    if a.shape != (n,):
        raise ValueError(f"{what}: expected shape ({n},) (one per output channel), got {a.shape}")
    return a


def pack_bits(x, path="auto"):
    """Sign bits of ``x`` packed along its last axis: uint64 of shape (..., ceil(n/64));
    bit i of word j is ``x[..., 64*j + i] < 0``; bits past n are 0."""
    a = _floats(x, "pack_bits: x")
    if a.ndim < 1:
        raise ValueError("pack_bits: expected an array with at least 1 dimension")
    return _core.pack_bits(a, _path(path))


def pack_dense_weights(w):
    """Pack a Dense kernel (fan_in, units) once, for repeated :func:`binary_dense` calls."""
    return _core.pack_dense_weights(_floats(w, "pack_dense_weights: w", 2))


def pack_conv_weights(w):
    """Pack a Conv2D kernel (out, in, kh, kw) once, for repeated :func:`binary_conv2d` calls."""
    return _core.pack_conv_weights(_floats(w, "pack_conv_weights: w", 4))


def binary_dense(x, w, scale=None, bias=None, path="auto"):
    """sign(x) (N, fan_in) times sign(w) (fan_in, units) by xnor-popcount, then
    ``* scale + bias`` per unit. ``w`` is a float kernel or :func:`pack_dense_weights`'s result."""
    if not isinstance(w, BinaryWeights):
        w = pack_dense_weights(w)
    elif w.conv:
        raise ValueError("binary_dense: got convolution weights (use binary_conv2d)")
    x = _floats(x, "binary_dense: x", 2)
    if x.shape[1] != w.in_channels:
        raise ValueError(f"binary_dense: x has {x.shape[1]} features, the kernel expects {w.in_channels}")
    return _core.binary_dense(x, w, _channel_vector(scale, w.out_channels, "binary_dense: scale"),
                              _channel_vector(bias, w.out_channels, "binary_dense: bias"), _path(path))


def _pair(v, what):
    if isinstance(v, numbers.Integral):
        v = (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(i, numbers.Integral) and i >= 1 for i in v):
        raise ValueError(f"binary_conv2d: expected {what} as an integer >= 1 or a pair of them, got {v!r}")
    return tuple(int(i) for i in v)


def conv_padding(padding, size, kernel, stride, dilation):
    """(top, bottom, left, right) zero padding; 'same' follows TensorFlow (the extra
    pixel at the end), as lowbit's Conv2D does."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"binary_conv2d: unknown padding {padding!r} (expected 'valid', 'same' or integers)")
        out = []
        for n, k, s, d in zip(size, kernel, stride, dilation):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            out += [total // 2, total - total // 2]
        return tuple(out)
    p = (padding,) if isinstance(padding, numbers.Integral) else tuple(padding)
    if not all(isinstance(i, numbers.Integral) and i >= 0 for i in p) or len(p) not in (1, 2, 4):
        raise ValueError(f"binary_conv2d: expected padding >= 0 as 1, 2 or 4 integers, got {padding!r}")
    if len(p) == 1:
        p = p * 4
    elif len(p) == 2:
        p = (p[0], p[0], p[1], p[1])
    return tuple(int(i) for i in p)


def binary_conv2d(x, w, stride=1, padding=0, scale=None, bias=None, dilation=1, path="auto"):
    """sign(x) (N, C, H, W) convolved with sign(w) (O, C, kh, kw) by xnor-popcount, then
    ``* scale + bias`` per output channel; NCHW float32 out. Zero padding adds 0 per
    padded tap, exactly as the simulated layer. ``padding``: int, (ph, pw),
    (top, bottom, left, right), 'valid' or 'same'."""
    if not isinstance(w, BinaryWeights):
        w = pack_conv_weights(w)
    elif not w.conv:
        raise ValueError("binary_conv2d: got dense weights (use binary_dense)")
    x = _floats(x, "binary_conv2d: x", 4)
    if x.shape[1] != w.in_channels:
        raise ValueError(f"binary_conv2d: x has {x.shape[1]} channels, the kernel expects {w.in_channels}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    pads = conv_padding(padding, x.shape[2:], w.kernel_size, stride, dilation)
    return _core.binary_conv2d(x, w, list(stride), list(pads), list(dilation),
                               _channel_vector(scale, w.out_channels, "binary_conv2d: scale"),
                               _channel_vector(bias, w.out_channels, "binary_conv2d: bias"), _path(path))
