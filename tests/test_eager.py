"""Layers called on arrays: the forward equals the same layer inside a Model (bit for
bit: the same engine ops), conv and dense against numpy and torch, backward against
finite differences and the straight-through rules, weights, training mode, seeds, errors."""
import numpy as np
import pytest

import lowbit as lb
from conftest import assert_close, np_conv2d, same_pad, single, torch
from test_formats import np_fixed

L, F = lb.layers, lb.formats

# (layer factory, per-sample input shape)
LAYERS = [
    (lambda: L.Conv2D(4, 3, padding="same", activation="relu"), (3, 8, 8)),
    (lambda: L.Conv2D(16, 3, strides=2, use_bias=False), (2, 9, 9)),  # channel-blocked output
    (lambda: L.Dense(5, activation="tanh", bias_initializer="torch"), (7,)),
    (lambda: L.MaxPooling2D(2), (3, 8, 8)),
    (lambda: L.AveragePooling2D(3, strides=2, padding="same"), (2, 7, 7)),
    (lambda: L.GlobalAveragePooling2D(), (3, 5, 5)),
    (lambda: L.BatchNormalization(), (3, 6, 6)),
    (lambda: L.LRN(depth_radius=2, alpha=1e-2, beta=0.75), (5, 4, 4)),
    (lambda: L.Dropout(0.5), (3, 4, 4)),
    (lambda: L.ReLU(), (6,)),
    (lambda: L.Activation("sigmoid"), (3, 2, 2)),
    (lambda: L.Softmax(), (6,)),
    (lambda: L.HardTanh(-0.5, 0.5), (6,)),
    (lambda: L.Flatten(), (2, 3, 3)),
    (lambda: L.ZeroPadding2D(((1, 0), (2, 1))), (2, 3, 3)),
    (lambda: L.QuantizedConv2D(8, 3, quantization_resolutions=[8, 6, 6], quantization_msb=[0, 2, 3]), (3, 8, 8)),
    (lambda: L.QuantizedDense(4, quantization_resolutions=[6, 8, 8], quantization_msb=[0, 1, 2]), (9,)),
    (lambda: L.BinAct(), (3, 4, 4)),
    (lambda: L.QuantizedReLU(3), (8,)),
    (lambda: L.QuantAct(F.Int(8)), (8,)),
]


def _x(shape, rng, n=4):
    return rng.normal(size=(n,) + shape).astype(np.float32)


@pytest.mark.parametrize("make,shape", LAYERS)
def test_forward_equals_the_layer_inside_a_model(make, shape, rng):
    x = _x(shape, rng)
    layer = make()
    if isinstance(layer, L.BatchNormalization):  # non-trivial statistics for the inference path
        layer.build(shape)
        layer.set_weights([rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)])
    y = layer(x)
    assert y.dtype == np.float32 and y.shape[0] == 4
    weights = layer.get_weights()
    # a model of the same layer object: it takes over the weights the layer built
    m = single(layer, shape, seed=lb.eager.default_seed(layer))
    for a, b in zip(m.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict(x), y)
    np.testing.assert_array_equal(layer(x), y)  # the layer now lives in the model: same output
    # training mode: the model's graph at step 0 with the layer's seed (same dropout mask)
    fresh = single(make(), shape, seed=lb.eager.default_seed(layer))
    fresh.set_weights(weights)
    np.testing.assert_array_equal(layer(x, training=True), fresh._graph.forward(x, True))


def test_multi_input_layers_equal_the_model_dag(rng):
    inp = lb.Input((3, 6, 6))
    ca, cb = L.Conv2D(4, 1), L.Conv2D(4, 3, padding="same")
    add, cat, flat = L.Add(), L.Concatenate(), L.Flatten()
    a, b = ca(inp), cb(inp)
    out = flat(cat([add([a, b]), a]))
    m = lb.Model(inp, out, seed=3)
    x = _x((3, 6, 6), rng, 5)
    ya, yb = ca(x), cb(x)
    ys = add([ya, yb])
    np.testing.assert_array_equal(ys, ya + yb)
    yc = cat(ys, ya)  # several arrays as arguments or as one list
    np.testing.assert_array_equal(yc, np.concatenate([ys, ya], axis=1))
    np.testing.assert_array_equal(flat(yc), m.predict(x))
    dy = rng.normal(size=yc.shape).astype(np.float32)
    g = cat.backward([ys, ya], dy)
    np.testing.assert_array_equal(g.dx[0], dy[:, :4])
    np.testing.assert_array_equal(g.dx[1], dy[:, 4:])
    assert g.dweights == []
    g = add.backward((ya, yb), dy[:, :4])
    for d in g.dx:
        np.testing.assert_array_equal(d, dy[:, :4])


def test_conv2d_matches_numpy_and_torch(rng):
    layer = L.Conv2D(5, (3, 2), strides=(2, 1), padding="same", dilation_rate=1, seed=4)
    x = rng.normal(size=(3, 4, 9, 8))  # float64: converted to float32
    layer.build((4, 9, 8))
    w, b = layer.get_weights()
    b = rng.normal(size=5).astype(np.float32)
    layer.set_weights([w, b])
    y = layer(x)
    pads = (same_pad(9, 3, 2), same_pad(8, 2, 1))  # TF 'same': (1, 1) and (0, 1)
    assert pads == ((1, 1), (0, 1))
    dy = rng.normal(size=y.shape).astype(np.float32)
    ry, rdx, rdw, rdb = np_conv2d(x.astype(np.float32), w, b, (2, 1), pads, dy=dy)
    g = layer.backward(x, dy)
    assert_close(y, ry, what="y")
    assert_close(g.dx, rdx, what="dx")
    assert_close(g.dweights[0], rdw, what="dkernel")
    assert_close(g.dweights[1], rdb, what="dbias")
    if torch is not None:
        xt = torch.tensor(np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1))), dtype=torch.float64, requires_grad=True)
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        yt = torch.nn.functional.conv2d(xt, wt, torch.tensor(b, dtype=torch.float64), stride=(2, 1))
        yt.backward(torch.tensor(dy, dtype=torch.float64))
        assert_close(y, yt.detach().numpy(), what="y vs torch")
        assert_close(g.dx, xt.grad.numpy()[:, :, 1:-1, :-1], what="dx vs torch")
        assert_close(g.dweights[0], wt.grad.numpy(), what="dkernel vs torch")


def test_dense_matches_numpy_and_torch(rng):
    layer = L.Dense(6, bias_initializer="torch", seed=2)
    x = rng.normal(size=(5, 11)).tolist()  # nested lists work too
    y = layer(x)
    w, b = layer.get_weights()
    x = np.asarray(x, np.float32)
    dy = rng.normal(size=y.shape).astype(np.float32)
    g = layer.backward(x, dy)
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    assert_close(y, x64 @ w64 + b, what="y")
    assert_close(g.dx, dy64 @ w64.T, what="dx")
    assert_close(g.dweights[0], x64.T @ dy64, what="dkernel")
    assert_close(g.dweights[1], dy64.sum(0), what="dbias")
    if torch is not None:
        yt = torch.nn.functional.linear(torch.tensor(x64), torch.tensor(w64.T), torch.tensor(b, dtype=torch.float64))
        assert_close(y, yt.numpy(), what="y vs torch")


def _check_finite_differences(layer, x, r, rng, n_checks=8, h=1e-2, rtol=2e-2):
    """dL/dx and dL/dw of L = sum(layer(x, training=True) * r) from backward() against
    central differences."""
    g = layer.backward(x, r)

    def loss(xx):
        return float(np.sum(layer(xx, training=True).astype(np.float64) * r))

    def perturbed(where, i, v):
        if where < 0:
            xx = x.copy()
            xx.reshape(-1)[i] = v
            return loss(xx)
        ws = layer.get_weights()
        keep = ws[where].copy()
        ws[where].reshape(-1)[i] = v
        layer.set_weights(ws)
        out = loss(x)
        ws[where] = keep
        layer.set_weights(ws)
        return out

    trainable = [k for k, w in enumerate(layer.get_weights()) if np.any(g.dweights[k])]
    for where, base, grad in [(-1, x, g.dx)] + [(k, layer.get_weights()[k], g.dweights[k]) for k in trainable]:
        for i in rng.choice(base.size, size=min(n_checks, base.size), replace=False):
            v = float(base.reshape(-1)[i])
            num = (perturbed(where, i, v + h) - perturbed(where, i, v - h)) / (2 * h)
            ana = float(grad.reshape(-1)[i])
            assert abs(num - ana) <= rtol * (abs(num) + np.abs(grad).max() + 1e-6), \
                f"{layer.name} {'x' if where < 0 else f'weight {where}'}[{i}]: numeric {num:.6g} vs {ana:.6g}"


@pytest.mark.parametrize("make,shape", [
    (lambda: L.Conv2D(3, 3, padding="same", activation="tanh", bias_initializer="torch"), (2, 5, 5)),
    (lambda: L.Dense(4, activation="sigmoid", bias_initializer="torch"), (6,)),
    (lambda: L.BatchNormalization(), (3, 4, 4)),  # batch statistics: the training-mode forward
    (lambda: L.LRN(depth_radius=1, alpha=0.1, beta=0.75), (4, 3, 3)),
    (lambda: L.MaxPooling2D(2, strides=1), (2, 4, 4)),
])
def test_backward_matches_finite_differences(make, shape, rng):
    layer = make()
    x = _x(shape, rng, 3)
    r = rng.normal(size=layer(x).shape)
    if isinstance(layer, L.BatchNormalization):
        layer.set_weights([rng.uniform(0.5, 2, 3), rng.normal(size=3)] + layer.get_weights()[2:])
    _check_finite_differences(layer, x, r, rng)


def test_binact_backward_is_the_clipped_straight_through_estimator(rng):
    layer = L.BinAct()
    x = np.concatenate([rng.uniform(-2, 2, size=(4, 30)), [[-1.0, 1.0, 0.0, -0.0, 1.0001, -1.0001] * 5]]).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y = layer(x)
    np.testing.assert_array_equal(y, np.where(x < 0, -1.0, 1.0))  # sign(0) = +1
    g = layer.backward(x, dy)
    np.testing.assert_array_equal(g.dx, np.where(np.abs(x) <= 1, dy, 0.0))  # zeroed where |x| > 1
    assert g.dweights == []
    g = L.BinAct(ste="approx_sign").backward(x, dy)  # Bi-Real's rule: max(0, 2 - 2|x|)
    np.testing.assert_allclose(g.dx, dy * np.maximum(0, 2 - 2 * np.abs(x)), rtol=1e-6, atol=1e-7)


def test_quantized_conv_backward_is_the_float_conv_at_the_quantized_operands(rng):
    """S4's QuantizedConv2D: forward Q_o(conv(Q_i(x), Q_w(W))) + b; backward the identity
    STE through every floor, i.e. the float conv's backward at (Q_i(x), Q_w(W))."""
    res, msb = [8, 6, 6], [0, 2, 3]
    q = L.QuantizedConv2D(6, 3, quantization_resolutions=res, quantization_msb=msb, padding="same", seed=1)
    x = _x((3, 7, 7), rng, 2) * 2
    q.build((3, 7, 7))
    w, _ = q.get_weights()
    b = rng.normal(size=6).astype(np.float32)
    q.set_weights([w, b])
    y = q(x)
    wq, xq = np_fixed(w, res[0], msb[0], "floor"), np_fixed(x, res[1], msb[1], "floor")
    plain = L.Conv2D(6, 3, padding="same", use_bias=False)
    plain.build((3, 7, 7))
    plain.set_weights([wq])
    np.testing.assert_allclose(y, np_fixed(plain(xq), res[2], msb[2], "floor") + b[None, :, None, None],
                               rtol=0, atol=1e-6)
    dy = rng.normal(size=y.shape).astype(np.float32)
    gq, gp = q.backward(x, dy), plain.backward(xq, dy)
    np.testing.assert_allclose(gq.dx, gp.dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gq.dweights[0], gp.dweights[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gq.dweights[1], dy.sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(q.get_weights()[0], w)  # latent weights stay fp32


def test_get_set_weights_roundtrip_and_build(rng):
    layer = L.Conv2D(3, 2, name="eager_conv")
    assert layer.get_weights() == [] and not layer.built
    with pytest.raises(ValueError, match="no weights yet"):
        layer.set_weights([np.zeros((3, 2, 2, 2))])
    layer.build((2, 5, 5))
    assert layer.built and [w.shape for w in layer.get_weights()] == [(3, 2, 2, 2), (3,)]
    new = [rng.normal(size=(3, 2, 2, 2)), rng.normal(size=3)]
    layer.set_weights(new)
    for a, b in zip(layer.get_weights(), new):
        np.testing.assert_array_equal(a, b.astype(np.float32))
    x = _x((2, 5, 5), rng, 2)
    assert_close(layer(x), np_conv2d(x, new[0], new[1], (1, 1), ((0, 0), (0, 0))), what="y after set_weights")
    # another spatial size shares the same weights
    x2 = _x((2, 4, 6), rng, 1)
    assert_close(layer(x2), np_conv2d(x2, new[0], new[1], (1, 1), ((0, 0), (0, 0))), what="other size")
    with pytest.raises(ValueError, match="expects 2 arrays"):
        layer.set_weights(new[:1])
    with pytest.raises(ValueError, match=r"array 0 has shape \(3, 2, 2\)"):
        layer.set_weights([np.zeros((3, 2, 2)), new[1]])
    with pytest.raises(TypeError, match="list of arrays"):
        layer.set_weights(np.zeros(3))


def test_layer_weights_and_the_model_stay_one(rng):
    """Built on arrays, then put in a model: the model starts from those weights, trains
    them, and the layer (read or called) sees the trained ones."""
    conv, dense = L.Conv2D(4, 3, activation="relu", seed=9), L.Dense(3, seed=9)
    x = _x((1, 6, 6), rng, 16)
    before = dense(L.Flatten()(conv(x)))
    w0 = conv.get_weights()
    m = lb.Sequential([conv, L.Flatten(), dense], seed=123)
    m.build((1, 6, 6))
    np.testing.assert_array_equal(m.get_weights()[0], w0[0])
    np.testing.assert_array_equal(m.predict(x), before)
    m.compile(lb.optimizers.SGD(0.1), "categorical_crossentropy")
    m.fit(x, rng.integers(0, 3, 16), batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(m.get_weights()[0], w0[0])
    np.testing.assert_array_equal(conv.get_weights()[0], m.get_weights()[0])
    np.testing.assert_array_equal(dense(L.Flatten()(conv(x))), m.predict(x))
    conv.set_weights(w0)  # writes into the model
    np.testing.assert_array_equal(m.get_weights()[0], w0[0])
    # a model of fresh layers is initialised from its own seed as before
    fresh = lb.Sequential([L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(3)], seed=123)
    fresh.build((1, 6, 6))
    again = lb.Sequential([L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(3)], seed=123)
    again.build((1, 6, 6))
    for a, b in zip(fresh.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_precision_of_the_model_applies_to_array_calls(rng):
    conv = L.Conv2D(4, 3)
    m = lb.Sequential([conv, L.Flatten(), L.Dense(3)], seed=0)
    m.build((2, 6, 6))
    x = _x((2, 6, 6), rng, 3)
    y32 = conv(x)
    m.compile(lb.optimizers.SGD(0.1), precision="fp16")
    y16 = conv(x)
    assert not np.array_equal(y16, y32)
    assert_close(y16, y32, rtol=2e-3, what="fp16 vs fp32")
    ref = L.Conv2D(4, 3, input_format=F.Float16(), weight_format=F.Float16(), output_format=F.Float16())
    ref.build((2, 6, 6))
    ref.set_weights(conv.get_weights())
    np.testing.assert_array_equal(ref(x), y16)


def test_training_mode_batchnorm(rng):
    bn = L.BatchNormalization(momentum=0.9)
    x = (_x((3, 4, 4), rng, 6) * 3 + 2).astype(np.float32)
    y_inf = bn(x)  # moving statistics 0 / 1
    np.testing.assert_allclose(y_inf, x / np.sqrt(1 + 1e-3), rtol=1e-5)
    np.testing.assert_array_equal(bn.get_weights()[2], 0)  # inference does not touch them
    y_tr = bn(x, training=True)  # batch statistics
    np.testing.assert_allclose(y_tr.mean((0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y_tr.var((0, 2, 3)), x.var((0, 2, 3)) / (x.var((0, 2, 3)) + 1e-3), rtol=1e-4)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), ddof=1)  # moving averages updated, unbiased var
    np.testing.assert_allclose(bn.get_weights()[2], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.get_weights()[3], 0.9 + 0.1 * var, rtol=1e-5)
    bn.backward(x, np.ones_like(x))  # a backward changes no statistics
    np.testing.assert_allclose(bn.get_weights()[2], 0.1 * mean, rtol=1e-5)
    assert not np.allclose(bn(x), y_inf)


def test_training_mode_dropout_masks(rng):
    x = np.ones((4, 200), np.float32)
    d = L.Dropout(0.25, seed=5)
    np.testing.assert_array_equal(d(x), x)  # inference: identity
    y1 = d(x, training=True)
    assert set(np.unique(y1)) == {0.0, np.float32(1 / 0.75)}
    assert 0.2 < np.mean(y1 == 0) < 0.3
    g = d.backward(x, np.full_like(x, 2.0))  # replays the last mask
    np.testing.assert_array_equal(g.dx, 2 * y1)
    y2 = d(x, training=True)  # each training call draws the next mask
    assert not np.array_equal(y1, y2)
    e = L.Dropout(0.25, seed=5)
    np.testing.assert_array_equal(e(x, training=True), y1)
    np.testing.assert_array_equal(e(x, training=True), y2)
    assert not np.array_equal(L.Dropout(0.25, seed=6)(x, training=True), y1)


def test_training_mode_tracks_quantizer_state(rng):
    """Int activations: a per-batch scale until trained, then the EMA of max|x|."""
    q = L.QuantAct(F.Int(8))
    x0, x1 = _x((6,), rng, 8), _x((6,), rng, 8) * 3
    np.testing.assert_allclose(q(x1), np.rint(x1 / (np.abs(x1).max() / 127)) * np.abs(x1).max() / 127, rtol=1e-6)
    q(x0, training=True)
    q(x1, training=True)
    s = (0.99 * np.abs(x0).max() + 0.01 * np.abs(x1).max()) / 127
    np.testing.assert_allclose(q(x1), np.clip(np.rint(x1 / s), -127, 127) * s, rtol=1e-5, atol=1e-6)


def test_seeds_make_weights_deterministic(rng):
    x = _x((2, 6, 6), rng, 2)
    a, b, c = L.Conv2D(4, 3, seed=5), L.Conv2D(4, 3, seed=5), L.Conv2D(4, 3, seed=6)
    np.testing.assert_array_equal(a(x), b(x))
    c.build((2, 6, 6))
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
    # no seed: derived from the name, so a fresh session rebuilds the same weights
    n1, n2 = L.Conv2D(4, 3, name="stem"), L.Conv2D(4, 3, name="stem")
    np.testing.assert_array_equal(n1(x), n2(x))
    # the same initialisation as a model with that seed
    m = single(L.Conv2D(4, 3), (2, 6, 6), seed=5)
    np.testing.assert_array_equal(m.get_weights()[0], a.get_weights()[0])
    with pytest.raises(ValueError, match="seed"):
        L.Dense(3, seed=-1)


def test_bad_inputs_raise_errors_naming_the_problem(rng):
    conv = L.Conv2D(2, 3, name="c1")
    with pytest.raises(ValueError, match=r"c1: Conv2D: expected input shape \(C, H, W\).*first axis .* batch"):
        conv(np.zeros((3, 8, 8)))  # one sample without the batch axis
    with pytest.raises(ValueError, match=r"c1: input: expected a batch of shape \(N, C, H, W\)"):
        conv(np.zeros((1, 1, 3, 8, 8)))
    with pytest.raises(ValueError, match="expected a batch"):
        L.ReLU()(np.zeros(5))
    with pytest.raises(TypeError, match="c1: input: expected a real numeric array"):
        conv(np.array([["a"]]))
    with pytest.raises(TypeError, match="expected a real numeric array"):
        conv(np.zeros((1, 1, 4, 4), complex))
    with pytest.raises(TypeError, match="expected a numeric array, got NoneType"):
        conv(None)
    with pytest.raises(ValueError, match="NaN"):
        conv(np.full((1, 1, 4, 4), np.nan))
    with pytest.raises(ValueError, match="not a regular array"):
        L.ReLU()([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="batch is empty"):
        conv(np.zeros((0, 1, 4, 4)))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv(np.zeros((1, 1, 2, 2)))
    conv(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"c1: the layer's weights have shapes \[\(2, 1, 3, 3\), \(2,\)\]"):
        conv(np.zeros((1, 3, 4, 4)))  # built for one input channel
    dense = L.Dense(2)
    dense(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        dense(np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"expected dy of the output's shape \(2, 2\), got \(2, 3\)"):
        dense.backward(np.zeros((2, 5)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="training=True/False"):
        dense(np.zeros((2, 5)), training="yes")
    with pytest.raises(ValueError, match="at least 2 input arrays"):
        L.Add()(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Add: expected inputs of equal shape"):
        L.Add()(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="differ in batch size"):
        L.Concatenate()(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="Concatenate: inputs must match"):
        L.Concatenate()(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 5, 4)))
    with pytest.raises(ValueError, match="expected one input array, got 2"):
        L.ReLU()(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(TypeError, match="a mix of both"):
        L.Add()([lb.Input((3,)), np.zeros((1, 3))])
    with pytest.raises(TypeError, match="training= applies to calls on arrays"):
        L.ReLU()(lb.Input((3,)), training=True)
    with pytest.raises(ValueError, match="input_shape"):
        L.Dense(2).build((0, 3))


def test_deepcopy_of_a_built_layer_is_unbuilt_with_the_same_config():
    import copy
    layer = lb.layers.Conv2D(3, 3, padding="same", seed=1)
    x = np.ones((1, 2, 5, 5), np.float32)
    layer(x)
    twin = copy.deepcopy(layer)
    assert layer.built and not twin.built
    assert twin.get_config() == layer.get_config()
    np.testing.assert_array_equal(twin(x), layer(x))  # same seed, same weights when built anew
