"""Every op: forward and backward against an independent float64 numpy reference
(im2col / closed forms, see conftest.py), against torch where installed, and a
finite-difference check of the engine's own gradients."""
import numpy as np
import pytest

import lowbit as lb
from conftest import (assert_close, finite_difference, fwd_bwd, np_batchnorm_train, np_conv2d, np_lrn, np_pool,
                      same_pad, single, torch)

L = lb.layers

CONV_CASES = [
    # (C, H, W, filters, kernel, strides, padding, dilation, groups, use_bias)
    (1, 9, 9, 4, 3, 1, "valid", 1, 1, True),
    (3, 8, 7, 5, 3, 1, "same", 1, 1, True),
    (4, 10, 10, 6, 5, 2, "same", 1, 1, False),
    (4, 9, 9, 4, (3, 2), (2, 1), "valid", 1, 2, True),
    (2, 11, 11, 3, 3, 1, 2, 2, 1, True),
    (3, 7, 8, 2, 1, 1, "valid", 1, 1, True),
    (2, 6, 6, 4, 4, 2, "same", 1, 1, True),  # even kernel: TF puts the extra pad at the end
]


def _conv_pads(H, W, k, s, padding, d):
    k = (k, k) if isinstance(k, int) else k
    s = (s, s) if isinstance(s, int) else s
    if padding == "same":
        return k, s, (same_pad(H, k[0], s[0], d), same_pad(W, k[1], s[1], d))
    p = 0 if padding == "valid" else padding
    return k, s, ((p, p), (p, p))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_numpy(case, rng):
    C, H, W, F, k, s, padding, d, g, bias = case
    m = single(L.Conv2D(F, k, strides=s, padding=padding, dilation_rate=d, groups=g, use_bias=bias), (C, H, W))
    ws = m.get_weights()
    if bias:
        ws[1] = rng.normal(size=ws[1].shape).astype(np.float32)
        m.set_weights(ws)
    x = rng.normal(size=(3, C, H, W)).astype(np.float32)
    k2, s2, pads = _conv_pads(H, W, k, s, padding, d)
    ref = np_conv2d(x, ws[0], ws[1] if bias else None, s2, pads, (d, d), g)
    dy = rng.normal(size=ref.shape).astype(np.float32)
    y, dx, grads = fwd_bwd(m, x, dy)
    ref, rdx, rdw, rdb = np_conv2d(x, ws[0], ws[1] if bias else None, s2, pads, (d, d), g, dy)
    assert_close(y, ref, what="y")
    assert_close(dx, rdx, what="dx")
    assert_close(grads[0], rdw, what="dkernel")
    if bias:
        assert_close(grads[1], rdb, what="dbias")
    finite_difference(m, x, dy)


@pytest.mark.parametrize("kind,pool,stride,padding,H", [
    ("max", 2, None, "valid", 8), ("max", 3, 2, "same", 7), ("max", 2, None, "same", 7),
    ("avg", 2, None, "valid", 6), ("avg", 3, 2, "same", 7), ("avg", 3, 1, "same", 5),
])
def test_pooling_matches_numpy(kind, pool, stride, padding, H, rng):
    layer = (L.MaxPooling2D if kind == "max" else L.AveragePooling2D)(pool, strides=stride, padding=padding)
    m = single(layer, (3, H, H))
    # distinct values: no ties, so the max-pool gradient is unambiguous and differentiable
    x = rng.permutation(2 * 3 * H * H).reshape(2, 3, H, H).astype(np.float32) / 10
    s = stride or pool
    pads = (same_pad(H, pool, s), same_pad(H, pool, s)) if padding == "same" else ((0, 0), (0, 0))
    ref = np_pool(x, (pool, pool), (s, s), pads, kind)
    dy = rng.normal(size=ref.shape).astype(np.float32)
    y, dx, _ = fwd_bwd(m, x, dy)
    ref, rdx = np_pool(x, (pool, pool), (s, s), pads, kind, dy)
    assert_close(y, ref, what="y")
    assert_close(dx, rdx, what="dx")
    finite_difference(m, x, dy, h=1e-3)


def test_global_avg_pool(rng):
    m = single(L.GlobalAveragePooling2D(), (4, 5, 3))
    x = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
    dy = rng.normal(size=(2, 4)).astype(np.float32)
    y, dx, _ = fwd_bwd(m, x, dy)
    assert_close(y, x.astype(np.float64).mean((2, 3)))
    assert_close(dx, np.broadcast_to(dy[:, :, None, None] / 15.0, x.shape))
    finite_difference(m, x, dy)


@pytest.mark.parametrize("shape", [(3, 4, 5), (6,), (32, 3, 4)])  # C = 32: channel-blocked kernels
def test_batchnorm_train_and_inference(shape, rng):
    m = single(L.BatchNormalization(momentum=0.9, epsilon=1e-3), shape)
    C = shape[0]
    w = m.get_weights()
    w[0] = rng.uniform(0.5, 1.5, C).astype(np.float32)
    w[1] = rng.normal(size=C).astype(np.float32)
    m.set_weights(w)
    x = (rng.normal(size=(8,) + shape) * 2 + 1).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y, dx, grads = fwd_bwd(m, x, dy)
    ry, rdx, rdg, rdb, mu, var_unbiased = np_batchnorm_train(x, w[0], w[1], 1e-3, dy)
    assert_close(y, ry, what="y")
    assert_close(dx, rdx, rtol=2e-4, what="dx")
    assert_close(grads[0], rdg, what="dgamma")
    assert_close(grads[1], rdb, what="dbeta")
    # fwd_bwd leaves running statistics alone; one training step moves them by momentum
    assert_close(m.get_weights()[2], np.zeros(C), what="moving_mean untouched")
    if len(shape) == 1:
        m.compile("sgd", "mse")
        m.fit(x, rng.normal(size=(8, C)).astype(np.float32), batch_size=8, epochs=1, shuffle=False, verbose=0)
        mm, mv = m.get_weights()[2:]
        assert_close(mm, 0.1 * mu, what="moving_mean")
        assert_close(mv, 0.9 + 0.1 * var_unbiased, what="moving_variance")
    # inference uses the running statistics
    w = m.get_weights()
    w[2] = rng.normal(size=C).astype(np.float32)
    w[3] = rng.uniform(0.5, 2, C).astype(np.float32)
    m.set_weights(w)
    shp = [1, -1] + [1] * (len(shape) - 1)
    ref = (x - w[2].reshape(shp)) / np.sqrt(w[3].reshape(shp) + 1e-3) * w[0].reshape(shp) + w[1].reshape(shp)
    assert_close(m.predict(x), ref, what="inference")
    finite_difference(m, x, dy, h=1e-2, rtol=3e-2)


def test_lrn_matches_tensorflow_formula(rng):
    # the S0 AlexNet setting: depth_radius 4, bias 1, alpha 0.001/9, beta 0.75 - and a strong one
    for r, bias, alpha, beta in [(4, 1.0, 0.001 / 9, 0.75), (2, 2.0, 0.5, 0.75), (1, 1.0, 1.0, 0.5)]:
        m = single(L.LRN(depth_radius=r, bias=bias, alpha=alpha, beta=beta), (7, 3, 4))
        x = rng.normal(size=(2, 7, 3, 4)).astype(np.float32)
        dy = rng.normal(size=x.shape).astype(np.float32)
        y, dx, _ = fwd_bwd(m, x, dy)
        ry, rdx = np_lrn(x, r, bias, alpha, beta, dy)
        assert_close(y, ry, what="y")
        assert_close(dx, rdx, what="dx")
        finite_difference(m, x, dy)


@pytest.mark.parametrize("name,f,df", [
    ("relu", lambda x: np.maximum(x, 0), lambda x, y: (x > 0) * 1.0),
    ("tanh", np.tanh, lambda x, y: 1 - y ** 2),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x)), lambda x, y: y * (1 - y)),
])
def test_activations(name, f, df, rng):
    m = single(L.Activation(name), (3, 4, 4))
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    x[0, 0, 0, :2] = [0.0, -0.0]  # relu'(0) = 0
    dy = rng.normal(size=x.shape).astype(np.float32)
    y, dx, _ = fwd_bwd(m, x, dy)
    ry = f(x.astype(np.float64))
    assert_close(y, ry, what="y")
    assert_close(dx, dy * df(x.astype(np.float64), ry), what="dx")
    x[np.abs(x) < 0.05] = 0.5  # away from relu's kink for finite differences
    finite_difference(m, x, dy, h=1e-3)


def test_hard_tanh(rng):
    m = single(L.HardTanh(-1.0, 0.5), (10,))
    x = np.array([[-2, -1, -0.5, 0, 0.25, 0.5, 0.7, 3, -1.2, 0.1]], np.float32)
    dy = np.arange(10, dtype=np.float32)[None] + 1
    y, dx, _ = fwd_bwd(m, x, dy)
    assert_close(y, np.clip(x, -1, 0.5))
    assert_close(dx, dy * ((x >= -1) & (x <= 0.5)))


def test_softmax(rng):
    m = single(L.Softmax(), (5,))
    x = (rng.normal(size=(4, 5)) * 30).astype(np.float32)  # large logits: must not overflow
    dy = rng.normal(size=x.shape).astype(np.float32)
    y, dx, _ = fwd_bwd(m, x, dy)
    z = x.astype(np.float64) - x.max(1, keepdims=True)
    ry = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert_close(y, ry, what="y")
    assert_close(dx, ry * (dy - (dy * ry).sum(1, keepdims=True)), what="dx")
    finite_difference(m, x / 30, dy)


def test_dropout_mask_scale_and_gradient(rng):
    m = single(L.Dropout(0.3), (1000,))
    x = rng.uniform(0.5, 1.5, size=(20, 1000)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y, dx, _ = fwd_bwd(m, x, dy, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    assert_close(y[kept], x[kept] / 0.7)
    assert_close(dx, dy * kept / 0.7)  # the same mask forward and backward
    y2, _, _ = fwd_bwd(m, x, dy, training=True)
    np.testing.assert_array_equal(y, y2)  # a function of (seed, step): reproducible
    assert_close(m.predict(x), x)  # identity at inference


def test_flatten_and_zero_padding(rng):
    m = single([L.ZeroPadding2D(((1, 2), (0, 3))), L.Flatten()], (2, 3, 4))
    x = rng.normal(size=(2, 2, 3, 4)).astype(np.float32)
    ref = np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 3))).reshape(2, -1)
    dy = rng.normal(size=ref.shape).astype(np.float32)
    y, dx, _ = fwd_bwd(m, x, dy)
    assert_close(y, ref)
    assert_close(dx, dy.reshape(2, 2, 6, 7)[:, :, 1:4, 0:4])


def test_dense_matches_numpy(rng):
    m = single(L.Dense(7, bias_initializer="torch"), (5,))
    k, b = m.get_weights()
    x = rng.normal(size=(4, 5)).astype(np.float32)
    dy = rng.normal(size=(4, 7)).astype(np.float32)
    y, dx, grads = fwd_bwd(m, x, dy)
    x64 = x.astype(np.float64)
    assert_close(y, x64 @ k + b, what="y")
    assert_close(dx, dy @ k.T.astype(np.float64), what="dx")
    assert_close(grads[0], x64.T @ dy, what="dkernel")
    assert_close(grads[1], dy.sum(0), what="dbias")
    finite_difference(m, x, dy)


def test_concatenate_and_add_dag(rng):
    """A DAG with fan-out: x feeds two convs, their outputs are concatenated and
    added back to a third branch - gradients from all paths must sum."""
    inp = lb.Input((2, 5, 5))
    a = L.Conv2D(3, 3, padding="same")(inp)
    b = L.Conv2D(2, 1)(inp)
    c = L.Concatenate()([a, b])
    d = L.Conv2D(5, 3, padding="same")(inp)
    out = L.Add()([c, d, c])
    m = lb.Model(inp, out, seed=3)
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    dy = rng.normal(size=(2, 5, 5, 5)).astype(np.float32)
    y, dx, grads = fwd_bwd(m, x, dy)
    wa, ba, wb, bb, wd, bd = m.get_weights()
    same = ((1, 1), (1, 1))
    ya, dxa, dwa, dba = np_conv2d(x, wa, ba, (1, 1), same, dy=2 * dy[:, :3])
    yb, dxb, dwb, dbb = np_conv2d(x, wb, bb, (1, 1), ((0, 0), (0, 0)), dy=2 * dy[:, 3:])
    yd, dxd, dwd, dbd = np_conv2d(x, wd, bd, (1, 1), same, dy=dy)
    assert_close(y, 2 * np.concatenate([ya, yb], 1) + yd, what="y")
    assert_close(dx, dxa + dxb + dxd, what="dx")
    for got, ref in zip(grads, [dwa, dba, dwb, dbb, dwd, dbd]):
        assert_close(got, ref, what="param grads")
    finite_difference(m, x, dy)


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mse"])
def test_losses_and_compute_gradients(loss, rng):
    m = single([L.Dense(4, activation="softmax")], (6,))
    m.compile("sgd", loss)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    y = np.array([0, 3, 1, 1, 2])
    k, b = m.get_weights()
    z = x.astype(np.float64) @ k + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = np.eye(4)[y]
    if loss == "mse":
        ref = ((p - t) ** 2).mean()
        dp = 2 * (p - t) / p.size
        dz = p * (dp - (dp * p).sum(1, keepdims=True))
    else:
        ref = -np.log(p[np.arange(5), y]).mean()
        dz = (p - t) / 5
    value, grads = m.compute_gradients(x, y)
    assert abs(value - ref) <= 1e-5 * max(1, abs(ref))
    assert_close(grads[0], x.T.astype(np.float64) @ dz, what="dkernel")
    assert_close(grads[1], dz.sum(0), what="dbias")
    # one-hot targets give the same loss and gradients
    value2, grads2 = m.compute_gradients(x, t.astype(np.float32))
    assert abs(value2 - value) < 1e-6
    np.testing.assert_allclose(grads2[0], grads[0], rtol=1e-6, atol=1e-9)
    assert m.evaluate(x, y)["loss"] == pytest.approx(ref, rel=1e-5)


def test_crossentropy_is_stable_for_huge_logits():
    m = single([L.Dense(3, activation="softmax", use_bias=False)], (1,))
    m.compile("sgd")
    m.set_weights([np.array([[1000.0, -1000.0, 0.0]], np.float32)])
    value, grads = m.compute_gradients(np.ones((1, 1), np.float32), np.array([1]))
    assert np.isfinite(value) and value == pytest.approx(2000.0, rel=1e-6)
    assert np.all(np.isfinite(grads[0]))


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_lenet_forward_and_gradients_match_torch(rng):
    """The whole S0 LeNet, weights copied into a torch twin: loss and every gradient."""
    import torch.nn.functional as F
    m = lb.models.lenet(seed=5)
    m.compile("sgd")
    x = rng.uniform(size=(6, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    loss, grads = m.compute_gradients(x, y)
    w = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in m.get_weights()]
    h = torch.tensor(x, dtype=torch.float64)
    h = F.max_pool2d(F.relu(F.conv2d(h, w[0], w[1], padding=2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w[2], w[3])), 2).flatten(1)
    h = F.relu(h @ w[4] + w[5])
    h = F.relu(h @ w[6] + w[7])
    ref = F.cross_entropy(h @ w[8] + w[9], torch.tensor(y))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    for got, t in zip(grads, w):
        assert_close(got, t.grad.numpy(), what="grad")
    np.testing.assert_allclose(m.predict(x), F.softmax(h @ w[8] + w[9], 1).detach().numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_batchnorm_lrn_avgpool_match_torch(rng):
    import torch.nn.functional as F
    inp = lb.Input((6, 7, 7))
    h = L.BatchNormalization(epsilon=1e-5)(inp)
    h = L.LRN(depth_radius=2, bias=1.0, alpha=0.1, beta=0.75)(h)
    out = L.AveragePooling2D(2, padding="valid")(h)
    m = lb.Model(inp, out)
    x = rng.normal(size=(4, 6, 7, 7)).astype(np.float32)
    dy = rng.normal(size=(4, 6, 3, 3)).astype(np.float32)
    y, dx, grads = fwd_bwd(m, x, dy)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    g = torch.ones(6, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    t = F.batch_norm(xt, None, None, g, b, training=True, eps=1e-5)
    # torch's LRN divides alpha by the window size n = 2r + 1: alpha_torch = alpha_tf * n
    t = F.local_response_norm(t, size=5, alpha=0.1 * 5, beta=0.75, k=1.0)
    t = F.avg_pool2d(t, 2)
    t.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(y, t.detach().numpy(), what="y")
    assert_close(dx, xt.grad.numpy(), rtol=3e-4, what="dx")
    assert_close(grads[0], g.grad.numpy(), what="dgamma")
    assert_close(grads[1], b.grad.numpy(), what="dbeta")


def _residual_block(seed=0):
    """16-channel residual block: activations stay channel-blocked between conv, BN, ReLU
    and Add; the input (NCHW) joins a blocked branch in the first Add (mixed layouts)."""
    inp = lb.Input((16, 6, 6))
    h = L.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    h = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(h))
    a = L.Add()([h, inp])                      # blocked + NCHW
    g = L.Conv2D(16, 3, padding="same", use_bias=False)(a)
    g = L.BatchNormalization(epsilon=1e-5)(g)
    out = L.ReLU()(L.Add()([g, h]))            # h fans out: gradients from two consumers
    pooled = L.MaxPooling2D(2)(out)            # needs NCHW
    return lb.Model(inp, pooled, seed=seed)


def test_blocked_layout_dag_matches_torch_and_finite_differences(rng):
    m = _residual_block(seed=3)
    x = rng.normal(size=(4, 16, 6, 6)).astype(np.float32)
    dy = rng.normal(size=(4, 16, 3, 3)).astype(np.float32)
    finite_difference(m, x, dy, h=1e-3, rtol=5e-2)
    if torch is None:
        pytest.skip("torch not installed")
    import torch.nn.functional as F
    y, dx, grads = fwd_bwd(m, x, dy)
    w = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in m.get_weights()]
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    h = F.relu(F.batch_norm(F.conv2d(xt, w[0], padding=1), None, None, w[1], w[2], training=True, eps=1e-5))
    a = h + xt
    g = F.batch_norm(F.conv2d(a, w[5], padding=1), None, None, w[6], w[7], training=True, eps=1e-5)
    t = F.max_pool2d(F.relu(g + h), 2)
    t.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(y, t.detach().numpy(), what="y")
    assert_close(dx, xt.grad.numpy(), rtol=3e-4, what="dx")
    for got, ref, name in [(grads[0], w[0], "conv1"), (grads[1], w[1], "gamma1"), (grads[5], w[5], "conv2"),
                           (grads[6], w[6], "gamma2"), (grads[7], w[7], "beta2")]:
        assert_close(got, ref.grad.numpy(), rtol=3e-4, what=name)


def test_pooling_on_blocked_layout(rng):
    """BN (16 channels) hands a channel-blocked tensor to the pools: same results as NCHW."""
    for pool, ref_fn in [(L.GlobalAveragePooling2D(), lambda z: z.mean((2, 3))),
                         (L.AveragePooling2D(2, padding="same"), None)]:
        m = single([L.BatchNormalization(epsilon=1e-3), pool], (16, 5, 3))
        x = rng.normal(size=(3, 16, 5, 3)).astype(np.float32)
        dy = rng.normal(size=(3,) + m.output_shape).astype(np.float32)
        y, dx, _ = fwd_bwd(m, x, dy)
        z = np_batchnorm_train(x, np.ones(16), np.zeros(16), 1e-3, np.zeros_like(x))[0]
        pads = (same_pad(5, 2, 2), same_pad(3, 2, 2))
        ref = ref_fn(z) if ref_fn else np_pool(z, (2, 2), (2, 2), pads, "avg")
        assert_close(y, ref, what=type(pool).__name__)
        finite_difference(m, x, dy, rtol=3e-2)


def test_dense_inference_packs_its_kernel_once_per_weight_version(rng):
    # predict reads the kernel in the matmul's preferred layout, packed once per weight
    # version: every write of the weights (set_weights, an optimizer step, a resume) shows
    from lowbit import layers as L
    m = lb.Sequential([L.Dense(4096, input_shape=(96,)), L.Dense(3)], seed=0)
    m.compile(lb.optimizers.SGD(0.1))
    x = rng.standard_normal((5, 96)).astype(np.float32)

    def reference():
        (w1, b1, w2, b2) = [v.astype(np.float64) for v in m.get_weights()]
        return (x @ w1 + b1) @ w2 + b2
    for batch in (1, 5):
        np.testing.assert_allclose(m.predict(x, batch_size=batch), reference(), rtol=1e-4, atol=1e-4)
    w = m.get_weights()
    m.set_weights([v * 0.5 if v.ndim == 2 else v + 0.25 for v in w])
    np.testing.assert_allclose(m.predict(x, batch_size=1), reference(), rtol=1e-4, atol=1e-4)
    m.fit(x, np.array([0, 1, 2, 0, 1]), batch_size=5, epochs=1, verbose=0)
    assert not np.array_equal(m.get_weights()[0], w[0] * 0.5)
    np.testing.assert_allclose(m.predict(x, batch_size=1), reference(), rtol=1e-4, atol=1e-4)
    # the training-mode forward (plain kernel) and predict agree to rounding
    np.testing.assert_allclose(m._graph.forward(x, True), m.predict(x), rtol=1e-5, atol=1e-6)
