"""Reference networks of the studies (shared EXPERIMENTS.md), NCHW.

Each function takes ``input_shape`` (channels, height, width), ``num_classes``,
``seed`` (weight initialisation; None draws one) and ``precision`` (a preset name or an
``lb.Precision``: what ``compile`` uses when it is given none) and returns a built
model ending in a softmax (trained as fused softmax cross-entropy).

====================  =====  =====================================================  ==============
function              study  layout                                                 parameters
====================  =====  =====================================================  ==============
``pure_cnn``          S0     Keras mnist_cnn: 2 convs, pool, dropout, 2 dense        1,199,882
``lenet``             S0     Figure 20 of seed 000                                  369,174
``alexnet_mnist``     S0     3 x (conv, pool, LRN, dropout), 3 dense                5,624,842
``vgg_mnist``         S0     2 + 2 + 4 convs 3x3, 3 pools, 2 dense                  1,772,522
``resnet20``          S1     Keras ResNet20v1 (Figure 31 of seed 001), CIFAR        274,442
``alexnet_cifar``     S1     Figure 26 of seed 001 (PyTorch), 3x32x32               23,272,266
``alexnet_netadapt``  S1     torchvision AlexNet, 3x224x224, 710,133,440 MACs       57,044,810
``googlenet``         S2     Inception v1, one output head, ``width`` multiplier    5,975,602 (2 classes)
``squeezenet_v1_1``   S4     Fire modules, conv10 + global average pool, 3x227x227  1,235,496 (1000 classes)
``simple_cnn``        S3     conv 12 3x3, pool, dense                               20,410
``lenet5``            -      LeCun et al. 1998: tanh, average pooling, 32x32        61,706
====================  =====  =====================================================  ==============

Parameters are counted as Keras does (``model.count_params()``): batch norm's
moving mean and variance included. Counts are for the default shapes, 10 classes
unless noted.
"""
from __future__ import annotations

import numbers

from . import formats as F
from . import layers as L
from .constraints import weight_clip
from .layers import Input
from .model import Model, Sequential

__all__ = ["pure_cnn", "lenet", "alexnet_mnist", "vgg_mnist", "resnet20", "fit_bnn", "alexnet_cifar", "alexnet_netadapt",
           "googlenet", "squeezenet_v1_1", "simple_cnn", "lenet5"]


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check(fn, input_shape, num_classes):
    """(C, H, W) of positive integers and num_classes >= 2, or ValueError naming ``fn``."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3 or not all(_is_int(d) and d >= 1 for d in shape):
        raise ValueError(f"{fn}: expected input_shape (channels, height, width) of positive integers, "
                         f"got {input_shape!r}")
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"{fn}: expected num_classes >= 2, got {num_classes!r}")
    return tuple(int(d) for d in shape), int(num_classes)


def _positive(fn, name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
        raise ValueError(f"{fn}: expected {name} > 0, got {v!r}")
    return v


def _sequential(name, layers, shape, seed, precision):
    m = Sequential(layers, name=name, seed=seed, precision=precision)
    m.build(shape)
    return m


# ----------------------------------------------------------------------- S0 (seed 000)
def pure_cnn(input_shape=(1, 28, 28), num_classes=10, seed=None, precision=None):
    """S0 "Pure CNN" (seed 000 Figure 11, Keras' mnist_cnn): Conv32 3x3 relu, Conv64 3x3
    relu, MaxPool 2, Dropout .25, Flatten, Dense128 relu, Dropout .5, Dense softmax."""
    shape, k = _check("pure_cnn", input_shape, num_classes)
    return _sequential("pure_cnn", [
        L.Conv2D(32, 3, activation="relu"),
        L.Conv2D(64, 3, activation="relu"),
        L.MaxPooling2D(2),
        L.Dropout(0.25),
        L.Flatten(),
        L.Dense(128, activation="relu"),
        L.Dropout(0.5),
        L.Dense(k, activation="softmax"),
    ], shape, seed, precision)


def lenet(input_shape=(1, 28, 28), num_classes=10, seed=None, precision=None):
    """S0 LeNet: Conv32 5x5 same relu, MaxPool 2, Conv48 5x5 valid relu, MaxPool 2,
    Dense256 relu, Dense84 relu, Dense10 softmax - 369,174 parameters on 28x28x1."""
    shape, k = _check("lenet", input_shape, num_classes)
    return _sequential("lenet", [
        L.Conv2D(32, 5, padding="same", activation="relu"),
        L.MaxPooling2D(2),
        L.Conv2D(48, 5, padding="valid", activation="relu"),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(256, activation="relu"),
        L.Dense(84, activation="relu"),
        L.Dense(k, activation="softmax"),
    ], shape, seed, precision)


def alexnet_mnist(input_shape=(1, 28, 28), num_classes=10, seed=None, precision=None, dropout=0.8):
    """S0 AlexNet, MNIST variant (seed 000 section 4.1.2): three blocks of Conv 3x3 same
    relu (64, 128, 256 filters) -> MaxPool 2 same -> LRN(depth_radius 4, bias 1,
    alpha 0.001/9, beta 0.75) -> Dropout, then Dense 1024 relu twice and the classifier.

    ``dropout``: the seed's Keras ``Dropout(0.8)`` drops 80 % (the keep probability of
    the TensorFlow 1 example it was ported from, passed as a rate). The seed's last layer
    gave logits to the cross-entropy; here a softmax follows, trained as the same fused
    softmax cross-entropy, so that ``predict`` returns probabilities."""
    shape, k = _check("alexnet_mnist", input_shape, num_classes)
    blocks = []
    for filters in (64, 128, 256):
        blocks += [L.Conv2D(filters, 3, padding="same", activation="relu"),
                   L.MaxPooling2D(2, padding="same"),
                   L.LRN(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75),
                   L.Dropout(dropout)]
    return _sequential("alexnet_mnist", blocks + [
        L.Flatten(),
        L.Dense(1024, activation="relu"),
        L.Dense(1024, activation="relu"),
        L.Dense(k, activation="softmax"),
    ], shape, seed, precision)


def vgg_mnist(input_shape=(1, 28, 28), num_classes=10, seed=None, precision=None, filters=(32, 64, 128)):
    """S0 VGG, MNIST variant (seed 000 section 4.1.3): 2 x Conv(f1), MaxPool 2, 2 x Conv(f2),
    MaxPool 2, 4 x Conv(f3), MaxPool 2, Flatten, Dropout .2, Dense1024 relu, Dense softmax;
    every conv 3x3 relu after a zero padding of 1 (written here as the conv's padding=1).
    The seed does not print nb_filters_1..3; ``filters`` defaults to the 32 / 64 / 128 of
    the Kaggle VGG-like MNIST network its code follows."""
    shape, k = _check("vgg_mnist", input_shape, num_classes)
    if len(filters) != 3 or not all(_is_int(f) and f >= 1 for f in filters):
        raise ValueError(f"vgg_mnist: expected filters as three positive integers, got {filters!r}")
    f1, f2, f3 = filters
    convs = []
    for f, n in ((f1, 2), (f2, 2), (f3, 4)):
        convs += [L.Conv2D(f, 3, padding=1, activation="relu") for _ in range(n)] + [L.MaxPooling2D(2)]
    return _sequential("vgg_mnist", convs + [
        L.Flatten(),
        L.Dropout(0.2),
        L.Dense(1024, activation="relu"),
        L.Dense(k, activation="softmax"),
    ], shape, seed, precision)


# ----------------------------------------------------------------------- S1 (seed 001)
_S1_PRECISIONS = ("w1a8", "binary")


def resnet20(input_shape=(3, 32, 32), num_classes=10, seed=None, precision=None, scaling="channel", hysteresis=0.0,
             bireal=False, quantize_shortcuts=False, binarize_weights=True, kernel_clip=1.0, feature_msb=3, bn_momentum=0.99):
    """S1 ResNet-20 for CIFAR-10 in the Keras ResNet20v1 layout the seed trained to ~84 %
    (seed 001 Figure 31): conv 3x3 16 + BN + ReLU; three stages (16, 32, 64 filters) of
    three basic blocks conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU; the
    first block of stages 2 and 3 has stride 2 and a 1x1 stride-2 conv shortcut (with
    bias, without BN); global average pooling (AvgPool 8 on 32x32), Dense softmax.
    Convs 'same', he_normal, with bias. 274,442 parameters in the Keras count: 273,066
    trainable plus 1,376 batch-norm moving means and variances.

    ``precision="w1a8"`` or ``"binary"`` builds the quantized S1 network (Figure 23)
    explicitly, block by block - the first conv, the 1x1 shortcuts and the classifier stay
    full precision (``quantize_shortcuts=True`` binarizes the shortcuts too):

    - every 3x3 conv inside a block reads binary weights ``(||w||_1 / n) sign(w)`` with
      ``n`` the size of the tensor (``scaling="tensor"``) or of one output channel
      (``"channel"``, XNOR-Net); ``hysteresis=t`` keeps a weight's sign until its latent
      value crosses -t / +t (the seed's 0.1, Figure 21); latent weights are clipped to
      ``[-kernel_clip, kernel_clip]`` (None: no clip) so the clipped STE keeps passing
      gradient; ``binarize_weights=False`` leaves them fp32 (stage one of two-stage training);
    - in front of each such conv a feature-map quantizer: ``"w1a8"`` an 8-bit fixed-point
      QuantAct (range [-2^feature_msb, 2^feature_msb)), ``"binary"`` a BinAct (sign,
      gradient 1{|x| <= 1}). A sign after a ReLU is constantly +1, so in the binary network
      the ReLUs feeding a BinAct are left out (the binarization is the nonlinearity, as in
      BNN / Bi-Real Net); the seed kept them, one reason it stayed at chance;
    - ``bireal=True`` adds a real-valued shortcut around every binary conv (Bi-Real Net):
      ``y = x + BN(conv(Q(x)))`` for both convs of a block, the first one's shortcut
      through the 1x1 downsample where the shape changes.

    ``bn_momentum``: batch norm's moving-average momentum (Keras' 0.99; 0.9 for short
    runs of a few hundred steps, where 0.99 leaves the moving statistics near their
    initial values and the test accuracy near chance while the training loss falls).

    Layer names are those of the fp32 model, so weights move between variants with
    get_weights / set_weights (quantizers have no weights). Any other ``precision`` is
    the compile default, as for every zoo model."""
    shape, k = _check("resnet20", input_shape, num_classes)
    s1 = precision in _S1_PRECISIONS
    if scaling not in ("channel", "tensor"):
        raise ValueError(f"resnet20: expected scaling 'channel' or 'tensor', got {scaling!r}")
    if isinstance(hysteresis, bool) or not isinstance(hysteresis, numbers.Real) or hysteresis < 0:
        raise ValueError(f"resnet20: expected hysteresis >= 0, got {hysteresis!r}")
    if kernel_clip is not None:
        _positive("resnet20", "kernel_clip", kernel_clip)
    if (bireal or quantize_shortcuts) and not s1:
        raise ValueError(f"resnet20: bireal / quantize_shortcuts need precision 'w1a8' or 'binary', got {precision!r}")
    binary_acts = precision == "binary"
    relu = not binary_acts  # see the docstring: no ReLU in front of a sign

    def wfmt():
        if not (s1 and binarize_weights):
            return {}
        f = F.Binary(scale="channel_mean_abs" if scaling == "channel" else "mean_abs", hysteresis=hysteresis)
        clip = {} if kernel_clip is None else {"kernel_constraint": weight_clip(kernel_clip)}
        return dict(weight_format=f, **clip)

    def quant(x, name):
        if not s1:
            return x
        if binary_acts:
            return L.BinAct(name=f"{name}_binact")(x)
        return L.QuantAct(F.Fixed(8, msb=feature_msb), name=f"{name}_quant")(x)

    def unit(x, filters, kernel, strides, name, bn=True, act=True, binary=False):
        if binary:
            x = quant(x, name)
        x = L.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal",
                     name=f"{name}_conv", **(wfmt() if binary else {}))(x)
        if bn:
            x = L.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x) if act else x

    inp = Input(shape)
    x = unit(inp, 16, 3, 1, "conv1", act=relu)
    for stage, filters in enumerate((16, 32, 64), 1):
        for block in range(1, 4):
            name = f"stage{stage}_block{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            shortcut = x
            if strides != 1:
                shortcut = unit(x, filters, 1, strides, f"{name}_shortcut", bn=False, act=False,
                                binary=s1 and quantize_shortcuts)
            if bireal:  # a real-valued path around each binary conv
                y = unit(x, filters, 3, strides, f"{name}_a", act=False, binary=True)
                y = L.Add(name=f"{name}_a_add")([shortcut, y])
                y = L.ReLU(name=f"{name}_a_relu")(y) if relu else y
                z = unit(y, filters, 3, 1, f"{name}_b", act=False, binary=True)
                x = L.Add(name=f"{name}_add")([y, z])
            else:
                y = unit(x, filters, 3, strides, f"{name}_a", act=relu, binary=s1)
                y = unit(y, filters, 3, 1, f"{name}_b", act=False, binary=s1)
                x = L.Add(name=f"{name}_add")([shortcut, y])
            x = L.ReLU(name=f"{name}_out")(x) if relu else x
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    out = L.Dense(k, activation="softmax", kernel_initializer="he_normal", name="fc")(x)
    name = f"resnet20_{precision}{'_bireal' if bireal else ''}" if s1 else "resnet20"
    return Model(inp, out, name=name, seed=seed, precision=None if s1 else precision)


def alexnet_cifar(input_shape=(3, 32, 32), num_classes=10, seed=None, precision=None, batch_norm=False):
    """S1 AlexNet, CIFAR variant (seed 001 Figure 26, PyTorch): Conv 64 3x3/2 pad 1,
    MaxPool 2, Conv 192, MaxPool 2, Conv 384, Conv 256, Conv 256 (3x3 pad 1, ReLU after
    each), MaxPool 2; Dropout .5, Dense 4096 relu, Dropout .5, Dense 4096 relu, Dense
    softmax. PyTorch's default initialisation.

    ``batch_norm=True`` adds BatchNormalization (momentum 0.9) after every conv block
    (after its pooling) and hidden dense layer, as Larq's binary AlexNet: a binary layer's
    sign() then sees centred, scaled inputs. Without it the binary version does not leave
    chance (S2 on two Fashion-MNIST classes: 50% against 82% with it, 2 epochs)."""
    shape, k = _check("alexnet_cifar", input_shape, num_classes)
    t = dict(kernel_initializer="torch", bias_initializer="torch")
    def block(*ls):
        return [*ls, L.BatchNormalization(momentum=0.9)] if batch_norm else list(ls)

    return _sequential("alexnet_cifar", [
        *block(L.Conv2D(64, 3, strides=2, padding=1, activation="relu", **t), L.MaxPooling2D(2)),
        *block(L.Conv2D(192, 3, padding=1, activation="relu", **t), L.MaxPooling2D(2)),
        *block(L.Conv2D(384, 3, padding=1, activation="relu", **t)),
        *block(L.Conv2D(256, 3, padding=1, activation="relu", **t)),
        *block(L.Conv2D(256, 3, padding=1, activation="relu", **t), L.MaxPooling2D(2)),
        L.Flatten(),
        L.Dropout(0.5),
        *block(L.Dense(4096, activation="relu", **t)),
        L.Dropout(0.5),
        *block(L.Dense(4096, activation="relu", **t)),
        L.Dense(k, activation="softmax", **t),
    ], shape, seed, precision)


def alexnet_netadapt(input_shape=(3, 224, 224), num_classes=10, seed=None, precision=None,
                     filters=(64, 192, 384, 256, 256, 4096, 4096)):
    """S1 NetAdapt's AlexNet: torchvision's layout (the seed's latency table starts at an
    11x11 stride-4 pad-2 conv on 1x3x224x224). Conv 11x11/4 pad 2, MaxPool 3/2, Conv 5x5
    pad 2, MaxPool 3/2, three Conv 3x3 pad 1, MaxPool 3/2 (ReLU after each conv);
    Dropout .5, Dense, Dropout .5, Dense, Dense softmax. torchvision's
    AdaptiveAvgPool2d((6, 6)) is the identity at 224x224 and is left out.

    ``filters``: the widths NetAdapt prunes, [conv1..conv5, fc1, fc2]; the defaults give
    710,133,440 MACs with 10 classes, the figure NetAdapt started from (seed Figure 38a)."""
    shape, k = _check("alexnet_netadapt", input_shape, num_classes)
    if len(filters) != 7 or not all(_is_int(f) and f >= 1 for f in filters):
        raise ValueError(f"alexnet_netadapt: expected filters as seven positive integers, got {filters!r}")
    c1, c2, c3, c4, c5, f6, f7 = filters
    t = dict(kernel_initializer="torch", bias_initializer="torch")
    return _sequential("alexnet_netadapt", [
        L.Conv2D(c1, 11, strides=4, padding=2, activation="relu", **t),
        L.MaxPooling2D(3, strides=2),
        L.Conv2D(c2, 5, padding=2, activation="relu", **t),
        L.MaxPooling2D(3, strides=2),
        L.Conv2D(c3, 3, padding=1, activation="relu", **t),
        L.Conv2D(c4, 3, padding=1, activation="relu", **t),
        L.Conv2D(c5, 3, padding=1, activation="relu", **t),
        L.MaxPooling2D(3, strides=2),
        L.Flatten(),
        L.Dropout(0.5),
        L.Dense(f6, activation="relu", **t),
        L.Dropout(0.5),
        L.Dense(f7, activation="relu", **t),
        L.Dense(k, activation="softmax", **t),
    ], shape, seed, precision)


# ----------------------------------------------------------------------- S2 (seed 002)
# Inception v1 modules (Szegedy et al. 2014, Table 1): #1x1, #3x3 reduce, #3x3,
# #5x5 reduce, #5x5, pool proj
_INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def googlenet(input_shape=(3, 224, 224), num_classes=2, seed=None, precision=None, width=1.0, batch_norm=False):
    """S2 GoogLeNet (Inception v1) with one output head (the seed dropped the two
    auxiliary classifiers): conv 7x7/2 64, MaxPool 3/2, LRN, conv 1x1 64, conv 3x3 192,
    LRN, MaxPool 3/2, inception 3a 3b, MaxPool 3/2, 4a-4e, MaxPool 3/2, 5a 5b, global
    average pooling (AvgPool 7 at 224x224), Dropout .4, Dense softmax. Convs 'same' with
    ReLU; pools 'same'; LRN as Caffe's (size 5, alpha 1e-4, beta 0.75). 5,975,602
    parameters for the seed's two classes (its Table 4.1).

    ``width`` multiplies every channel count (rounded, at least 1): e.g. 0.25 on 32x32
    inputs for quick studies; the spatial path works down to 1x1. ``batch_norm=True``
    adds BatchNormalization (momentum 0.9) after every conv, which binary versions need
    (see ``alexnet_cifar``)."""
    shape, k = _check("googlenet", input_shape, num_classes)
    _positive("googlenet", "width", width)

    def w(c):
        return max(1, int(round(c * width)))

    def conv(f, size, name, strides=1):
        c = L.Conv2D(w(f), size, strides=strides, padding="same", activation="relu", name=name)
        if not batch_norm:
            return c
        b = L.BatchNormalization(momentum=0.9, name=f"{name}/bn")
        return lambda x: b(c(x))

    def pool(name):
        return L.MaxPooling2D(3, strides=2, padding="same", name=name)

    def lrn(name):  # Caffe LRN(local_size n=5, alpha, beta) = TF LRN(radius 2, alpha / n)
        return L.LRN(depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75, name=name)

    inp = Input(shape)
    x = lrn("pool1/norm1")(pool("pool1/3x3_s2")(conv(64, 7, "conv1/7x7_s2", strides=2)(inp)))
    x = conv(192, 3, "conv2/3x3")(conv(64, 1, "conv2/3x3_reduce")(x))
    x = pool("pool2/3x3_s2")(lrn("conv2/norm2")(x))
    for name, cfg in _INCEPTION.items():
        if name in ("4a", "5a"):
            x = pool(f"pool{name[0]}/3x3_s2")(x)
        c1, c3r, c3, c5r, c5, pp = cfg
        m = f"inception_{name}"
        b1 = conv(c1, 1, f"{m}/1x1")(x)
        b3 = conv(c3, 3, f"{m}/3x3")(conv(c3r, 1, f"{m}/3x3_reduce")(x))
        b5 = conv(c5, 5, f"{m}/5x5")(conv(c5r, 1, f"{m}/5x5_reduce")(x))
        bp = conv(pp, 1, f"{m}/pool_proj")(L.MaxPooling2D(3, strides=1, padding="same", name=f"{m}/pool")(x))
        x = L.Concatenate(name=f"{m}/output")([b1, b3, b5, bp])
    x = L.Dropout(0.4, name="pool5/drop")(L.GlobalAveragePooling2D(name="pool5/avg")(x))
    out = L.Dense(k, activation="softmax", name="classifier")(x)
    return Model(inp, out, name="googlenet", seed=seed, precision=precision)


# ----------------------------------------------------------------------- S4 (seed 004)
def squeezenet_v1_1(input_shape=(3, 227, 227), num_classes=1000, seed=None, precision=None,
                    kernel_initializer="glorot_uniform"):
    """S4 SqueezeNet v1.1 (seed 004 Code 4 and 5, after DeepScale's Caffe model): conv1 64
    3x3/2 relu, MaxPool 3/2, fire2 fire3 (squeeze 16, expand 64), MaxPool 3/2, fire4 fire5
    (32, 128), MaxPool 3/2, fire6 fire7 (48, 192), fire8 fire9 (64, 256), Dropout .5,
    conv10 1x1 num_classes relu, global average pooling, softmax. A fire module:
    squeeze 1x1 relu, then expand 1x1 relu || expand 3x3 same relu, concatenated.
    Convs and pools 'valid' unless noted (227 -> 113 -> 56 -> 27 -> 13).
    ``kernel_initializer`` of every convolution: Keras' glorot_uniform as the seed, or
    ``"he_normal"`` - without batch norm, 18 ReLU convolutions at Glorot's variance shrink
    the signal layer by layer and training from scratch starts slowly (He et al. 2015)."""
    shape, k = _check("squeezenet_v1_1", input_shape, num_classes)
    init = L._initializer(kernel_initializer, "kernel_initializer", "squeezenet_v1_1")

    def conv(filters, size, name, **kw):
        return L.Conv2D(filters, size, activation="relu", kernel_initializer=init, name=name, **kw)

    def fire(x, squeeze, expand, name):
        s = conv(squeeze, 1, f"{name}/squeeze1x1")(x)
        e1 = conv(expand, 1, f"{name}/expand1x1")(s)
        e3 = conv(expand, 3, f"{name}/expand3x3", padding="same")(s)
        return L.Concatenate(name=f"{name}/concat")([e1, e3])

    inp = Input(shape)
    x = L.MaxPooling2D(3, strides=2, name="pool1")(conv(64, 3, "conv1", strides=2)(inp))
    x = fire(fire(x, 16, 64, "fire2"), 16, 64, "fire3")
    x = L.MaxPooling2D(3, strides=2, name="pool3")(x)
    x = fire(fire(x, 32, 128, "fire4"), 32, 128, "fire5")
    x = L.MaxPooling2D(3, strides=2, name="pool5")(x)
    x = fire(fire(x, 48, 192, "fire6"), 48, 192, "fire7")
    x = fire(fire(x, 64, 256, "fire8"), 64, 256, "fire9")
    x = conv(k, 1, "conv10")(L.Dropout(0.5, name="drop9")(x))
    out = L.Softmax(name="loss")(L.GlobalAveragePooling2D(name="globpool")(x))
    return Model(inp, out, name="squeezenet_v1_1", seed=seed, precision=precision)


# ----------------------------------------------------------------------- S3 (seed 003)
def simple_cnn(input_shape=(1, 28, 28), num_classes=10, seed=None, precision=None):
    """S3 NumPy CNN: Conv 12 3x3 (He init) + ReLU -> MaxPool 2 -> Flatten (12*13*13 =
    2028 on 28x28) -> Dense 10 softmax."""
    shape, k = _check("simple_cnn", input_shape, num_classes)
    return _sequential("simple_cnn", [
        L.Conv2D(12, 3, activation="relu", kernel_initializer="he_normal"),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(k, activation="softmax"),
    ], shape, seed, precision)


# ----------------------------------------------------------------------- classic
def lenet5(input_shape=(1, 32, 32), num_classes=10, seed=None, precision=None):
    """LeNet-5 (LeCun et al. 1998; the table of seed 001 Figure 20): C1 conv 6 5x5 tanh,
    S2 average pool 2, C3 conv 16 5x5 tanh, S4 average pool 2, C5 conv 120 5x5 tanh,
    F6 dense 84 tanh, dense softmax (C3 fully connected, no trainable subsampling).
    Inputs smaller than 32x32 are zero-padded to it first, as LeCun centred the 28x28
    digits in a 32x32 field; 61,706 parameters either way."""
    shape, k = _check("lenet5", input_shape, num_classes)
    _, h, w = shape
    pad = []
    if h < 32 or w < 32:
        ph, pw = max(32 - h, 0), max(32 - w, 0)
        pad = [L.ZeroPadding2D(((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))]
    return _sequential("lenet5", pad + [
        L.Conv2D(6, 5, activation="tanh"),
        L.AveragePooling2D(2),
        L.Conv2D(16, 5, activation="tanh"),
        L.AveragePooling2D(2),
        L.Conv2D(120, 5, activation="tanh"),
        L.Flatten(),
        L.Dense(84, activation="tanh"),
        L.Dense(k, activation="softmax"),
    ], shape, seed, precision)


# ----------------------------------------------------------------------- S1 training recipe
def fit_bnn(model, x, y, epochs, validation_data=None, batch_size=128, learning_rate=1e-3, warmup_epochs=1,
            min_lr=0.0, optimizer="adam", weight_decay=0.0, bop_threshold=1e-8, bop_gamma=1e-4, stage_one=None,
            stage_one_epochs=0, seed=None, verbose=1):
    """The recipe that trains the binary ResNet-20 (the seed's SGD 0.1 stayed at chance):

    1. optional two-stage training (``stage_one``: the same network built with
       ``binarize_weights=False``): ``stage_one_epochs`` with binary activations and fp32
       weights, whose weights then start ``model``;
    2. linear warm-up: epoch e < ``warmup_epochs`` at ``learning_rate * (e + 1) / (warmup_epochs + 1)``
       (each warm-up epoch recompiles, so Adam's moments restart);
    3. Adam with a cosine schedule from ``learning_rate`` to ``min_lr`` over all ``epochs``
       (the warm-up epochs count; schedules run on the model's epoch counter), latent
       weights clipped by the layers' ``kernel_constraint`` (resnet20's ``kernel_clip``);
       ``optimizer="bop"`` updates the binary weights with Bop (``bop_threshold``,
       ``bop_gamma``) and the rest with that Adam.

    Returns the per-epoch history (dict of lists) of all stages in order, with a
    ``stage`` list naming each epoch's stage."""
    from . import optimizers as O
    if optimizer not in ("adam", "bop"):
        raise ValueError(f"fit_bnn: expected optimizer 'adam' or 'bop', got {optimizer!r}")
    for name, v in (("epochs", epochs), ("warmup_epochs", warmup_epochs), ("stage_one_epochs", stage_one_epochs)):
        if not _is_int(v) or v < 0:
            raise ValueError(f"fit_bnn: expected {name} >= 0, got {v!r}")
    if warmup_epochs > epochs:
        raise ValueError(f"fit_bnn: warmup_epochs={warmup_epochs} exceeds epochs={epochs}")
    _positive("fit_bnn", "learning_rate", learning_rate)
    history = {}

    def run(m, opt, n, stage):
        m.compile(opt, metrics=["accuracy"])
        h = m.fit(x, y, batch_size=batch_size, epochs=n, validation_data=validation_data, seed=seed,
                  verbose=verbose).history
        for key, vals in h.items():
            history.setdefault(key, []).extend(vals)
        history.setdefault("stage", []).extend([stage] * len(next(iter(h.values()), [])))

    if stage_one is not None and stage_one_epochs:
        run(stage_one, O.Adam(O.CosineDecay(learning_rate, t_max=stage_one_epochs, min_lr=min_lr),
                              weight_decay=weight_decay), stage_one_epochs, "stage one (fp32 weights)")
        model.set_weights(stage_one.get_weights())
    for e in range(warmup_epochs):
        run(model, O.Adam(learning_rate * (e + 1) / (warmup_epochs + 1), weight_decay=weight_decay), 1, "warm-up")
    adam = O.Adam(O.CosineDecay(learning_rate, t_max=max(epochs, 1), min_lr=min_lr), weight_decay=weight_decay)
    opt = O.Bop(threshold=bop_threshold, gamma=bop_gamma, fp_optimizer=adam) if optimizer == "bop" else adam
    run(model, opt, epochs - warmup_epochs, "cosine")
    return history
