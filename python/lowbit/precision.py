"""Whole-model precision: which number format each tensor role of every layer with a
kernel (Conv2D, Dense) uses, plus loss scaling. ``model.compile(..., precision=P)``.

Presets (P as a string):

=============  ==============================================================================
``fp32``       everything float32
``fp16``       fp16 weights, activations and gradients; fp32 master weights; dynamic loss scaling
``bf16``       bfloat16 weights, activations and gradients
``fixed16``    16-bit fixed point weights, inputs and outputs, MSB per layer from calibration
``fixed8``     8-bit fixed point likewise
``int8``       8-bit integers: per-channel symmetric weights, per-tensor activations
``binary``     S2 / Larq: binary weights (scaled by mean |w| per channel) and inputs
               (ste_sign, which replaces the hidden activations); first layer's input and
               the last layer full precision
``w1a8``       S1: 1-bit weights (scaled by mean |w|), 8-bit fixed-point feature maps
``fw16bw32``   S3: fp16 forward (weights, inputs, outputs), fp32 backward
``fw16bw16``   S3: fp16 forward and fp16 gradients, dynamic loss scaling
``fp8``        OCP FP8 E4M3 weights and inputs, E5M2 gradients (not saturating, so that
               dynamic loss scaling sees overflow): the hybrid FP8 recipe
``mxfp8``      MXFP8 (E4M3, blocks of 32 along the reduction axis) weights and inputs,
               bfloat16 gradients; products accumulate in fp32 as MX hardware does
``mxfp6``      MXFP6 (E2M3) weights and inputs, bfloat16 gradients
``mxfp4``      MXFP4 (E2M1) weights and inputs, bfloat16 gradients
``nvfp4``      NVFP4 (blocks of 16, E4M3 scale, fp32 tensor scale) weights and inputs,
               bfloat16 gradients
=============  ==============================================================================

Formats set explicitly on a layer take precedence over the model's precision.
"""
from __future__ import annotations

import copy

from . import formats as F
from .serial import Recorded

__all__ = ["Precision", "PRESETS", "get"]


class Precision(Recorded):
    """Formats per tensor role. Each argument is a Format (copied per layer, so that
    per-layer state such as a calibrated MSB stays per layer) or None for float32.
    ``accum`` / ``grad_accum``: accumulator formats of the forward / backward dot products
    (see ``lb.layers.Conv2D``); an ``Int`` accumulator applies to the layers whose input and
    weight are on integer grids (an exempt first layer keeps an fp32 accumulator)."""

    def __init__(self, weight=None, input=None, output=None, grad=None, exempt_first=False, exempt_last=False,
                 loss_scale=None, name="custom", calibration_percentile=99.99, activation=None, accum=None,
                 grad_accum=None):
        self.roles = {"weight": F.get(weight), "input": F.get(input), "output": F.get(output), "grad": F.get(grad),
                      "accum": F.get(accum), "grad_accum": F.get(grad_accum)}
        self.exempt_first, self.exempt_last = bool(exempt_first), bool(exempt_last)
        if loss_scale not in (None, "dynamic") and not (isinstance(loss_scale, (int, float)) and loss_scale > 0):
            raise ValueError(f"Precision: loss_scale must be None, 'dynamic' or a positive number, got {loss_scale!r}")
        self.loss_scale = loss_scale
        self.name = name
        self.calibration_percentile = float(calibration_percentile)
        # replaces the activation of the layers it quantizes (not an exempt last layer):
        # "linear" for binary networks, where the next layer's sign() is the nonlinearity
        # (sign(relu(x)) would be constant: BNN's binary_tanh = sign with a clipped STE)
        self.activation = activation

    def formats_for(self, index, count):
        """Fresh Format objects for layer ``index`` of ``count`` layers with kernels."""
        if self.exempt_last and index == count - 1:
            return {}
        out = {r: copy.deepcopy(f) for r, f in self.roles.items() if f is not None}
        if self.exempt_first and index == 0:
            out.pop("input", None)
        integer_grid = (F.Fixed, F.Int, F.Binary, F.Ternary)
        if isinstance(out.get("accum"), F.Int) and not all(
                isinstance(out.get(r), integer_grid) for r in ("input", "weight")):
            out.pop("accum")
        return out

    @property
    def needs_calibration(self):
        return any(isinstance(f, F.Fixed) and f.msb_auto for f in self.roles.values())

    def __repr__(self):
        roles = ", ".join(f"{r}={f!r}" for r, f in self.roles.items() if f is not None)
        return f"Precision({self.name!r}{', ' if roles else ''}{roles})"


def _fixed(bits):
    return F.Fixed(bits, msb="auto", rounding="nearest")


def _operands(fmt, name):
    """``fmt`` on the operands of every product (weights, inputs), bfloat16 gradients."""
    return lambda: Precision(fmt(), fmt(), grad=F.BFloat16(), name=name)


PRESETS = {
    "fp32": lambda: Precision(name="fp32"),
    "fp16": lambda: Precision(F.Float16(), F.Float16(), F.Float16(), F.Float16(), loss_scale="dynamic", name="fp16"),
    "bf16": lambda: Precision(F.BFloat16(), F.BFloat16(), F.BFloat16(), F.BFloat16(), name="bf16"),
    "fixed16": lambda: Precision(_fixed(16), _fixed(16), _fixed(16), name="fixed16"),
    "fixed8": lambda: Precision(_fixed(8), _fixed(8), _fixed(8), name="fixed8"),
    "int8": lambda: Precision(F.Int(8, per_channel=True), F.Int(8), name="int8"),
    # weights scaled per output channel by mean |w| (XNOR-Net): on the S0 LeNet, 2 epochs of
    # Fashion-MNIST, 84% against 63% for S2's unscaled ste_sign kernels
    "binary": lambda: Precision(F.Binary(scale="channel_mean_abs"), F.Binary(), exempt_first=True, exempt_last=True,
                                name="binary", activation="linear"),
    "w1a8": lambda: Precision(F.Binary(scale="channel_mean_abs"), _fixed(8), exempt_first=True, exempt_last=True,
                              name="w1a8"),
    "fw16bw32": lambda: Precision(F.Float16(), F.Float16(), F.Float16(), name="fw16bw32"),
    "fw16bw16": lambda: Precision(F.Float16(), F.Float16(), F.Float16(), F.Float16(), loss_scale="dynamic",
                                  name="fw16bw16"),
    "fp8": lambda: Precision(F.FP8E4M3FN(), F.FP8E4M3FN(), grad=F.FP8E5M2(saturate=False), loss_scale="dynamic",
                             name="fp8"),
    "mxfp8": _operands(F.MXFP8, "mxfp8"),
    "mxfp6": _operands(F.MXFP6, "mxfp6"),
    "mxfp4": _operands(F.MXFP4, "mxfp4"),
    "nvfp4": _operands(F.NVFP4, "nvfp4"),
}


def get(p):
    if p is None:
        return None
    if isinstance(p, Precision):
        return p
    if isinstance(p, str) and p in PRESETS:
        return PRESETS[p]()
    raise ValueError(f"unknown precision {p!r} (expected one of {', '.join(PRESETS)} or a Precision)")
