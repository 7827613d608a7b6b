"""Model zoo: parameter and MAC counts against hand formulas and torch twins, forward
shapes, one training step per model, the default precision, bad arguments."""
import numpy as np
import pytest

import lowbit as lb
from conftest import torch

M = lb.models
nn = torch.nn if torch is not None else None


# ------------------------------------------------------------------ hand formulas
def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def dense(i, o):
    return i * o + o


def bn(c):  # gamma, beta, moving mean, moving variance (the Keras count)
    return 4 * c


HAND_PARAMS = {
    "pure_cnn": conv(1, 32, 3) + conv(32, 64, 3) + dense(64 * 12 * 12, 128) + dense(128, 10),
    "lenet": conv(1, 32, 5) + conv(32, 48, 5) + dense(48 * 5 * 5, 256) + dense(256, 84) + dense(84, 10),
    # 28 -> 14 -> 7 -> 4 with 'same' pools
    "alexnet_mnist": conv(1, 64, 3) + conv(64, 128, 3) + conv(128, 256, 3) + dense(256 * 4 * 4, 1024)
    + dense(1024, 1024) + dense(1024, 10),
    # 28 -> 14 -> 7 -> 3
    "vgg_mnist": conv(1, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3) + conv(64, 128, 3)
    + 3 * conv(128, 128, 3) + dense(128 * 3 * 3, 1024) + dense(1024, 10),
    "simple_cnn": conv(1, 12, 3) + dense(12 * 13 * 13, 10),
    "lenet5": conv(1, 6, 5) + conv(6, 16, 5) + conv(16, 120, 5) + dense(120, 84) + dense(84, 10),
}

SEED_FIGURES = [  # (model, kwargs, parameters) as printed in the seeds / known references
    ("lenet", {}, 369_174),  # S0 Figure 20
    ("resnet20", {}, 274_442),  # S1 Figure 31 (Keras: 273,066 trainable + 1,376)
    ("googlenet", {}, 5_975_602),  # S2 Table 4.1, two classes
    ("squeezenet_v1_1", {}, 1_235_496),  # SqueezeNet v1.1 on ImageNet
    ("pure_cnn", {}, 1_199_882),  # Keras mnist_cnn
    ("lenet5", {}, 61_706),
    ("lenet5", dict(input_shape=(1, 28, 28)), 61_706),  # padded to 32x32 first
]


@pytest.mark.parametrize("name", sorted(HAND_PARAMS))
def test_params_match_hand_formulas(name):
    assert getattr(M, name)(seed=0).count_params() == HAND_PARAMS[name]


@pytest.mark.parametrize("name,kw,params", SEED_FIGURES)
def test_params_match_seed_figures(name, kw, params):
    assert getattr(M, name)(seed=0, **kw).count_params() == params


def test_resnet20_trainable_and_moving_statistics():
    s = M.resnet20(seed=0).summary(print_fn=None).totals
    channels = 16 + 6 * 16 + 6 * 32 + 6 * 64  # conv1 + two BN per block
    assert s["non_trainable_params"] == 2 * channels == 1_376
    assert s["trainable_params"] == 273_066 and s["params"] == 274_442


# ------------------------------------------------------------------ torch twins
def torch_counts(module, input_shape):
    """(parameters + BN running statistics, conv/linear multiply-adds per sample)."""
    macs = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            macs.append(out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1])
        else:
            macs.append(mod.in_features * mod.out_features)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module.eval()(torch.zeros((1,) + tuple(input_shape)))
    for h in handles:
        h.remove()
    params = sum(p.numel() for p in module.parameters())
    params += sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return params, sum(macs)


def t_lenet():
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 48, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1200, 256), nn.ReLU(), nn.Linear(256, 84), nn.ReLU(),
                         nn.Linear(84, 10))


class TBlock(nn.Module if nn else object):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                               nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 else nn.Identity()

    def forward(self, x):
        return torch.relu(self.a(x) + self.short(x))


def t_resnet20():
    layers = [nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, c in enumerate((16, 32, 64)):
        for b in range(3):
            layers.append(TBlock(cin, c, 2 if stage and not b else 1))
            cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def t_alexnet_netadapt():  # torchvision.models.alexnet(num_classes=10), written out
    r = nn.ReLU
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), r(), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), r(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), r(), nn.Conv2d(384, 256, 3, padding=1), r(),
        nn.Conv2d(256, 256, 3, padding=1), r(), nn.MaxPool2d(3, 2), nn.AdaptiveAvgPool2d(6), nn.Flatten(),
        nn.Dropout(), nn.Linear(9216, 4096), r(), nn.Dropout(), nn.Linear(4096, 4096), r(), nn.Linear(4096, 10))


def t_alexnet_cifar():  # seed 001 Figure 26
    r = nn.ReLU
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 2, 1), r(), nn.MaxPool2d(2), nn.Conv2d(64, 192, 3, padding=1), r(), nn.MaxPool2d(2),
        nn.Conv2d(192, 384, 3, padding=1), r(), nn.Conv2d(384, 256, 3, padding=1), r(),
        nn.Conv2d(256, 256, 3, padding=1), r(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(), nn.Linear(1024, 4096), r(), nn.Dropout(), nn.Linear(4096, 4096), r(), nn.Linear(4096, 10))


class TConcat(nn.Module if nn else object):
    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


def t_squeezenet(k):
    def fire(cin, s, e):
        return nn.Sequential(nn.Conv2d(cin, s, 1), nn.ReLU(),
                             TConcat(nn.Sequential(nn.Conv2d(s, e, 1), nn.ReLU()),
                                     nn.Sequential(nn.Conv2d(s, e, 3, padding=1), nn.ReLU())))
    return nn.Sequential(nn.Conv2d(3, 64, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2), fire(64, 16, 64), fire(128, 16, 64),
                         nn.MaxPool2d(3, 2), fire(128, 32, 128), fire(256, 32, 128), nn.MaxPool2d(3, 2),
                         fire(256, 48, 192), fire(384, 48, 192), fire(384, 64, 256), fire(512, 64, 256),
                         nn.Dropout(), nn.Conv2d(512, k, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def t_googlenet(k, width):
    def w(c):
        return max(1, int(round(c * width)))

    def cv(cin, cout, size, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, size, stride, size // 2), nn.ReLU())

    cfg = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "pool", (192, 96, 208, 16, 48, 64),
           (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
           (256, 160, 320, 32, 128, 128), "pool", (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]
    layers = [cv(3, w(64), 7, 2), nn.MaxPool2d(3, 2, 1), cv(w(64), w(64), 1), cv(w(64), w(192), 3),
              nn.MaxPool2d(3, 2, 1)]
    cin = w(192)
    for c in cfg:
        if c == "pool":
            layers.append(nn.MaxPool2d(3, 2, 1))
            continue
        c1, c3r, c3, c5r, c5, pp = (w(v) for v in c)
        layers.append(TConcat(cv(cin, c1, 1), nn.Sequential(cv(cin, c3r, 1), cv(c3r, c3, 3)),
                              nn.Sequential(cv(cin, c5r, 1), cv(c5r, c5, 5)),
                              nn.Sequential(nn.MaxPool2d(3, 1, 1), cv(cin, pp, 1))))
        cin = c1 + c3 + c5 + pp
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(cin, k))


TWINS = [
    ("lenet", {}, lambda: t_lenet(), (1, 28, 28)),
    ("resnet20", {}, lambda: t_resnet20(), (3, 32, 32)),
    ("alexnet_cifar", {}, lambda: t_alexnet_cifar(), (3, 32, 32)),
    ("squeezenet_v1_1", dict(input_shape=(3, 64, 64), num_classes=10), lambda: t_squeezenet(10), (3, 64, 64)),
    ("googlenet", dict(input_shape=(3, 64, 64), width=0.25), lambda: t_googlenet(2, 0.25), (3, 64, 64)),
    ("googlenet", {}, lambda: t_googlenet(2, 1.0), (3, 224, 224)),
]


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("name,kw,twin,shape", TWINS, ids=[f"{t[0]}-{t[3][1]}" for t in TWINS])
def test_params_and_macs_match_torch_twin(name, kw, twin, shape):
    m = getattr(M, name)(seed=0, **kw)
    params, macs = torch_counts(twin(), shape)
    assert m.count_params() == params
    assert m.summary(print_fn=None).totals["macs"] == macs


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_alexnet_netadapt_is_torchvision_alexnet():
    m = M.alexnet_netadapt(seed=0)
    params, macs = torch_counts(t_alexnet_netadapt(), (3, 224, 224))
    assert m.count_params() == params == 57_044_810
    assert m.summary(print_fn=None).totals["macs"] == macs == 710_133_440
    y = m.predict(np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32))
    assert y.shape == (1, 10) and np.isclose(y.sum(), 1.0, atol=1e-5)


# ------------------------------------------------------------------ forward + a training step
RUNS = [  # small shapes where the model allows them
    ("pure_cnn", {}),
    ("lenet", {}),
    ("alexnet_mnist", {}),
    ("vgg_mnist", {}),
    ("resnet20", dict(input_shape=(3, 16, 16))),
    ("alexnet_cifar", {}),
    ("googlenet", dict(input_shape=(3, 32, 32), num_classes=4, width=0.125)),
    ("squeezenet_v1_1", dict(input_shape=(3, 32, 32), num_classes=10)),
    ("simple_cnn", {}),
    ("lenet5", dict(input_shape=(1, 28, 28))),
]


@pytest.mark.parametrize("name,kw", RUNS, ids=[r[0] for r in RUNS])
def test_forward_shape_and_one_training_step(name, kw):
    m = getattr(M, name)(seed=1, **kw)
    shape, k = m.input_shape, m.output_shape[0]
    rng = np.random.default_rng(0)
    x = rng.random((4,) + shape, dtype=np.float32)
    y = rng.integers(0, k, 4)
    p = m.predict(x)
    assert p.shape == (4, k) and np.allclose(p.sum(1), 1.0, atol=1e-5)
    before = m.get_weights()
    m.compile(lb.optimizers.SGD(0.01), "categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])
    after = m.get_weights()
    assert len(after) == len(before)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before)), "a step changed no weight"
    assert all(np.isfinite(w).all() for w in after)


def test_same_seed_same_weights_dag():
    a, b = M.squeezenet_v1_1((3, 32, 32), 10, seed=3), M.squeezenet_v1_1((3, 32, 32), 10, seed=3)
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))
    c = M.squeezenet_v1_1((3, 32, 32), 10, seed=4)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_squeezenet_kernel_initializer():
    glorot = M.squeezenet_v1_1((1, 32, 32), 10, seed=0)
    he = M.squeezenet_v1_1((1, 32, 32), 10, seed=0, kernel_initializer="he_normal")
    kernels = [(a, b) for a, b in zip(glorot.get_weights(), he.get_weights()) if a.ndim == 4]
    assert len(kernels) == 26
    for g, h in kernels:
        fan_in, fan_out = np.prod(g.shape[1:]), g.shape[0] * np.prod(g.shape[2:])
        if g.size >= 4096:  # enough values for the sample std to be within 10%
            assert np.std(h) == pytest.approx(np.sqrt(2 / fan_in), rel=0.1)
            assert np.abs(g).max() <= np.sqrt(6 / (fan_in + fan_out)) + 1e-7
    with pytest.raises(ValueError, match="kernel_initializer"):
        M.squeezenet_v1_1((1, 32, 32), 10, kernel_initializer="lecun")


def test_googlenet_width_scales_channels():
    m = M.googlenet((3, 32, 32), 2, seed=0, width=0.25)
    first = m.get_weights()[0]
    assert first.shape == (16, 3, 7, 7)  # 64 * 0.25
    assert m._graph.node_shape(m._layers[-2][1][-1]) == [256]  # 1024 * 0.25 into the classifier


def test_batch_norm_option_adds_one_bn_per_conv_block_and_hidden_dense():
    """alexnet_cifar / googlenet(batch_norm=True): the Larq layout for binary versions, a
    BatchNormalization after every conv block and hidden dense layer, nothing else changed."""
    a0, a1 = M.alexnet_cifar((3, 32, 32), 2, seed=0), M.alexnet_cifar((3, 32, 32), 2, seed=0, batch_norm=True)
    assert a1.count_params() - a0.count_params() == bn(64 + 192 + 384 + 256 + 256 + 4096 + 4096)
    kinds = [type(layer).__name__ for layer in a1.layers]
    assert kinds.count("BatchNormalization") == 7
    assert kinds[kinds.index("Flatten") - 1] == "BatchNormalization"  # after the last pool
    g0 = M.googlenet((3, 32, 32), 2, seed=0, width=0.25)
    g1 = M.googlenet((3, 32, 32), 2, seed=0, width=0.25, batch_norm=True)
    convs = [w.shape[0] for w in g0.get_weights() if w.ndim == 4]
    assert g1.count_params() - g0.count_params() == bn(sum(convs))
    x = np.random.default_rng(0).uniform(size=(2, 3, 32, 32)).astype(np.float32)
    for m in (a1, g1):
        p = m.predict(x)
        assert p.shape == (2, 2) and np.allclose(p.sum(1), 1, atol=1e-5)


# ------------------------------------------------------------------ default precision
def test_precision_argument_is_compile_default():
    m = M.lenet(seed=0, precision="fp16")
    assert m.default_precision == "fp16"
    m.compile("adam")
    assert m._precision.name == "fp16"
    assert m._kernel_layers()[0]._precision_formats["weight"].bits == 16
    m.compile("adam", precision="fp32")  # an explicit precision wins
    assert m._precision.name == "fp32" and m._kernel_layers()[0]._precision_formats == {}
    p = lb.Precision(weight=lb.formats.Fixed(6, msb=0), name="w6")
    r = M.resnet20((3, 8, 8), seed=0, precision=p)
    r.compile("sgd")
    assert r._precision is p
    assert M.lenet(seed=0).default_precision is None


# ------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("call,match", [
    (lambda: M.lenet(input_shape=(28, 28)), "input_shape"),
    (lambda: M.lenet(input_shape=(1, 0, 28)), "input_shape"),
    (lambda: M.resnet20(input_shape=(3, 32.0, 32)), "input_shape"),
    (lambda: M.pure_cnn(input_shape=None), "input_shape"),
    (lambda: M.lenet5(num_classes=1), "num_classes"),
    (lambda: M.googlenet(num_classes=2.5), "num_classes"),
    (lambda: M.squeezenet_v1_1(num_classes=True), "num_classes"),
    (lambda: M.googlenet(width=0), "width"),
    (lambda: M.googlenet(width=-1.0), "width"),
    (lambda: M.vgg_mnist(filters=(32, 64)), "filters"),
    (lambda: M.alexnet_netadapt(filters=(64, 192, 384, 256, 256, 4096, 0)), "filters"),
    (lambda: M.simple_cnn(precision="fp7"), "precision"),
    (lambda: M.lenet(input_shape=(1, 8, 8)), "conv2d|dense|shape|size"),  # too small for the layout
    (lambda: M.alexnet_netadapt(input_shape=(3, 32, 32)), "conv2d|pool|shape|size"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
