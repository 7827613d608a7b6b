"""Keras-like layers over the C++ engine.

A layer holds its configuration; the model turns each layer into one or more engine ops
(a ``Conv2D(..., activation="relu")`` becomes a conv2d op and a relu op). Shapes are
NCHW: ``input_shape`` is ``(C, H, W)`` for images, ``(features,)`` flat.

Called on a symbolic tensor (``lb.Input``) a layer adds itself to a model; called on
arrays (batches ``(N, C, H, W)`` or ``(N, features)``) it runs at once on the engine and
returns an array, building its weights at the first call (see ``lowbit.eager``).
"""
from __future__ import annotations

import numbers

from . import formats as _formats
from .serial import Recorded

__all__ = [
    "Layer", "Input", "Conv2D", "Dense", "MaxPooling2D", "MaxPool2D", "AveragePooling2D", "AvgPool2D",
    "GlobalAveragePooling2D", "GlobalAvgPool2D", "BatchNormalization", "Activation", "ReLU", "Tanh",
    "Sigmoid", "HardTanh", "Softmax", "LRN", "LocalResponseNormalization", "Dropout", "Flatten",
    "ZeroPadding2D", "Concatenate", "Add", "QuantAct", "BinAct", "QuantizedReLU", "QuantizedConv2D",
    "QuantizedDense",
]

ROLES = ("weight", "input", "output", "grad", "accum", "grad_accum")

ACTIVATIONS = ("relu", "tanh", "sigmoid", "hard_tanh", "softmax", "linear")
INITIALIZERS = ("glorot_uniform", "he_normal", "he_uniform", "torch", "zeros", "ones")


def _pair(v, name, layer):
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return (int(v), int(v))
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in v):
        return (int(v[0]), int(v[1]))
    raise TypeError(f"{layer}: expected {name} as an int or a pair of ints, got {v!r}")


def _padding(p, layer):
    if isinstance(p, str):
        if p.lower() not in ("valid", "same"):
            raise ValueError(f"{layer}: unknown padding {p!r} (expected 'valid', 'same' or an integer)")
        return p.lower()
    return _pair(p, "padding", layer)


def _activation(a, layer):
    if a is None:
        return None
    if not isinstance(a, str) or a.lower() not in ACTIVATIONS:
        raise ValueError(f"{layer}: unknown activation {a!r} (expected one of {', '.join(ACTIVATIONS)})")
    a = a.lower()
    return None if a == "linear" else a


def _initializer(i, name, layer):
    if i not in INITIALIZERS:
        raise ValueError(f"{layer}: unknown {name} {i!r} (expected one of {', '.join(INITIALIZERS)})")
    return i


def _set_formats(layer, weight, input, output, grad, accum, grad_accum):
    """Number formats per tensor role (None = fp32). Forward per S4: quantize input and
    kernel -> op -> quantize output -> bias -> activation; grad_format applies to the
    gradient passed backward and to the weight gradient.

    Block formats (MX, NVFP4) block each tensor along the reduction axis of the product, as
    MX hardware does: a Conv2D kernel (O, C, kh, kw) in blocks over C kh kw per filter, a
    Dense kernel (K, M) over K per unit, the input and output feature maps (N, C, H, W)
    over the channels at each pixel ((N, F): over the features); gradients like the tensor
    they belong to. Such layers take NCHW (not channel-blocked) activations.

    ``accum_format`` puts every partial sum of the forward dot products on its grid
    (MiniFloat/Float16/BFloat16: one rounding per fused multiply-add; Fixed(bits, msb);
    Int(bits): an integer register over the integer-grid input and weight, saturating or
    wrapping); ``grad_accum_format`` (float or Fixed) does the same for the backward dot
    products - input gradient, weight gradient and bias gradient. Without it the backward
    accumulates in fp32. The order of the terms is fixed (cpp/include/lowbit/accumulate.hpp).
    A simulation: one rounding per multiply-add, so slow - for studies on small data; a
    Float16 accumulator over fp16 operands runs on an fp16 kernel with the same bits
    (:func:`lowbit.kernels.fp16_accum_path`)."""
    allowed = {"accum": (_formats.MiniFloat, _formats.Fixed, _formats.Int, _formats.Float32),
               "grad_accum": (_formats.MiniFloat, _formats.Fixed, _formats.Float32)}
    for role, f in zip(ROLES, (weight, input, output, grad, accum, grad_accum)):
        f = _formats.get(f)
        if role in allowed and f is not None and not isinstance(f, allowed[role]):
            kinds = "a float, Fixed or Int" if role == "accum" else "a float or Fixed"
            raise ValueError(f"{layer.name}: {role}_format must be {kinds} format, got {f!r}")
        setattr(layer, f"{role}_format", f)


def _formats_cfg(layer):
    """Formats from the model's precision, overridden by those set on the layer."""
    out = {r: f.config() for r, f in getattr(layer, "_precision_formats", {}).items()}
    out.update({r: getattr(layer, f"{r}_format").config() for r in ROLES if getattr(layer, f"{r}_format") is not None})
    return out


def _activation_ops(layer):
    act = getattr(layer, "_precision_activation", None) or layer.activation
    return [(act, {})] if act and act != "linear" else []


def _constraint(c, layer):
    if c is None:
        return 0.0
    from .constraints import WeightClip
    if not isinstance(c, WeightClip):
        raise TypeError(f"{layer}: expected kernel_constraint=lb.constraints.weight_clip(c), got {c!r}")
    return c.clip_value


class SymbolicTensor:
    """The output of a layer in the functional API (``x = Input(shape); y = layer(x)``)."""

    def __init__(self, layer, inputs, shape=None):
        self.layer, self.inputs, self.shape = layer, list(inputs), shape

    def __repr__(self):
        return f"<SymbolicTensor from {self.layer.name}>"


class Layer(Recorded):
    """Base class. ``ops()`` lists the engine ops as (kind, config) pairs.

    ``seed``: initial weights (and dropout masks) of a layer built by an array call; None
    derives it from the layer's name. A Model initialises the layers it builds from the
    model's seed instead. ``trainable = False`` freezes the layer's weights (the optimizer
    skips them); as in Keras it takes effect at the next ``model.compile()``."""

    _count: dict = {}
    _multi_input = False  # takes several tensors (Add, Concatenate)
    _home = None  # where the weights live once built (lowbit.eager)
    _eager_step = 0  # training-mode array calls so far: the dropout mask's step

    def __init__(self, name=None, input_shape=None, seed=None):
        base = type(self).__name__.lower()
        Layer._count[base] = Layer._count.get(base, 0) + 1
        self.name = name or f"{base}_{Layer._count[base]}"
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"{self.name}: expected seed as an integer >= 0, got {seed!r}")
        self.seed = int(seed) if seed is not None else None
        self.trainable = True

    def ops(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, *inputs, training=None):
        """On symbolic tensors: the layer's output in a model being defined. On arrays
        (numpy, lists, anything ``np.asarray`` takes; several for Add / Concatenate):
        runs the layer now and returns a float32 array. ``training=True`` runs the
        training-mode forward (dropout, batch statistics, quantizer tracking)."""
        flat = tuple(inputs[0]) if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) else inputs
        symbolic = [isinstance(t, SymbolicTensor) for t in flat]
        if flat and all(symbolic):
            if training is not None:
                raise TypeError(f"{self.name}: training= applies to calls on arrays; a model chooses the mode itself")
            return SymbolicTensor(self, flat)
        if any(symbolic):
            raise TypeError(f"{self.name}: expected symbolic tensors or arrays, got a mix of both")
        from . import eager
        return eager.call(self, inputs, training)

    def backward(self, x, dy):
        """Input and weight gradients of the layer at ``x`` for the output gradient ``dy``,
        from the engine's backward of the training-mode forward (straight-through
        estimators included). Returns ``Gradients(dx, dweights)``: ``dx`` like ``x`` (a
        list for Add / Concatenate), ``dweights`` in ``get_weights()`` order. Changes no
        state; dropout replays the mask of the last ``training=True`` call."""
        from . import eager
        return eager.backward(self, x, dy)

    def build(self, input_shape):
        """Create the weights for samples of ``input_shape`` ((C, H, W) or (features,))."""
        from . import eager
        eager.build(self, input_shape)

    @property
    def built(self):
        return self._home is not None

    def get_weights(self):
        """Weights in Keras order ([] before the layer is built); Conv kernels OIHW, Dense (in, units)."""
        from . import eager
        return eager.get_weights(self)

    def set_weights(self, weights):
        from . import eager
        eager.set_weights(self, weights)

    def __deepcopy__(self, memo):
        """A copy with the same configuration and formats, not built: engine graphs (the
        layer's home and its array-call graphs) are not copied; the copy builds anew."""
        import copy
        new = object.__new__(type(self))
        memo[id(self)] = new
        skip = ("_home", "_eager_graphs", "_eager_step")
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k not in skip})
        return new

    def get_config(self):
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def Input(shape, name=None):
    """A model input with per-sample ``shape`` (C, H, W) or (features,)."""
    layer = _InputLayer(shape, name=name)
    return SymbolicTensor(layer, [], layer.input_shape)


class _InputLayer(Layer):
    def __init__(self, shape, name=None):
        if isinstance(shape, numbers.Integral):
            shape = (shape,)
        super().__init__(name=name, input_shape=shape)


class Conv2D(Layer):
    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, groups=1,
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 weight_format=None, input_format=None, output_format=None, grad_format=None, accum_format=None,
                 grad_accum_format=None, kernel_constraint=None, name=None, input_shape=None, seed=None):
        super().__init__(name, input_shape, seed)
        _set_formats(self, weight_format, input_format, output_format, grad_format, accum_format, grad_accum_format)
        self.kernel_constraint = kernel_constraint
        self._kernel_clip = _constraint(kernel_constraint, self.name)
        if not isinstance(filters, numbers.Integral) or filters < 1:
            raise ValueError(f"{self.name}: expected filters >= 1, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size", self.name)
        self.strides = _pair(strides, "strides", self.name)
        self.padding = _padding(padding, self.name)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate", self.name)
        self.groups = int(groups)
        self.activation = _activation(activation, self.name)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = _initializer(kernel_initializer, "kernel_initializer", self.name)
        self.bias_initializer = _initializer(bias_initializer, "bias_initializer", self.name)

    def ops(self):
        cfg = dict(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides, padding=self.padding,
                   dilation_rate=self.dilation_rate, groups=self.groups, use_bias=self.use_bias,
                   kernel_initializer=self.kernel_initializer, bias_initializer=self.bias_initializer,
                   formats=_formats_cfg(self), kernel_clip=self._kernel_clip)
        return [("conv2d", cfg)] + _activation_ops(self)


class Dense(Layer):
    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", weight_format=None, input_format=None, output_format=None,
                 grad_format=None, accum_format=None, grad_accum_format=None, kernel_constraint=None, name=None,
                 input_shape=None, seed=None):
        super().__init__(name, input_shape, seed)
        _set_formats(self, weight_format, input_format, output_format, grad_format, accum_format, grad_accum_format)
        self.kernel_constraint = kernel_constraint
        self._kernel_clip = _constraint(kernel_constraint, self.name)
        if not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"{self.name}: expected units >= 1, got {units!r}")
        self.units = int(units)
        self.activation = _activation(activation, self.name)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = _initializer(kernel_initializer, "kernel_initializer", self.name)
        self.bias_initializer = _initializer(bias_initializer, "bias_initializer", self.name)

    def ops(self):
        cfg = dict(units=self.units, use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
                   bias_initializer=self.bias_initializer, formats=_formats_cfg(self), kernel_clip=self._kernel_clip)
        return [("dense", cfg)] + _activation_ops(self)


class _Pool(Layer):
    kind = None

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None, input_shape=None):
        super().__init__(name, input_shape)
        self.pool_size = _pair(pool_size, "pool_size", self.name)
        self.strides = _pair(strides, "strides", self.name) if strides is not None else self.pool_size
        self.padding = _padding(padding, self.name)
        if not isinstance(self.padding, str):
            raise ValueError(f"{self.name}: expected padding 'valid' or 'same', got {padding!r}")

    def ops(self):
        return [(self.kind, dict(pool_size=self.pool_size, strides=self.strides, padding=self.padding))]


class MaxPooling2D(_Pool):
    kind = "max_pool2d"


class AveragePooling2D(_Pool):
    kind = "avg_pool2d"


MaxPool2D, AvgPool2D = MaxPooling2D, AveragePooling2D


class GlobalAveragePooling2D(Layer):
    """Mean over H and W: (C, H, W) -> (C,)."""

    def ops(self):
        return [("global_avg_pool2d", {})]


GlobalAvgPool2D = GlobalAveragePooling2D


class BatchNormalization(Layer):
    """Batch norm over channels; weights [gamma, beta, moving_mean, moving_variance] (Keras order)."""

    def __init__(self, momentum=0.99, epsilon=1e-3, name=None, input_shape=None):
        super().__init__(name, input_shape)
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def ops(self):
        return [("batch_norm", dict(momentum=self.momentum, epsilon=self.epsilon))]


class Activation(Layer):
    def __init__(self, activation, name=None, input_shape=None):
        super().__init__(name, input_shape)
        self.activation = _activation(activation, self.name) or "linear"

    def ops(self):
        return [(self.activation, {})]


class ReLU(Activation):
    def __init__(self, name=None, input_shape=None):
        super().__init__("relu", name, input_shape)


class Tanh(Activation):
    def __init__(self, name=None, input_shape=None):
        super().__init__("tanh", name, input_shape)


class Sigmoid(Activation):
    def __init__(self, name=None, input_shape=None):
        super().__init__("sigmoid", name, input_shape)


class Softmax(Activation):
    def __init__(self, name=None, input_shape=None):
        super().__init__("softmax", name, input_shape)


class HardTanh(Layer):
    """clip(x, min_val, max_val); gradient 1 inside [min_val, max_val], else 0."""

    def __init__(self, min_val=-1.0, max_val=1.0, name=None, input_shape=None):
        super().__init__(name, input_shape)
        self.min_val, self.max_val = float(min_val), float(max_val)
        if not self.min_val < self.max_val:
            raise ValueError(f"{self.name}: expected min_val < max_val, got {min_val} and {max_val}")

    def ops(self):
        return [("hard_tanh", dict(min_val=self.min_val, max_val=self.max_val))]


class LRN(Layer):
    """Local response normalisation across channels, TensorFlow semantics:
    ``y = x / (bias + alpha * sum_{|c'-c| <= depth_radius} x_{c'}^2) ** beta``."""

    def __init__(self, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, name=None, input_shape=None):
        super().__init__(name, input_shape)
        self.depth_radius, self.bias, self.alpha, self.beta = int(depth_radius), float(bias), float(alpha), float(beta)

    def ops(self):
        return [("lrn", dict(depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta))]


LocalResponseNormalization = LRN


class Dropout(Layer):
    """Inverted dropout; masks are a function of the fit seed and the step (reproducible).
    Called on arrays with training=True: of the layer's seed and the number of such calls."""

    def __init__(self, rate, name=None, input_shape=None, seed=None):
        super().__init__(name, input_shape, seed)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{self.name}: expected rate in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def ops(self):
        return [("dropout", dict(rate=self.rate))]


class Flatten(Layer):
    """(C, H, W) -> (C*H*W,) in C-major (NCHW) order."""

    def ops(self):
        return [("flatten", {})]


class ZeroPadding2D(Layer):
    def __init__(self, padding=1, name=None, input_shape=None):
        super().__init__(name, input_shape)
        if isinstance(padding, numbers.Integral):
            p = (int(padding),) * 4
        elif len(padding) == 2 and all(isinstance(e, numbers.Integral) for e in padding):
            p = (int(padding[0]),) * 2 + (int(padding[1]),) * 2
        elif len(padding) == 2:
            p = tuple(int(e) for pair in padding for e in pair)
        else:
            raise TypeError(f"{self.name}: expected padding as int, (rows, cols) or ((top, bottom), (left, right))")
        if min(p) < 0:
            raise ValueError(f"{self.name}: expected padding >= 0, got {padding!r}")
        self.padding = p

    def ops(self):
        return [("zero_padding2d", dict(padding=self.padding))]


class Concatenate(Layer):
    """Concatenate along channels (axis 1 of NCHW)."""

    _multi_input = True

    def __init__(self, axis=1, name=None):
        super().__init__(name)
        if axis not in (1, -3):
            raise ValueError(f"{self.name}: only channel concatenation (axis=1) is supported, got axis={axis}")
        self.axis = 1

    def ops(self):
        return [("concatenate", {})]


class Add(Layer):
    _multi_input = True

    def ops(self):
        return [("add", {})]


class QuantAct(Layer):
    """y = format.quantize(x); the gradient is the format's straight-through rule."""

    def __init__(self, format, name=None, input_shape=None):
        super().__init__(name, input_shape)
        self.format = _formats.get(format)
        if self.format is None:
            raise ValueError(f"{self.name}: expected a number format, got None")

    def ops(self):
        return [("quantize", {"formats": {"format": self.format.config()}})]


class BinAct(QuantAct):
    """S1's BinActLayer: x_b = sign(x) (times ||x||_1/n with scale="mean_abs");
    backward dB/dx = 1{|x| <= 1} (ste="clipped")."""

    def __init__(self, ste="clipped", scale=None, name=None, input_shape=None):
        super().__init__(_formats.Binary(scale=scale, ste=ste), name, input_shape)


class QuantizedReLU(Layer):
    """S2 / QKeras quantized_relu(bits): clip(round(relu(x) 2^bits) / 2^bits, 0, 1 - 2^-bits),
    gradient 1 on [0, 1] (ReLU's gradient times the clipped STE)."""

    def __init__(self, bits, name=None, input_shape=None):
        super().__init__(name, input_shape)
        self.bits = int(bits)
        self.format = _formats.Fixed(self.bits + 1, msb=0, ste="clipped")

    def ops(self):
        return [("relu", {}), ("quantize", {"formats": {"format": self.format.config()}})]


def _s4_formats(resolutions, msbs, rounding, enabled, layer):
    if not enabled:
        return None, None, None
    if len(resolutions) != 3 or len(msbs) != 3:
        raise ValueError(f"{layer}: expected quantization_resolutions and quantization_msb as [w, i, o]")
    return tuple(_formats.Fixed(b, msb=m, rounding=rounding) for b, m in zip(resolutions, msbs))


class QuantizedConv2D(Conv2D):
    """S4's QuantizedConv2D: kernel, input and output quantized with
    x_q = floor(clip(x, -A, A) / q) q, A = 2^MSB, q = 2A / 2^n, resolutions written w-i-o
    (e.g. [8, 6, 6]); the gradient of the floor is the identity."""

    def __init__(self, filters, kernel_size, quantization_resolutions=(16, 16, 16), quantization_msb=(0, 0, 0),
                 quantization_enabled=True, rounding="floor", **kwargs):
        w, i, o = _s4_formats(quantization_resolutions, quantization_msb, rounding, quantization_enabled,
                              "QuantizedConv2D")
        super().__init__(filters, kernel_size, weight_format=w, input_format=i, output_format=o, **kwargs)
        self.quantization_resolutions = list(quantization_resolutions)
        self.quantization_msb = list(quantization_msb)
        self.quantization_enabled = bool(quantization_enabled)


class QuantizedDense(Dense):
    """Dense with S4's kernel/input/output quantization (see QuantizedConv2D)."""

    def __init__(self, units, quantization_resolutions=(16, 16, 16), quantization_msb=(0, 0, 0),
                 quantization_enabled=True, rounding="floor", **kwargs):
        w, i, o = _s4_formats(quantization_resolutions, quantization_msb, rounding, quantization_enabled,
                              "QuantizedDense")
        super().__init__(units, weight_format=w, input_format=i, output_format=o, **kwargs)
        self.quantization_resolutions = list(quantization_resolutions)
        self.quantization_msb = list(quantization_msb)
        self.quantization_enabled = bool(quantization_enabled)
