"""Binary xnor-popcount kernels (lb.kernels) against the simulated Binary layers and
numpy: exact equality on random shapes (odd sizes, stride 2, padding, 1x1, dilation,
channel counts not a multiple of 64), both dispatch paths, the environment switch."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit as lb
from conftest import CONV_CASES, conv_case_geometry, conv_case_id, model_with_random_weights, np_conv2d, predict_kernels_on_off

K, L, F = lb.kernels, lb.layers, lb.formats
NATIVE = K.info()["binary_native_supported"]
PATHS = ["portable"] + (["native"] if NATIVE else [])


def sign(a):
    return np.where(np.asarray(a) < 0, -1.0, 1.0)


def np_pack_bits(x):
    bits = (np.asarray(x) < 0).astype(np.uint64)
    n = bits.shape[-1]
    bits = np.concatenate([bits, np.zeros(bits.shape[:-1] + (-n % 64,), np.uint64)], axis=-1)
    bits = bits.reshape(bits.shape[:-1] + (-1, 64))
    return (bits << np.arange(64, dtype=np.uint64)).sum(-1, dtype=np.uint64)


def with_signed_zeros(x, rng):
    x = x.copy()
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, size=max(1, flat.size // 20), replace=False)
    flat[idx[::2]] = 0.0
    flat[idx[1::2]] = -0.0  # sign(-0) = +1, as the Binary quantizer
    return x


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(1,), (3, 64), (2, 5, 130), (7, 1000), (4, 63)])
def test_pack_bits_matches_numpy(shape, path, rng):
    x = with_signed_zeros(rng.normal(size=shape).astype(np.float32), rng)
    x.reshape(-1)[0] = np.nan  # not < 0: +1
    got = K.pack_bits(x, path=path)
    assert got.dtype == np.uint64 and got.shape == shape[:-1] + (-(-shape[-1] // 64),)
    np.testing.assert_array_equal(got, np_pack_bits(x))


def binary_layer_model(layer, in_shape, rng):
    return model_with_random_weights(layer, in_shape, rng)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n,fan_in,units", [(5, 130, 45), (3, 64, 64), (1, 1, 1), (4, 200, 33), (9, 577, 70)])
def test_binary_dense_equals_simulated_layer(n, fan_in, units, path, rng):
    layer = L.Dense(units, weight_format=F.Binary(), input_format=F.Binary())
    m, w, b = binary_layer_model(layer, (fan_in,), rng)
    x = with_signed_zeros(rng.normal(size=(n, fan_in)).astype(np.float32), rng)
    np.testing.assert_array_equal(K.binary_dense(x, w, bias=b, path=path), m.predict(x))
    np.testing.assert_array_equal(K.binary_dense(x, w, path=path), (sign(x) @ sign(w)).astype(np.float32))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_case_id)
def test_binary_conv2d_equals_simulated_layer(case, path, rng):
    shape, filters, k, s, pad, d = case
    layer = L.Conv2D(filters, k, strides=s, padding=pad, dilation_rate=d, weight_format=F.Binary(),
                     input_format=F.Binary())
    m, w, b = binary_layer_model(layer, shape[1:], rng)
    x = with_signed_zeros(rng.normal(size=shape).astype(np.float32), rng)
    got = K.binary_conv2d(x, w, stride=s, padding=pad, bias=b, dilation=d, path=path)
    np.testing.assert_array_equal(got, m.predict(x))
    # and the numpy sign convolution (padding adds 0), without bias
    ref = np_conv2d(sign(x), sign(w), None, *conv_case_geometry(case)).astype(np.float32)
    np.testing.assert_array_equal(K.binary_conv2d(x, w, stride=s, padding=pad, dilation=d, path=path), ref)


@pytest.mark.parametrize("path", PATHS)
def test_scale_and_bias_epilogue_is_two_fp32_roundings(path, rng):
    """y = float32(dot) * scale + bias, rounded after the product and after the sum."""
    x = rng.normal(size=(6, 100)).astype(np.float32)
    w = rng.normal(size=(100, 21)).astype(np.float32)
    scale = rng.uniform(0.01, 3, size=21).astype(np.float32)
    bias = rng.normal(size=21).astype(np.float32)
    dot = (sign(x) @ sign(w)).astype(np.float32)
    np.testing.assert_array_equal(K.binary_dense(x, w, scale, bias, path=path), dot * scale + bias)
    xc = rng.normal(size=(2, 10, 5, 5)).astype(np.float32)
    wc = rng.normal(size=(21, 10, 3, 3)).astype(np.float32)
    dotc = np_conv2d(sign(xc), sign(wc), None, (1, 1), ((1, 1), (1, 1))).astype(np.float32)
    got = K.binary_conv2d(xc, wc, 1, 1, scale, bias, path=path)
    np.testing.assert_array_equal(got, dotc * scale[:, None, None] + bias[:, None, None])


def test_xnor_net_scales_fold_into_the_epilogue(rng):
    """Binary(scale='channel_mean_abs') weights, Binary(scale='mean_abs') inputs: the simulated
    layer sums +-alpha_x alpha_w in fp32; the kernel applies alpha_x alpha_w once (closer to exact)."""
    layer = L.Conv2D(12, 3, padding="same", weight_format=F.Binary(scale="channel_mean_abs"),
                     input_format=F.Binary(scale="mean_abs"))
    m, w, b = binary_layer_model(layer, (20, 6, 6), rng)
    x = rng.normal(size=(1, 20, 6, 6)).astype(np.float32)  # one sample: alpha_x is per batch tensor
    alpha_w = np.abs(w).reshape(12, -1).mean(1)
    alpha_x = np.abs(x).mean()
    got = K.binary_conv2d(x, w, 1, "same", (alpha_w * alpha_x).astype(np.float32), b)
    np.testing.assert_allclose(got, m.predict(x), rtol=1e-5, atol=1e-5 * float(np.abs(got).max()))


def test_native_and_portable_agree_on_a_large_layer(rng):
    if not NATIVE:
        pytest.skip("this CPU has no AVX-512 VPOPCNTDQ")
    x = rng.normal(size=(3, 200, 15, 13)).astype(np.float32)
    w = K.pack_conv_weights(rng.normal(size=(70, 200, 3, 3)).astype(np.float32))
    for s, p in [(1, 1), (2, "same"), (1, "valid")]:
        a = K.binary_conv2d(x, w, s, p, path="native")
        np.testing.assert_array_equal(a, K.binary_conv2d(x, w, s, p, path="portable"))
    xd = rng.normal(size=(17, 1500)).astype(np.float32)
    wd = K.pack_dense_weights(rng.normal(size=(1500, 99)).astype(np.float32))
    np.testing.assert_array_equal(K.binary_dense(xd, wd, path="native"), K.binary_dense(xd, wd, path="portable"))


def test_environment_forces_the_portable_path(tmp_path, rng):
    x = rng.normal(size=(2, 70, 9, 9)).astype(np.float32)
    w = rng.normal(size=(33, 70, 3, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    code = ("import json, numpy as np, lowbit as lb; d = '%s';"
            "y = lb.kernels.binary_conv2d(np.load(d + '/x.npy'), np.load(d + '/w.npy'), 2, 1);"
            "np.save(d + '/y.npy', y); print(json.dumps(lb.kernels.info()))") % tmp_path
    env = dict(os.environ, LOWBIT_PORTABLE_KERNELS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["binary"] == "portable" and info["portable_forced"] is True
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), K.binary_conv2d(x, w, 2, 1))
    if NATIVE and not K.info()["portable_forced"]:
        assert K.info()["binary"] == "avx512_vpopcntdq"


def test_packed_weights_are_32x_smaller_and_reusable(rng):
    w = rng.normal(size=(256, 256, 3, 3)).astype(np.float32)
    p = K.pack_conv_weights(w)
    assert p.memory_bytes * 32 == w.nbytes and p.kernel_size == (3, 3) and p.out_channels == 256
    x = rng.normal(size=(1, 256, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(K.binary_conv2d(x, p, 1, 1), K.binary_conv2d(x, w, 1, 1))
    d = K.pack_dense_weights(rng.normal(size=(4096, 4096)).astype(np.float32))
    assert d.memory_bytes == 4096 * 4096 // 8


def test_bad_arguments_raise(rng):
    x = rng.normal(size=(2, 8)).astype(np.float32)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="unknown path"):
        K.binary_dense(x, w, path="gpu")
    with pytest.raises(ValueError, match="features"):
        K.binary_dense(x[:, :7], w)
    with pytest.raises(ValueError, match="scale"):
        K.binary_dense(x, w, scale=np.ones(3))
    with pytest.raises(TypeError, match="numeric array"):
        K.binary_dense("abc", w)
    with pytest.raises(ValueError, match="convolution weights"):
        K.binary_dense(x, K.pack_conv_weights(np.ones((4, 8, 1, 1), np.float32)))
    xc = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="channels"):
        K.binary_conv2d(xc, np.ones((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="kernel extent"):
        K.binary_conv2d(xc, np.ones((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="padding"):
        K.binary_conv2d(xc, np.ones((2, 3, 3, 3), np.float32), padding="full")
    with pytest.raises(ValueError, match="stride"):
        K.binary_conv2d(xc, np.ones((2, 3, 3, 3), np.float32), stride=0)
    if not NATIVE:
        with pytest.raises(ValueError, match="VPOPCNTDQ"):
            K.binary_dense(x, w, path="native")


def binary_net(seed=0):
    """Binary x Binary convs (odd size, 'same', stride 2, 1x1, 16+ channels so that blocked
    layouts flow between conv and batch norm), a binary Dense, fp32 first and last layers."""
    b = dict(weight_format=F.Binary(), input_format=F.Binary())
    return lb.Sequential([
        L.Conv2D(16, 3, padding="same", input_shape=(3, 11, 11)),
        L.BatchNormalization(),
        L.Conv2D(32, 3, padding="same", **b),
        L.BatchNormalization(),
        L.Conv2D(70, 3, strides=2, padding="same", **b),
        L.Conv2D(33, 1, weight_format=F.Binary(hysteresis=0.05), input_format=F.Binary()),
        L.Flatten(),
        L.Dense(45, **b),
        L.Dense(10, activation="softmax"),
    ], seed=seed)


def predict_both_ways(m, x):
    return predict_kernels_on_off(m, x, "binary")


def test_engine_predict_and_evaluate_equal_the_simulated_model_exactly(rng):
    m = binary_net()
    m.compile(lb.optimizers.Adam(1e-2), "categorical_crossentropy", metrics=["accuracy"])
    x = rng.normal(size=(20, 3, 11, 11)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 20)]
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)  # trained weights and BN statistics
    fast, sim, used = predict_both_ways(m, x)
    assert used == 4 * 3  # four binary layers, three batches of 7
    np.testing.assert_array_equal(fast, sim)
    K.use_in_engine(False)
    try:
        ev_sim = m.evaluate(x, y, batch_size=6)
    finally:
        K.use_in_engine(True)
    assert m.evaluate(x, y, batch_size=6) == ev_sim
    # new weights reach the kernels (the packed copy follows the latent weights)
    w = m.get_weights()
    m.set_weights([-a if a.ndim == 4 and a.shape[0] == 70 else a for a in w])
    fast2, sim2, _ = predict_both_ways(m, x)
    np.testing.assert_array_equal(fast2, sim2)
    assert not np.array_equal(fast2, fast)


def test_engine_packs_blocked_inputs_alike_on_both_paths(tmp_path, rng):
    """The binary convs after batch norm read nChw16c activations and pack their signs from
    the blocks (16 channels per compare); the portable packer gives the same predictions."""
    m = binary_net()
    m.compile(lb.optimizers.Adam(1e-2), "categorical_crossentropy")
    x = rng.normal(size=(20, 3, 11, 11)).astype(np.float32)
    m.fit(x, np.eye(10, dtype=np.float32)[rng.integers(0, 10, 20)], batch_size=8, epochs=1, verbose=0)
    m.save(tmp_path / "m.lowbit")
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, lowbit as lb; d = %r; m = lb.load_model(d + '/m.lowbit');"
            "np.save(d + '/y.npy', m.predict(np.load(d + '/x.npy'), batch_size=7));"
            "print(lb.kernels.info()['binary'], lb.kernels.info()['engine_binary_calls'])") % str(tmp_path)
    env = dict(os.environ, LOWBIT_PORTABLE_KERNELS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path, calls = out.stdout.split()[-2:]
    assert path == "portable" and int(calls) == 4 * 3
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), m.predict(x, batch_size=7))


@pytest.mark.parametrize("model,per_batch", [
    (lambda: lb.models.lenet(seed=0), 3),  # conv2, dense256, dense84 binary x binary
    (lambda: lb.models.alexnet_cifar((3, 16, 16), 10, seed=0, batch_norm=True), 6),
    (lambda: lb.models.resnet20((3, 8, 8), 10, seed=0), 20),  # all but the first conv and the classifier
])
def test_engine_runs_the_binary_preset_on_xnor_kernels_exactly(model, per_batch, rng):
    """The 'binary' preset scales weights by mean |w| per channel (XNOR-Net). The simulated
    layer factors the scale out (alpha * (x . sign w), an exact integer sum then one
    rounding), the kernel puts it in the epilogue: the trained model's predictions are
    bit for bit the same, padding, batch norm and dropout included."""
    m = model()
    m.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy", precision="binary")
    shape = m.input_shape
    x = rng.normal(size=(16, *shape)).astype(np.float32)
    y = np.eye(m.output_shape[-1], dtype=np.float32)[rng.integers(0, m.output_shape[-1], 16)]
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)  # latent weights with distinct channel scales
    fast, sim, used = predict_both_ways(m, x)
    assert used == per_batch * 3  # batches of 7, 7, 2
    np.testing.assert_array_equal(fast, sim)
    # the scale really differs per channel, and it reaches the kernel's epilogue
    w = [a for a in m.get_weights() if a.ndim == 4][1]
    alpha = np.abs(w).reshape(len(w), -1).mean(1)
    assert alpha.std() > 1e-3 * alpha.mean()
    m.set_weights([a * 3 if a.ndim == 4 else a for a in m.get_weights()])
    fast3, sim3, _ = predict_both_ways(m, x)
    np.testing.assert_array_equal(fast3, sim3)
    assert not np.array_equal(fast3, fast)


@pytest.mark.parametrize("kwargs,per_batch", [
    (dict(precision="binary"), 18),  # the 18 block convs; first conv, shortcuts, classifier fp32
    (dict(precision="binary", bireal=True, quantize_shortcuts=True, hysteresis=0.1), 20),
    (dict(precision="w1a8"), 0),  # 8-bit features: no binary x binary layer
])
def test_s1_binary_resnet_runs_its_binact_convs_on_xnor_kernels_exactly(kwargs, per_batch, rng):
    """S1's binary ResNet-20 puts a BinAct (a Binary() quantizer node) in front of each
    binary-weight conv instead of an input format: the conv reads +-1 values, so at
    inference it runs the xnor-popcount kernel on them, bit for bit the simulated model."""
    m = lb.models.resnet20((3, 8, 8), 10, seed=0, bn_momentum=0.9, **kwargs)
    m.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy")
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    m.fit(x, np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)], batch_size=8, epochs=1, verbose=0)
    fast, sim, used = predict_both_ways(m, x)
    assert used == per_batch * 3  # batches of 7, 7, 2
    np.testing.assert_array_equal(fast, sim)
    if per_batch:
        assert sum("xnor_popcount" in r["impl"] for r in m.kernels(batch_size=2)) == per_batch


def test_factored_binary_scale_is_the_scaled_product(rng):
    """The simulated scaled-binary Dense is alpha * (sign x . sign w): the exact integer
    dot times the quantizer's fp32 alpha, one fp32 rounding (a zero dot is exactly 0; a
    float64 sum of +-alpha terms is not)."""
    fmt = lb.formats.Binary(scale="mean_abs")
    layer = L.Dense(5, use_bias=False, weight_format=fmt, input_format=lb.formats.Binary())
    x = rng.normal(size=(6, 40)).astype(np.float32)
    z = layer(x)
    w = layer.get_weights()[0].astype(np.float64)
    dot = np.where(x < 0, -1.0, 1.0) @ np.where(w < 0, -1.0, 1.0)  # exact integers
    ref = dot.astype(np.float32) * np.float32(np.abs(w).mean())
    np.testing.assert_allclose(z, ref, rtol=2 ** -23, atol=0)
    assert np.all(z[dot == 0] == 0)
    # the signs are cached per quantization of the weights: new weights, new signs, on
    # the kernel and on the simulated path alike
    w2 = -rng.normal(size=w.shape).astype(np.float32) * 3
    dot2 = np.where(x < 0, -1.0, 1.0) @ np.where(w2 < 0, -1.0, 1.0)
    ref2 = dot2.astype(np.float32) * np.float32(np.abs(w2.astype(np.float64)).mean())
    before = lb.kernels.use_in_engine()
    try:
        for on in (False, True, False):
            lb.kernels.use_in_engine(on)
            layer.set_weights([w.astype(np.float32)])
            np.testing.assert_allclose(layer(x), ref, rtol=2 ** -23, atol=0)
            layer.set_weights([w2])
            np.testing.assert_allclose(layer(x), ref2, rtol=2 ** -23, atol=0)
    finally:
        lb.kernels.use_in_engine(before)
