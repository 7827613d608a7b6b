"""S1 binary ResNet-20: layout of the w1a8 / binary variants, binary weights with
||w||_1/n scaling, Bi-Real shortcuts, and the fit_bnn recipe."""
import numpy as np
import pytest

import lowbit as lb
from lowbit import layers as L

SHAPE = (1, 8, 8)  # small inputs keep the 20 layers fast; the layout is that of 32x32


def _block_convs(m):
    return [layer for layer in m.layers if isinstance(layer, L.Conv2D) and layer.name.startswith("stage")
            and "shortcut" not in layer.name]


@pytest.mark.parametrize("precision,quant", [("w1a8", L.QuantAct), ("binary", L.BinAct)])
def test_s1_layout(precision, quant):
    m = lb.models.resnet20(SHAPE, seed=0, precision=precision, hysteresis=0.1)
    fp = lb.models.resnet20(SHAPE, seed=0)
    assert m.count_params() == fp.count_params()
    assert [layer.name for layer in m.layers if isinstance(layer, L.Conv2D)] == \
        [layer.name for layer in fp.layers if isinstance(layer, L.Conv2D)]
    convs = _block_convs(m)
    assert len(convs) == 18
    for c in convs:
        assert isinstance(c.weight_format, lb.formats.Binary)
        cfg = c.weight_format.config()
        assert cfg["scale"] == "channel_mean_abs" and cfg["hysteresis"] == 0.1
        assert c._kernel_clip == 1.0
    quants = [layer for layer in m.layers if type(layer) is quant]
    assert len(quants) == 18
    if precision == "w1a8":
        assert all(q.format.bits == 8 and q.format.msb == 3 for q in quants)
    # first conv, 1x1 shortcuts and classifier stay full precision
    fp_layers = [layer for layer in m.layers if isinstance(layer, (L.Conv2D, L.Dense)) and layer not in convs]
    assert [layer.name for layer in fp_layers] == ["conv1_conv", "stage2_block1_shortcut_conv",
                                                   "stage3_block1_shortcut_conv", "fc"]
    assert all(layer.weight_format is None and layer.input_format is None for layer in fp_layers)
    relus = sum(isinstance(layer, L.ReLU) for layer in m.layers)
    assert relus == (19 if precision == "w1a8" else 0)  # a sign after a ReLU would be constant
    s = m.summary(print_fn=None)
    assert s.totals["macs"] == fp.summary(print_fn=None).totals["macs"]


def test_quantize_shortcuts_and_tensor_scaling():
    m = lb.models.resnet20(SHAPE, seed=0, precision="w1a8", scaling="tensor", quantize_shortcuts=True)
    sc = [layer for layer in m.layers if "shortcut_conv" in layer.name]
    assert all(layer.weight_format.config()["scale"] == "mean_abs" for layer in sc)
    assert sum(isinstance(layer, L.QuantAct) for layer in m.layers) == 20


def test_bireal_adds_a_real_shortcut_around_every_binary_conv():
    m = lb.models.resnet20(SHAPE, seed=0, precision="binary", bireal=True)
    assert sum(isinstance(layer, L.Add) for layer in m.layers) == 18
    assert sum(isinstance(layer, L.Add) for layer in lb.models.resnet20(SHAPE, seed=0).layers) == 9
    assert m.name == "resnet20_binary_bireal"


@pytest.mark.parametrize("scaling", ["channel", "tensor"])
def test_binary_weights_only_see_sign_and_mean_abs(scaling):
    """Latent block-conv weights sign(w) * 2^-4 * (1.5 or 0.5, alternating) have
    ||w||_1/n = 2^-4 exactly per channel and per tensor, so they must give the outputs of
    the weights sign(w) * 2^-4 bit for bit (the signs downstream are discontinuous, so
    only exact scales make a fair test); in the fp32 network they do not."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4,) + SHAPE).astype(np.float32)
    for precision, same in (("binary", True), ("w1a8", True), (None, False)):
        m = lb.models.resnet20(SHAPE, seed=0, precision=precision, scaling=scaling)
        convs = {c.name for c in _block_convs(m)}
        slots = [(layer.name, i) for layer, nodes in m._layers for nid in nodes
                 for i in range(len(m._graph.node_params(nid)))]
        latent, binarized = m.get_weights(), m.get_weights()
        kernels = [i for i, (name, k) in enumerate(slots) if name in convs and k == 0]
        assert len(kernels) == 18
        for i in kernels:
            sign = np.where(latent[i] >= 0, 1.0, -1.0).astype(np.float32)
            wobble = np.resize(np.array([1.5, 0.5], np.float32), latent[i][0].size).reshape(latent[i].shape[1:])
            latent[i] = sign * np.float32(2.0 ** -4) * wobble
            binarized[i] = sign * np.float32(2.0 ** -4)
        m.set_weights(latent)
        y = m.predict(x)
        m.set_weights(binarized)
        assert np.array_equal(m.predict(x), y) == same, precision


def test_two_stage_weights_carry_over_and_fit_bnn_records_stages():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64,) + SHAPE).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)  # an easy two-class task
    stage_one = lb.models.resnet20(SHAPE, num_classes=2, seed=0, precision="binary", binarize_weights=False)
    assert all(c.weight_format is None for c in _block_convs(stage_one))
    model = lb.models.resnet20(SHAPE, num_classes=2, seed=1, precision="binary", bireal=False)
    h = lb.models.fit_bnn(model, x, y, epochs=3, batch_size=16, learning_rate=1e-3, warmup_epochs=1,
                          stage_one=stage_one, stage_one_epochs=1, verbose=0, validation_data=(x, y))
    assert h["stage"] == ["stage one (fp32 weights)", "warm-up", "cosine", "cosine"]
    assert h["learning_rate"][1] == pytest.approx(5e-4)  # warm-up: lr * 1 / 2
    # cosine over the model's epochs 0..2, the warm-up being epoch 0
    assert h["learning_rate"][2:] == pytest.approx([7.5e-4, 2.5e-4])
    assert all(np.isfinite(h["loss"]))
    # stage two started from stage one's weights
    fresh = lb.models.resnet20(SHAPE, num_classes=2, seed=1, precision="binary")
    assert not np.allclose(fresh.get_weights()[0], model.get_weights()[0])


def test_bop_option_trains():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32,) + SHAPE).astype(np.float32)
    y = rng.integers(0, 10, 32)
    m = lb.models.resnet20(SHAPE, seed=0, precision="binary", bireal=True, kernel_clip=None)
    w0 = m.get_weights()
    h = lb.models.fit_bnn(m, x, y, epochs=1, warmup_epochs=0, optimizer="bop", bop_threshold=0.0, bop_gamma=1.0,
                          batch_size=16, verbose=0)
    assert len(h["loss"]) == 1 and np.isfinite(h["loss"][0])
    conv = [i for i, a in enumerate(w0) if a.ndim == 4][1]  # the first binary conv's kernel
    flipped = np.sign(m.get_weights()[conv]) != np.sign(w0[conv])
    assert flipped.any()  # Bop with threshold 0 flips weights whose momentum agrees in sign


@pytest.mark.parametrize("kw,match", [
    (dict(scaling="row"), "scaling"),
    (dict(hysteresis=-0.1, precision="binary"), "hysteresis"),
    (dict(bireal=True), "bireal"),
    (dict(kernel_clip=0, precision="w1a8"), "kernel_clip"),
])
def test_resnet20_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        lb.models.resnet20(SHAPE, **kw)


def test_fit_bnn_bad_options():
    m = lb.models.resnet20(SHAPE, seed=0, precision="binary")
    x, y = np.zeros((4,) + SHAPE, np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="optimizer"):
        lb.models.fit_bnn(m, x, y, 1, optimizer="sgd")
    with pytest.raises(ValueError, match="warmup_epochs"):
        lb.models.fit_bnn(m, x, y, 1, warmup_epochs=2)
