"""Whole-model precision presets, calibration, loss scaling, Bop and weight_clip."""
import numpy as np
import pytest

import lowbit as lb

L, F = lb.layers, lb.formats


def tiny(seed=0):
    return lb.Sequential([L.Conv2D(4, 3, activation="relu", input_shape=(1, 8, 8)), L.Flatten(),
                          L.Dense(16, activation="relu"), L.Dense(10, activation="softmax")], seed=seed)


def test_presets_assign_formats_per_layer():
    m = tiny()
    m.compile("adam", precision="binary")
    first, mid, last = m._kernel_layers()
    assert set(first._precision_formats) == {"weight"}  # exempt_first: full-precision input
    assert set(mid._precision_formats) == {"weight", "input"}
    assert last._precision_formats == {}  # exempt_last
    assert mid._precision_activation == "linear" and last._precision_activation is None
    m.compile("adam", precision="fw16bw16")
    assert all(set(k._precision_formats) == {"weight", "input", "output", "grad"} for k in m._kernel_layers())
    m.compile("adam", precision="fw16bw32")
    assert all("grad" not in k._precision_formats for k in m._kernel_layers())
    for name in lb.precision.PRESETS:
        m.compile("adam", precision=name)  # every preset builds
    with pytest.raises(ValueError, match="precision"):
        m.compile("adam", precision="fp7")
    m.compile("adam", precision="mxfp4")
    assert all(set(k._precision_formats) == {"weight", "input", "grad"} and
               isinstance(k._precision_formats["weight"], F.MXFP4) and
               isinstance(k._precision_formats["grad"], F.BFloat16) for k in m._kernel_layers())


def test_explicit_layer_formats_win_and_weights_survive_rebuild(rng):
    m = lb.Sequential([L.Dense(3, weight_format=F.Fixed(4, msb=0), input_shape=(5,))], seed=0)
    w = m.get_weights()
    m.compile("sgd", "mse", precision="fp16")
    assert all(np.array_equal(a, b) for a, b in zip(w, m.get_weights()))
    cfg = lb.layers._formats_cfg(m.layers[0])
    assert cfg["weight"]["kind"] == "fixed" and cfg["input"]["kind"] == "minifloat"


def test_fp16_forward_is_fp16_exact(rng):
    m = lb.Sequential([L.Dense(6, input_shape=(5,))], seed=1)
    m.compile("sgd", "mse", precision="fw16bw32")
    x = rng.normal(size=(4, 5)).astype(np.float32)
    k, b = m.get_weights()
    h = lambda a: a.astype(np.float16).astype(np.float32)
    z = (h(x).astype(np.float64) @ h(k)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x), h(z) + b, rtol=1e-6, atol=1e-6)


def test_calibration_percentile_msb(rng):
    m = tiny()
    m.compile("adam", precision="fixed8")
    x = rng.uniform(size=(64, 1, 8, 8)).astype(np.float32)
    chosen = m.calibrate(x, percentile=100)
    k = m.get_weights()[0]
    assert chosen[(m.layers[0].name, "weight")] == int(np.ceil(np.log2(np.abs(k).max())))
    assert chosen[(m.layers[0].name, "input")] == int(np.ceil(np.log2(x.max())))
    assert m.layers[0]._precision_formats["weight"].msb == chosen[(m.layers[0].name, "weight")]


def test_dynamic_loss_scaling_skips_overflow_and_recovers(rng):
    m = lb.Sequential([L.Dense(10, activation="softmax", input_shape=(4,))], seed=0)
    m.compile(lb.optimizers.SGD(0.1), precision=lb.Precision(grad=F.Float16(), loss_scale="dynamic"))
    m._graph.set_loss_scaling(True, 2.0 ** 24, growth_interval=3)  # gradients overflow fp16 at first
    x = (rng.normal(size=(64, 4)) * 100).astype(np.float32)
    y = rng.integers(0, 10, 64)
    w0 = m.get_weights()[0]
    m.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert m._graph.skipped_steps == 1 and m._graph.loss_scale == 2.0 ** 23
    np.testing.assert_array_equal(m.get_weights()[0], w0)  # the overflowing step was skipped
    m.fit(x, y, batch_size=64, epochs=30, verbose=0)
    assert not np.array_equal(m.get_weights()[0], w0) and np.all(np.isfinite(m.get_weights()[0]))
    assert m._graph.skipped_steps > 1


def test_weight_clip_and_bop(rng):
    m = lb.Sequential([L.Dense(8, weight_format=F.Binary(), kernel_constraint=lb.constraints.weight_clip(0.05),
                               input_shape=(6,)), L.Dense(3)], seed=0)
    m.compile(lb.optimizers.SGD(1.0), "mse")
    x, y = rng.normal(size=(16, 6)).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32)
    m.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.abs(m.get_weights()[0]).max() <= 0.05 + 1e-7
    assert np.abs(m.get_weights()[2]).max() > 0.05  # the unconstrained layer is not clipped
    # Bop: binary weights flip sign where |m| > threshold and sign(m) = sign(w); m = gamma * g at step 1
    m = lb.Sequential([L.Dense(8, weight_format=F.Binary(), input_shape=(6,)), L.Dense(3)], seed=0)
    m.compile(lb.optimizers.Bop(threshold=1e-3, gamma=0.5, fp_optimizer=lb.optimizers.SGD(0.1)), "mse")
    w0 = m.get_weights()
    _, g = m.compute_gradients(x, y)
    m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    mom = 0.5 * g[0]
    flip = (np.abs(mom) > 1e-3) & (np.sign(mom) == np.sign(w0[0]))
    np.testing.assert_array_equal(m.get_weights()[0], np.where(flip, -w0[0], w0[0]))
    np.testing.assert_allclose(m.get_weights()[2], w0[2] - 0.1 * g[2], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_lenet_precisions_fashion_mnist():
    """S0 on Fashion-MNIST, LeNet, 2 epochs, same seed: fixed16 and fp16 within 1 point of
    fp32, fixed8 within 2 points, binary >= 75% (chance is 10%)."""
    (x, y), (xt, yt) = lb.datasets.fashion_mnist()
    acc = {}
    for p in ["fp32", "fixed16", "fp16", "fixed8", "binary"]:
        m = lb.models.lenet(seed=0)
        m.compile(lb.optimizers.Adam(1e-3), precision=p)
        h = m.fit(x, y, batch_size=128, epochs=2, validation_data=(xt, yt), seed=0, verbose=0)
        acc[p] = h.history["val_accuracy"][-1]
    print("LeNet test accuracy by precision:", acc)
    assert acc["fp32"] >= 0.87
    assert abs(acc["fixed16"] - acc["fp32"]) <= 0.01
    assert abs(acc["fp16"] - acc["fp32"]) <= 0.01
    assert acc["fixed8"] >= acc["fp32"] - 0.02
    assert acc["binary"] >= 0.75


def test_quantization_state_saved_and_restored(tmp_path, rng):
    """Calibrated and tracked MSBs and hysteresis signs travel with the weights: a fresh
    model loading the file predicts exactly as the trained one."""
    def build():
        m = lb.Sequential([L.Conv2D(4, 3, activation="relu", input_shape=(1, 8, 8),
                                    weight_format=F.Binary(hysteresis=0.1)),
                           L.Flatten(), L.Dense(10, activation="softmax")], seed=0)
        m.compile(lb.optimizers.Adam(1e-2), precision=lb.Precision(input=F.Fixed(8, msb="auto"),
                                                                   output=F.Fixed(8, msb="auto")))
        return m
    x = rng.uniform(size=(128, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    m = build()
    m.fit(x, y, batch_size=32, epochs=2, verbose=0)
    m.save_weights(tmp_path / "q.npz")
    m2 = build()
    m2.load_weights(tmp_path / "q.npz")
    np.testing.assert_array_equal(m2.predict(x), m.predict(x))
    conv = m._layers[0][1][0]
    s1, s2 = m._graph.get_quant_state(conv), m2._graph.get_quant_state(conv)
    assert [a[0] for a in s1] == [a[0] for a in s2] and len(s1[0][2]) == 36  # hysteresis signs of 4x1x3x3
    np.testing.assert_array_equal(s1[0][2], s2[0][2])


@pytest.mark.parametrize("preset", ["fp8", "mxfp8", "mxfp6", "mxfp4", "nvfp4"])
def test_ocp_and_microscaling_presets_train(preset, rng):
    """Each new preset trains a small conv net on an easy task (loss falls, stays finite)
    and its forward is the numpy composition of its formats: conv kernels blocked along
    C kh kw, feature maps along channels, dense kernels along their inputs."""
    x = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).astype(np.int64)
    m = tiny(seed=1)
    m.compile(lb.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", precision=preset)
    h = m.fit(x, y, batch_size=16, epochs=6, verbose=0, seed=0)
    loss = h.history["loss"]
    assert np.all(np.isfinite(loss)) and loss[-1] < 0.8 * loss[0], loss
    fmt = type(m._kernel_layers()[0]._precision_formats["weight"])
    q = lambda a, axis: fmt().quantize(a, axis=axis) if issubclass(fmt, F.MX) else fmt().quantize(a)
    k1, b1, k2, b2, k3, b3 = m.get_weights()
    xs = x[:5]
    from conftest import np_conv2d
    z = np_conv2d(q(xs, 1), q(k1.reshape(4, -1), 1).reshape(k1.shape), None, (1, 1), ((0, 0), (0, 0)))
    a = np.maximum(z.astype(np.float32) + b1[None, :, None, None], 0).reshape(5, -1)
    a = np.maximum((q(a, 1).astype(np.float64) @ q(k2, 0)).astype(np.float32) + b2, 0)
    logits = (q(a, 1).astype(np.float64) @ q(k3, 0)).astype(np.float32) + b3
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(m.predict(xs), p / p.sum(1, keepdims=True), rtol=2e-4, atol=1e-6)
