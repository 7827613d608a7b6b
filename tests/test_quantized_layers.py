"""Quantized layers: S4's forward order and straight-through backward against numpy,
finite differences where the quantizers are the identity (32 bits), BinAct,
QuantizedReLU, grad formats."""
import numpy as np
import pytest

import lowbit as lb
from conftest import assert_close, finite_difference, fwd_bwd, np_conv2d, single
from test_formats import np_fixed

L, F = lb.layers, lb.formats


def test_quantized_conv2d_forward_backward_match_numpy(rng):
    res, msb = [8, 6, 6], [0, 1, 2]
    layer = L.QuantizedConv2D(5, 3, quantization_resolutions=res, quantization_msb=msb, padding="same")
    m = single(layer, (3, 6, 6))
    w, b = m.get_weights()
    b = rng.normal(size=5).astype(np.float32) * 0.1
    m.set_weights([w, b])
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    wq = np_fixed(w, res[0], msb[0], "floor")
    xq = np_fixed(x, res[1], msb[1], "floor")
    pads = ((1, 1), (1, 1))
    z = np_conv2d(xq, wq, None, (1, 1), pads)
    ref = np_fixed(z.astype(np.float32), res[2], msb[2], "floor") + b[None, :, None, None]
    dy = rng.normal(size=ref.shape).astype(np.float32)
    y, dx, grads = fwd_bwd(m, x, dy)
    assert_close(y, ref, what="y")
    _, rdx, rdw, _ = np_conv2d(xq, wq, None, (1, 1), pads, dy=dy)  # identity STE everywhere
    assert_close(dx, rdx, what="dx")
    assert_close(grads[0], rdw, what="dkernel")
    assert_close(grads[1], dy.sum((0, 2, 3)), what="dbias")
    assert not np.array_equal(m.get_weights()[0], wq)  # latent weights stay fp32


def test_quantization_disabled_is_plain_conv(rng):
    a = single(L.QuantizedConv2D(3, 3, quantization_enabled=False), (2, 5, 5), seed=1)
    b = single(L.Conv2D(3, 3), (2, 5, 5), seed=1)
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


@pytest.mark.parametrize("layer,shape", [
    (lambda f: L.Conv2D(4, 3, weight_format=f, input_format=f, output_format=f, grad_format=f), (2, 6, 6)),
    (lambda f: L.Dense(5, weight_format=f, input_format=f, output_format=f, grad_format=f,
                       bias_initializer="torch"), (7,)),
])
def test_identity_quantizers_pass_finite_differences(layer, shape, rng):
    """With 32-bit quantizers the layer is the fp32 one: gradients match finite differences
    and the unquantized layer exactly."""
    f = F.Fixed(32, msb=4)
    m = single(layer(f), shape, seed=2)
    x = rng.normal(size=(3,) + shape).astype(np.float32)
    dy = rng.normal(size=(3,) + m.output_shape).astype(np.float32)
    finite_difference(m, x, dy)
    plain = single(layer(None), shape, seed=2)
    y, dx, g = fwd_bwd(m, x, dy)
    y2, dx2, g2 = fwd_bwd(plain, x, dy)
    assert_close(y, y2, rtol=1e-6)
    assert_close(dx, dx2, rtol=1e-6)
    for a, b in zip(g, g2):
        assert_close(a, b, rtol=1e-6)


def test_grad_format_quantizes_gradients_and_clipped_ste(rng):
    g = F.Fixed(8, msb=-2)  # step 2^-9
    m = single(L.Dense(4, grad_format=g, weight_format=F.Binary(), input_format=F.Fixed(4, msb=0, ste="clipped")),
               (6,))
    x = (rng.normal(size=(5, 6)) * 1.5).astype(np.float32)
    dy = rng.normal(size=(5, 4)).astype(np.float32) * 0.1
    y, dx, grads = fwd_bwd(m, x, dy)
    step = 2.0 ** -9
    for a in [dx, grads[0], grads[1]]:
        assert np.allclose(a / step, np.round(a / step)), "gradient not on the grad_format grid"
    assert np.all(dx[np.abs(x) > 1] == 0)  # clipped STE of the input quantizer (A = 2^0)
    w = m.get_weights()[0]
    xq = np_fixed(x, 4, 0, "nearest")
    assert_close(y, xq @ np.where(w < 0, -1.0, 1.0) + m.get_weights()[1], what="binary dense")
    dW = xq.T.astype(np.float64) @ dy
    ref = np.clip(np.rint(dW / step), -128, 127) * step
    ref = np.where(np.abs(w) <= 1, ref, 0)  # clipped STE of Binary
    assert_close(grads[0], ref, rtol=1e-5, what="dkernel")


def test_binact_and_quantized_relu(rng):
    x = np.array([[-2.0, -0.5, 0.0, -0.0, 0.3, 1.0, 1.5, 0.96]], np.float32)
    dy = np.ones_like(x)
    m = single(L.BinAct(), (8,))
    y, dx, _ = fwd_bwd(m, x, dy)
    np.testing.assert_array_equal(y, [[-1, -1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(dx, [[0, 1, 1, 1, 1, 1, 0, 1]])
    m = single(L.QuantizedReLU(2), (8,))
    y, dx, _ = fwd_bwd(m, x, dy)
    np.testing.assert_array_equal(y, [[0, 0, 0, 0, 0.25, 0.75, 0.75, 0.75]])  # clip to 1 - 2^-2
    np.testing.assert_array_equal(dx, [[0, 0, 0, 0, 1, 1, 0, 1]])


def test_binary_network_trains(rng):
    """Latent fp32 weights learn through sign() with the clipped STE."""
    (x, y), (xt, yt) = lb.datasets.fashion_mnist()
    x, y = x[:6000], y[:6000]
    m = lb.Sequential([
        L.Conv2D(16, 5, input_shape=(1, 28, 28), weight_format=F.Binary(scale="channel_mean_abs")),
        L.MaxPooling2D(2), L.BatchNormalization(), L.BinAct(),
        L.Flatten(), L.Dense(10, activation="softmax")], seed=0)
    m.compile(lb.optimizers.Adam(1e-3))
    m.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert m.evaluate(xt[:2000], yt[:2000])["accuracy"] > 0.7
    assert not set(np.unique(m.get_weights()[0])) <= {-1.0, 1.0}  # the latent weights are real-valued


def test_int_activation_running_range(rng):
    """Int activations: per-batch scale in training, an EMA (0.99) of max|x| at inference."""
    m = single(L.Dense(3, input_format=F.Int(8)), (4,))
    m.compile(lb.optimizers.SGD(1e-9), "mse")
    xs = [rng.normal(size=(8, 4)).astype(np.float32) * s for s in (1.0, 3.0)]
    for x in xs:
        m.fit(x, np.zeros((8, 3), np.float32), batch_size=8, epochs=1, verbose=0)
    node = m._layers[0][1][0]
    running = m._graph.get_quant_state(node)[1][3]  # the input role
    a0, a1 = (np.abs(x).max() for x in xs)
    assert running == pytest.approx(0.99 * a0 + 0.01 * a1, rel=1e-6)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    s = running / 127
    xq = np.clip(np.rint(x / s), -127, 127) * s
    k, b = m.get_weights()
    np.testing.assert_allclose(m.predict(x), xq @ k + b, rtol=1e-5, atol=1e-6)


def test_asymmetric_int_activation_running_range(rng):
    """Int(symmetric=False) activations: the batch's (min, max) in training, an EMA (0.99)
    of them at inference, so that a prediction does not depend on the rest of its batch."""
    m = single(L.Dense(3, input_format=F.Int(8, symmetric=False)), (4,))
    m.compile(lb.optimizers.SGD(1e-9), "mse")
    xs = [rng.normal(size=(8, 4)).astype(np.float32) * s + 0.5 for s in (1.0, 3.0)]
    for x in xs:
        m.fit(x, np.zeros((8, 3), np.float32), batch_size=8, epochs=1, verbose=0)
    node = m._layers[0][1][0]
    lo, hi = m._graph.get_quant_state(node)[1][4]  # the input role
    (l0, h0), (l1, h1) = ((min(x.min(), 0), max(x.max(), 0)) for x in xs)
    assert lo == pytest.approx(0.99 * l0 + 0.01 * l1, rel=1e-6)
    assert hi == pytest.approx(0.99 * h0 + 0.01 * h1, rel=1e-6)
    x = rng.normal(size=(5, 4)).astype(np.float32) * 2
    s = (np.float64(hi) - lo) / 255
    zp = np.rint(-lo / s)
    xq = (np.clip(np.rint(x / s) + zp, 0, 255) - zp) * s
    k, b = m.get_weights()
    np.testing.assert_allclose(m.predict(x), xq @ k + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(m.predict(x[:1]), m.predict(x)[:1])  # batch-independent
    fresh = single(L.Dense(3, input_format=F.Int(8, symmetric=False)), (4,))
    assert fresh._graph.get_quant_state(fresh._layers[0][1][0])[1][4] == (1.0, -1.0)  # unset: the batch's range


def _np_accumulate(pairs, q):
    acc = np.float32(0)
    for a, b in pairs:
        acc = q(np.float32(acc + np.float32(a) * np.float32(b)))
    return acc


@pytest.mark.parametrize("fmt", [F.Float16(), F.MiniFloat(4, 3), F.Fixed(10, msb=3)])
def test_accum_format_rounds_every_partial_sum(fmt, rng):
    q = lambda v: fmt.quantize(np.array([v], np.float32))[0]
    m = single(L.Dense(3, accum_format=fmt, use_bias=False), (6,))
    x = rng.normal(size=(2, 6)).astype(np.float32)
    k = m.get_weights()[0]
    ref = np.array([[_np_accumulate(zip(x[n], k[:, j]), q) for j in range(3)] for n in range(2)])
    np.testing.assert_array_equal(m.predict(x), ref)
    m = single(L.Conv2D(2, 3, padding="same", strides=2, accum_format=fmt, use_bias=False), (2, 5, 5))
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    w = m.get_weights()[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((1, 2, 3, 3), np.float32)
    for o in range(2):
        for i in range(3):
            for j in range(3):
                pairs = [(xp[0, c, 2 * i + a, 2 * j + b], w[o, c, a, b]) for c in range(2) for a in range(3)
                         for b in range(3) if 0 <= 2 * i + a - 1 < 5 and 0 <= 2 * j + b - 1 < 5]
                ref[0, o, i, j] = _np_accumulate(pairs, q)
    np.testing.assert_array_equal(m.predict(x), ref)
    # a wide accumulator reproduces the fp32 layer; gradients flow (fp32 backward)
    wide = single(L.Conv2D(2, 3, accum_format=F.MiniFloat(8, 23, saturate=False)), (2, 5, 5), seed=4)
    plain = single(L.Conv2D(2, 3), (2, 5, 5), seed=4)
    assert_close(wide.predict(x), plain.predict(x), rtol=1e-6)
    with pytest.raises(ValueError, match="accum_format"):
        L.Dense(3, accum_format=F.Binary())


def test_quantized_conv_on_blocked_layout(rng):
    """16 channels: BN hands a channel-blocked tensor to a quantized conv with bias; its
    output (16 filters) stays blocked. Same numbers as the NCHW reference."""
    from conftest import np_batchnorm_train
    f = dict(weight_format=F.Fixed(8, msb=0), input_format=F.Fixed(8, msb=2), output_format=F.Fixed(8, msb=3))
    m = single([L.BatchNormalization(epsilon=1e-3), L.Conv2D(16, 3, padding="same", bias_initializer="torch", **f)],
               (16, 5, 5))
    x = rng.normal(size=(2, 16, 5, 5)).astype(np.float32)
    dy = rng.normal(size=(2, 16, 5, 5)).astype(np.float32)
    y, dx, grads = fwd_bwd(m, x, dy)
    _, _, _, _, k, b = m.get_weights()
    z = np_batchnorm_train(x, np.ones(16), np.zeros(16), 1e-3, np.zeros_like(x))[0].astype(np.float32)
    xq, wq = np_fixed(z, 8, 2, "nearest"), np_fixed(k, 8, 0, "nearest")
    pads = ((1, 1), (1, 1))
    ref = np_fixed(np_conv2d(xq, wq, None, (1, 1), pads).astype(np.float32), 8, 3, "nearest") + b[None, :, None, None]
    assert_close(y, ref, rtol=1e-5, what="y")
    _, _, rdw, _ = np_conv2d(xq, wq, None, (1, 1), pads, dy=dy)
    assert_close(grads[4], rdw, what="dkernel")
    assert_close(grads[5], dy.sum((0, 2, 3)), what="dbias")


def test_block_formats_run_along_the_reduction_axis(rng):
    """MX blocks as hardware takes them: conv kernels (O, C, kh, kw) along C kh kw, dense
    kernels (K, M) along K, activations (N, C, H, W) along C at each pixel, (N, F) along F."""
    fmt = F.MXFP4()
    # conv: 5 filters over 4 x 3 x 3 = 36 inputs (a block of 32 and a partial one of 4)
    m = single(L.Conv2D(5, 3, weight_format=F.MXFP4(), input_format=F.MXFP4(), use_bias=False), (4, 6, 6))
    w = m.get_weights()[0]
    x = (rng.normal(size=(2, 4, 6, 6)) * rng.uniform(0.1, 10, size=(1, 4, 1, 1))).astype(np.float32)
    wq = fmt.quantize(w.reshape(5, -1), axis=1).reshape(w.shape)
    xq = fmt.quantize(x, axis=1)
    assert not np.array_equal(xq, fmt.quantize(x.reshape(2, -1)).reshape(x.shape))  # the axis matters
    assert_close(m.predict(x), np_conv2d(xq, wq, None, (1, 1), ((0, 0), (0, 0))), rtol=1e-5, what="conv")
    # dense: kernel (40, 7) in blocks along the 40 inputs of each unit
    d = single(L.Dense(7, weight_format=F.MXFP4(), input_format=F.MXFP4(), use_bias=False), (40,))
    k = d.get_weights()[0]
    xd = rng.normal(size=(3, 40)).astype(np.float32)
    ref = fmt.quantize(xd, axis=1).astype(np.float64) @ fmt.quantize(k, axis=0)
    assert_close(d.predict(xd), ref, rtol=1e-5, what="dense")
    # a quantize layer on feature maps: channels at each pixel
    q = single(L.QuantAct(F.NVFP4()), (20, 3, 3))
    xa = rng.normal(size=(2, 20, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(q.predict(xa), F.NVFP4().quantize(xa, axis=1))


def test_mx_network_trains_and_keeps_nchw(rng):
    """16 channels would go channel-blocked; with MX formats the layer takes NCHW."""
    m = lb.Sequential([L.Conv2D(16, 3, padding="same", weight_format=F.MXFP8(), input_format=F.MXFP8()),
                       L.BatchNormalization(), L.Activation("relu"),
                       L.Conv2D(16, 3, padding="same", weight_format=F.MXFP4(), input_format=F.MXFP4(),
                                grad_format=F.BFloat16()), L.Flatten(), L.Dense(3, weight_format=F.NVFP4())],
                      seed=0)
    x = rng.normal(size=(32, 3, 6, 6)).astype(np.float32)
    y = (x.mean((1, 2, 3)) > 0).astype(np.int64) + (x[:, 0].mean((1, 2)) > 0)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x, y, epochs=8, batch_size=8, verbose=0)
    assert np.all(np.isfinite(h.history["loss"])) and h.history["loss"][-1] < h.history["loss"][0]
