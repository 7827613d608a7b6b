"""Shared helpers: single-op models, numpy references by im2col, finite differences."""
import numpy as np
import pytest

import lowbit as lb

try:
    import torch
    torch.set_num_threads(2)
except ImportError:  # torch comparisons are skipped
    torch = None


def single(layer_or_layers, input_shape, seed=0):
    """A model made of the given layer(s) only, compiled so gradients can be taken."""
    layers = layer_or_layers if isinstance(layer_or_layers, list) else [layer_or_layers]
    m = lb.Sequential(layers, seed=seed)
    m.build(input_shape)
    return m


def fwd_bwd(model, x, dy, training=True):
    """Engine forward and backward for an arbitrary output gradient dy.
    Returns (y, dx, [parameter gradients in get_weights order])."""
    g = model._graph
    y = g.forward(np.ascontiguousarray(x, np.float32), training)
    dx = g.backward(np.ascontiguousarray(dy, np.float32), list(x.shape))
    grads = [g.get_grad(n, k) for n, k in model._param_slots()]
    return y, dx, grads


def assert_close(actual, ref, rtol=1e-4, what=""):
    """Relative to the reference's scale: |a - r| <= rtol * (|r| + max|r|)."""
    actual, ref = np.asarray(actual, np.float64), np.asarray(ref, np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    scale = max(np.abs(ref).max(), 1e-12)
    err = np.abs(actual - ref) / (np.abs(ref) + scale)
    assert err.max() <= rtol, f"{what}: max relative error {err.max():.3g} > {rtol}"


def finite_difference(model, x, r, training=True, n_checks=12, h=1e-2, rtol=2e-2, seed=0):
    """Check dL/dx and dL/dw of L = sum(f(x) * r) against central differences at
    random coordinates (float32 engine, so h and rtol are loose but meaningful)."""
    rng = np.random.default_rng(seed)
    g = model._graph
    x = np.ascontiguousarray(x, np.float32)

    def loss(xx):
        return float(np.sum(g.forward(xx, training).astype(np.float64) * r))

    _, dx, grads = fwd_bwd(model, x, r, training)
    targets = [("x", x, dx, None)]
    for (n, k), gw in zip(model._param_slots(), grads):
        if model._graph.node_params(n)[k][2]:  # trainable only
            targets.append((f"param {n}.{k}", g.get_param(n, k), gw, (n, k)))
    for name, arr, grad, slot in targets:
        flat = arr.reshape(-1)
        for i in rng.choice(flat.size, size=min(n_checks, flat.size), replace=False):
            def at(v):
                a = flat.copy()
                a[i] = v
                a = a.reshape(arr.shape)
                if slot is None:
                    return loss(a)
                g.set_param(slot[0], slot[1], a)
                out = loss(x)
                g.set_param(slot[0], slot[1], arr)
                return out
            num = (at(flat[i] + h) - at(flat[i] - h)) / (2 * h)
            ana = float(grad.reshape(-1)[i])
            tol = rtol * (abs(num) + np.abs(grad).max() + 1e-6)
            assert abs(num - ana) <= tol, f"{name}[{i}]: numeric {num:.6g} vs analytic {ana:.6g}"


# ---------------------------------------------------------------- numpy references
def same_pad(n, k, s, d=1):
    ke = (k - 1) * d + 1
    out = -(-n // s)
    total = max((out - 1) * s + ke - n, 0)
    return total // 2, total - total // 2


def patches(xp, kh, kw, sh, sw, dh=1, dw=1):
    """im2col index: xp (N,C,Hp,Wp) -> (N, C, OH, OW, kh, kw) view by fancy indexing."""
    N, C, Hp, Wp = xp.shape
    OH = (Hp - ((kh - 1) * dh + 1)) // sh + 1
    OW = (Wp - ((kw - 1) * dw + 1)) // sw + 1
    ih = (np.arange(OH) * sh)[:, None] + np.arange(kh) * dh  # (OH, kh)
    iw = (np.arange(OW) * sw)[:, None] + np.arange(kw) * dw  # (OW, kw)
    return ih, iw, xp[:, :, ih[:, None, :, None], iw[None, :, None, :]]  # (N,C,OH,OW,kh,kw)


def np_conv2d(x, w, b, stride, pads, dil=(1, 1), groups=1, dy=None):
    """Reference conv (cross-correlation) by im2col in float64; with dy also the
    gradients (dx, dw, db) by the adjoint of the same linear map."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    O, Cg, kh, kw = w.shape
    ih, iw, P = patches(xp, kh, kw, stride[0], stride[1], dil[0], dil[1])
    N, C, OH, OW = P.shape[:4]
    Og = O // groups
    y = np.zeros((N, O, OH, OW))
    for gi in range(groups):
        Pg = P[:, gi * Cg:(gi + 1) * Cg]
        y[:, gi * Og:(gi + 1) * Og] = np.einsum("ncHWij,ocij->noHW", Pg, w[gi * Og:(gi + 1) * Og])
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    if dy is None:
        return y
    dy = dy.astype(np.float64)
    dw = np.zeros_like(w)
    dP = np.zeros_like(P)
    for gi in range(groups):
        sl, so = slice(gi * Cg, (gi + 1) * Cg), slice(gi * Og, (gi + 1) * Og)
        dw[so] = np.einsum("ncHWij,noHW->ocij", P[:, sl], dy[:, so])
        dP[:, sl] = np.einsum("noHW,ocij->ncHWij", dy[:, so], w[so])
    dxp = np.zeros_like(xp)
    np.add.at(dxp, (slice(None), slice(None), ih[:, None, :, None], iw[None, :, None, :]), dP)
    dx = dxp[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]]
    return y, dx, dw, dy.sum(axis=(0, 2, 3))


def np_pool(x, k, s, pads, mode, dy=None):
    """Max (padding ignored) or average (padding excluded) pooling, and its gradient."""
    x = x.astype(np.float64)
    (pt, pb), (pl, pr) = pads
    fill = -np.inf if mode == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    ones = np.pad(np.ones(x.shape[2:]), ((pt, pb), (pl, pr)))
    ih, iw, P = patches(xp, k[0], k[1], s[0], s[1])
    N, C, OH, OW = P.shape[:4]
    flatP = P.reshape(N, C, OH, OW, -1)
    if mode == "max":
        y = flatP.max(-1)
        arg = flatP.argmax(-1)  # first maximum, as oneDNN
        if dy is None:
            return y
        dP = np.zeros_like(flatP)
        np.put_along_axis(dP, arg[..., None], dy.astype(np.float64)[..., None], axis=-1)
    else:
        cnt = ones[ih[:, None, :, None], iw[None, :, None, :]].reshape(OH, OW, -1).sum(-1)
        y = flatP.sum(-1) / cnt
        if dy is None:
            return y
        dP = np.broadcast_to((dy.astype(np.float64) / cnt)[..., None], flatP.shape).copy()
        dP *= ones[ih[:, None, :, None], iw[None, :, None, :]].reshape(1, 1, OH, OW, -1)
    dxp = np.zeros_like(xp)
    np.add.at(dxp, (slice(None), slice(None), ih[:, None, :, None], iw[None, :, None, :]),
              dP.reshape(P.shape))
    return y, dxp[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]]


def np_lrn(x, r, bias, alpha, beta, dy=None):
    """TensorFlow local_response_normalization and its gradient."""
    x = x.astype(np.float64)
    C = x.shape[1]
    sq = x ** 2
    s = np.stack([sq[:, max(0, c - r):c + r + 1].sum(1) for c in range(C)], 1)
    s = bias + alpha * s
    y = x * s ** -beta
    if dy is None:
        return y
    dy = dy.astype(np.float64)
    t = dy * x * s ** (-beta - 1)
    acc = np.stack([t[:, max(0, c - r):c + r + 1].sum(1) for c in range(C)], 1)
    return y, dy * s ** -beta - 2 * alpha * beta * x * acc


def np_batchnorm_train(x, gamma, beta, eps, dy):
    """Training-mode batch norm over all axes but 1, with its gradient."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    ax = (0,) + tuple(range(2, x.ndim))
    shp = [1, -1] + [1] * (x.ndim - 2)
    mu, var = x.mean(ax), x.var(ax)
    xh = (x - mu.reshape(shp)) / np.sqrt(var.reshape(shp) + eps)
    y = gamma.reshape(shp) * xh + beta.reshape(shp)
    m = x.size / x.shape[1]
    dxh = dy * gamma.reshape(shp)
    dx = (dxh - dxh.mean(ax).reshape(shp) - xh * (dxh * xh).mean(ax).reshape(shp)) / np.sqrt(var.reshape(shp) + eps)
    return y, dx, (dy * xh).sum(ax), dy.sum(ax), mu, var * m / (m - 1)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def predict_kernels_on_off(m, x, family, batch_size=7):
    """model.predict with the low-precision kernels in the engine, then simulated
    (lb.kernels.use_in_engine(False)): (kernel output, simulated output, layer calls the
    engine ran on `family`'s kernels). Asserts no kernel ran while switched off."""
    K = lb.kernels
    key = f"engine_{family}_calls"
    was = K.use_in_engine(True)
    try:
        calls = K.info()[key]
        fast = m.predict(x, batch_size=batch_size)
        used = K.info()[key] - calls
        K.use_in_engine(False)
        calls = K.info()[key]
        sim = m.predict(x, batch_size=batch_size)
        assert K.info()[key] == calls, "kernels ran with use_in_engine(False)"
    finally:
        K.use_in_engine(was)
    return fast, sim, used


def model_with_random_weights(layer, in_shape, rng):
    """A one-layer model with N(0, 1) weights (and bias): (model, kernel, bias or None)."""
    m = single(layer, in_shape)
    ws = [rng.normal(size=a.shape).astype(np.float32) for a in m.get_weights()]
    m.set_weights(ws)
    return m, ws[0], ws[1] if len(ws) > 1 else None


# Convolution shapes for the kernel tests: odd sizes, stride 2, 'same' / 'valid' /
# explicit padding, 1x1, dilation, channel counts not a multiple of 64.
CONV_CASES = [  # (N, C, H, W), filters, kernel, stride, padding, dilation
    ((2, 3, 9, 11), 5, 3, 1, "same", 1),
    ((2, 70, 9, 7), 37, 3, 2, "same", 1),
    ((1, 130, 8, 8), 33, 3, 1, "valid", 1),
    ((3, 64, 10, 10), 64, 1, 1, "valid", 1),
    ((2, 65, 7, 7), 17, 1, 2, "valid", 1),
    ((1, 9, 13, 6), 7, (5, 3), (2, 1), "same", 1),
    ((2, 20, 12, 12), 11, 3, 1, "same", 2),
    ((1, 256, 14, 14), 40, 3, 1, "same", 1),
    ((2, 5, 6, 6), 3, 3, 1, 2, 1),  # explicit padding larger than the kernel's reach
    # binary "wide" words (C <= 32: 64 / C neighbouring pixels per word): two words per
    # kernel row, the second half empty; and five taps over three words, strided
    ((2, 32, 8, 9), 16, 3, 1, "same", 1),
    ((2, 24, 7, 11), 16, (3, 5), 2, "same", 1),
]


def conv_case_id(c):
    return f"{c[0]}-{c[1]}-k{c[2]}-s{c[3]}-{c[4]}-d{c[5]}"


def conv_case_geometry(case):
    """(stride, ((top, bottom), (left, right)), dilation) of a CONV_CASES entry, as np_conv2d takes them."""
    shape, _, k, s, pad, d = case
    kk, ss, dd = (k, k) if np.isscalar(k) else k, (s, s) if np.isscalar(s) else s, (d, d)
    if pad == "same":
        pads = tuple(tuple(same_pad(shape[2 + i], kk[i], ss[i], dd[i])) for i in range(2))
    else:
        pads = ((pad, pad), (pad, pad)) if isinstance(pad, int) else ((0, 0), (0, 0))
    return ss, pads, dd
