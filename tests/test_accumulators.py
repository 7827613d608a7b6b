"""Accumulator formats (accum_format, grad_accum_format): training, exact agreement with a
numpy reference of the documented rounding order, integer registers with saturation and
wrap-around, and a smoke matrix of every format family in every tensor role."""
import numpy as np
import pytest

import lowbit as lb
from conftest import assert_close, fwd_bwd, single

L, F = lb.layers, lb.formats


# ----- independent numpy definitions of one accumulator step -----------------------
def np_minifloat(v, e, m, saturate):
    """v (float64, exact) rounded once to the (e, m) grid, half to even."""
    bias = 2 ** (e - 1) - 1
    emin, maxv = 1 - bias, (2 - 2.0 ** -m) * 2.0 ** (2 ** e - 2 - bias)
    if v == 0 or np.isnan(v):
        return v
    if np.isinf(v):
        return float(np.copysign(maxv if saturate else np.inf, v))
    a = abs(v)
    ex = max(int(np.floor(np.log2(a))), emin)
    if 2.0 ** (ex + 1) <= a:  # guard log2 rounding
        ex += 1
    step = 2.0 ** (ex - m)
    q = np.rint(a / step) * step
    if q > maxv:
        q = maxv if saturate else np.inf
    return float(np.copysign(q, v))


def np_fixed_one(v, bits, msb, overflow="saturate", rounding="nearest"):
    q = 2.0 ** (msb + 1 - bits)
    k = int(np.floor(v / q) if rounding == "floor" else np.rint(v / q))
    lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    if overflow == "wrap":
        k = ((k - lo) % 2 ** bits) + lo
    else:
        k = min(max(k, lo), hi)
    return k * q


def rounder(fmt):
    if isinstance(fmt, F.Fixed):
        return lambda v: np_fixed_one(v, fmt.bits, fmt.msb, fmt.overflow, fmt.rounding)
    return lambda v: np_minifloat(v, fmt.exp_bits, fmt.man_bits, fmt.saturate)


def accumulate(pairs, q):
    acc = 0.0
    for a, b in pairs:
        acc = q(acc + float(a) * float(b))  # float64 product of two float32: exact
    return np.float32(acc)


def np_conv_accum(x, w, dy, stride, pad, q, dilation=1, groups=1):
    """Forward z, and dx, dw, db of sum(z * dy), each dot product accumulated through q in
    the order of accumulate.hpp: forward (c, i, j), input grad (o, i, j), weight grad
    (n, y, x), bias (n, y, x); out-of-image taps skipped."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    Og = O // groups
    OH, OW = dy.shape[2:]
    d = dilation
    z = np.zeros((N, O, OH, OW), np.float32)
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)

    def inside(h, w_):
        return 0 <= h < H and 0 <= w_ < W

    for n in range(N):
        for o in range(O):
            c0 = (o // Og) * Cg
            for oh in range(OH):
                for ow in range(OW):
                    z[n, o, oh, ow] = accumulate(
                        [(x[n, c0 + c, oh * stride - pad + i * d, ow * stride - pad + j * d], w[o, c, i, j])
                         for c in range(Cg) for i in range(kh) for j in range(kw)
                         if inside(oh * stride - pad + i * d, ow * stride - pad + j * d)], q)
    for n in range(N):
        for cc in range(C):
            grp, c = divmod(cc, Cg)
            for ih in range(H):
                for iw in range(W):
                    pairs = []
                    for o in range(grp * Og, (grp + 1) * Og):
                        for i in range(kh):
                            th = ih + pad - i * d
                            if th < 0 or th % stride or th // stride >= OH:
                                continue
                            for j in range(kw):
                                tw = iw + pad - j * d
                                if tw < 0 or tw % stride or tw // stride >= OW:
                                    continue
                                pairs.append((dy[n, o, th // stride, tw // stride], w[o, c, i, j]))
                    dx[n, cc, ih, iw] = accumulate(pairs, q)
    for o in range(O):
        c0 = (o // Og) * Cg
        for c in range(Cg):
            for i in range(kh):
                for j in range(kw):
                    dw[o, c, i, j] = accumulate(
                        [(dy[n, o, oh, ow], x[n, c0 + c, oh * stride - pad + i * d, ow * stride - pad + j * d])
                         for n in range(N) for oh in range(OH) for ow in range(OW)
                         if inside(oh * stride - pad + i * d, ow * stride - pad + j * d)], q)
    db = np.array([accumulate([(v, 1.0) for v in dy[:, o].reshape(N, -1).ravel()], q) for o in range(O)])
    return z, dx, dw, db


# ----- the crash of the issue, and training with accumulators -----------------------
def _data(rng, shape=(1, 8, 8), n=16, classes=3):
    return rng.random((n,) + shape, dtype=np.float32), rng.integers(0, classes, n)


def _fit_twice(model, x, y):
    model.compile(lb.optimizers.SGD(0.05), "categorical_crossentropy", metrics=["accuracy"])
    h = model.fit(x, y, batch_size=8, epochs=1, verbose=0, seed=1)
    return h.history["loss"][0], model.evaluate(x, y)["loss"]


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("extra", [{}, {"weight_format": F.Fixed(8, msb=0), "input_format": F.Fixed(8, msb=1)}])
def test_conv_with_accum_format_trains(padding, activation, extra, rng):
    """The issue's crash: Conv2D(accum_format=Float16()) failed in fit with
    'object is not initialized' (the conv backward reused forward memories that the
    accumulator simulation never created)."""
    x, y = _data(rng)
    m = lb.Sequential([L.Conv2D(4, 3, padding=padding, activation=activation, accum_format=F.Float16(), **extra,
                                input_shape=(1, 8, 8)),
                       L.Flatten(), L.Dense(3, accum_format=F.BFloat16())], seed=0)
    train_loss, loss = _fit_twice(m, x, y)
    assert np.isfinite(train_loss) and np.isfinite(loss)


def test_accum_in_functional_api_and_quantized_layers(rng):
    x, y = _data(rng, (2, 8, 8))
    inp = lb.Input((2, 8, 8))
    h = L.QuantizedConv2D(4, 3, quantization_resolutions=[8, 8, 8], quantization_msb=[0, 2, 3], padding="same",
                          accum_format=F.Fixed(16, msb=4), grad_accum_format=F.Float16())(inp)
    h2 = L.Conv2D(4, 3, padding="same", accum_format=F.Float16())(inp)
    h = L.Flatten()(L.ReLU()(L.Add()([h, h2])))
    out = L.QuantizedDense(3, quantization_resolutions=[8, 8, 8], quantization_msb=[0, 3, 4],
                           accum_format=F.Fixed(16, msb=5), grad_accum_format=F.BFloat16())(h)
    m = lb.Model(inp, out, seed=0)
    w0 = [a.copy() for a in m.get_weights()]
    train_loss, loss = _fit_twice(m, x, y)
    assert np.isfinite(train_loss) and np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(w0, m.get_weights())), "training changed no weight"


def test_forward_accum_leaves_fp32_backward_exact(rng):
    """accum_format alone: the backward is the fp32 conv backward at the same weights, the
    same numbers as a plain Conv2D's (what the crashing path had to compute)."""
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    dy = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    acc = single(L.Conv2D(4, 3, strides=2, padding="same", accum_format=F.Float16()), (3, 6, 6), seed=2)
    plain = single(L.Conv2D(4, 3, strides=2, padding="same"), (3, 6, 6), seed=2)
    _, dx_a, g_a = fwd_bwd(acc, x, dy)
    _, dx_p, g_p = fwd_bwd(plain, x, dy)
    assert_close(dx_a, dx_p, 1e-6, "dx")
    for a, p in zip(g_a, g_p):
        assert_close(a, p, 1e-6, "dw")


# ----- exact agreement with the numpy reference ---------------------------------------
@pytest.mark.parametrize("fmt", [F.Float16(), F.MiniFloat(4, 3), F.Fixed(12, msb=4), F.Fixed(8, msb=1, overflow="wrap")],
                         ids=["fp16", "e4m3", "fixed12", "fixed8wrap"])
@pytest.mark.parametrize("stride,padding,pad", [(1, "same", 1), (2, "valid", 0)])
def test_conv_accum_forward_backward_equal_reference(fmt, stride, padding, pad, rng):
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    layer = L.Conv2D(3, 3, strides=stride, padding=padding, accum_format=fmt, grad_accum_format=fmt,
                     bias_initializer="torch")
    m = single(layer, (2, 5, 5), seed=3)
    w, b = m.get_weights()
    OH = (5 + 2 * pad - 3) // stride + 1
    dy = rng.normal(size=(2, 3, OH, OH)).astype(np.float32)
    y, dx, (dw, db) = fwd_bwd(m, x, dy)
    z, rdx, rdw, rdb = np_conv_accum(x, w, dy, stride, pad, rounder(fmt))
    np.testing.assert_array_equal(y, z + b[None, :, None, None])
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_array_equal(dw, rdw)
    np.testing.assert_array_equal(db, rdb)


@pytest.mark.parametrize("fmt,scale,kw", [
    (F.Float16(), 1.0, dict(groups=2)),
    (F.BFloat16(), 1.0, dict(dilation_rate=2, padding="same")),
    (F.Float16(), 3e-4, dict(padding="same")),                            # sums in fp16's subnormal range
    (F.MiniFloat(3, 2, saturate=True), 40.0, dict(padding="same")),        # sums beyond its largest value, 14
    (F.MiniFloat(3, 2, saturate=False), 40.0, dict(strides=2, padding="same")),  # ... overflowing to inf
    (F.Fixed(10, msb=3, rounding="floor"), 1.0, dict(strides=2)),
], ids=["fp16-groups", "bf16-dilated", "fp16-subnormal", "e3m2-saturate", "e3m2-inf", "fixed-floor-stride2"])
def test_conv_accum_more_geometries_equal_reference(fmt, scale, kw, rng):
    """Groups, dilation, stride 2 with padding, subnormal and overflowing sums: the
    vectorised chains equal the one-at-a-time reference."""
    groups, d, stride = kw.get("groups", 1), kw.get("dilation_rate", 1), kw.get("strides", 1)
    pad = d if kw.get("padding") == "same" else 0
    x = (scale * rng.normal(size=(2, 4, 7, 7))).astype(np.float32)
    m = single(L.Conv2D(4, 3, accum_format=fmt, grad_accum_format=fmt, bias_initializer="torch", **kw), (4, 7, 7),
               seed=4)
    w, b = m.get_weights()
    OH = (7 + 2 * pad - d * 2 - 1) // stride + 1
    dy = (scale * rng.normal(size=(2, 4, OH, OH))).astype(np.float32)
    y, dx, (dw, db) = fwd_bwd(m, x, dy)
    z, rdx, rdw, rdb = np_conv_accum(x, w, dy, stride, pad, rounder(fmt), dilation=d, groups=groups)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(y, z + b[None, :, None, None])
    np.testing.assert_array_equal(dx, rdx)
    np.testing.assert_array_equal(dw, rdw)
    np.testing.assert_array_equal(db, rdb)
    if scale == 3e-4:
        assert np.any((np.abs(z) > 0) & (np.abs(z) < 2.0 ** -14)), "no subnormal results: the case tests nothing"
    if scale == 40.0:
        assert np.any(np.abs(z) >= 14), "no overflow: the case tests nothing"


def test_dense_accum_backward_equal_reference(rng):
    fmt = F.BFloat16()
    q = rounder(fmt)
    m = single(L.Dense(4, accum_format=fmt, grad_accum_format=fmt, bias_initializer="torch"), (7,), seed=5)
    x = rng.normal(size=(3, 7)).astype(np.float32)
    dy = rng.normal(size=(3, 4)).astype(np.float32)
    y, dx, (dw, db) = fwd_bwd(m, x, dy)
    k, b = m.get_weights()
    np.testing.assert_array_equal(y, np.array([[accumulate(zip(x[n], k[:, j]), q) for j in range(4)]
                                               for n in range(3)]) + b)
    np.testing.assert_array_equal(dx, [[accumulate(zip(dy[n], k[i]), q) for i in range(7)] for n in range(3)])
    np.testing.assert_array_equal(dw, [[accumulate(zip(x[:, i], dy[:, j]), q) for j in range(4)] for i in range(7)])
    np.testing.assert_array_equal(db, [accumulate([(v, 1.0) for v in dy[:, j]], q) for j in range(4)])


def test_narrow_grad_accum_changes_gradients(rng):
    """The backward really runs on the narrow accumulator: an e3m2 weight gradient differs
    from the fp32 one, an fp32-wide one (MiniFloat(8, 23)) does not."""
    x = rng.normal(size=(4, 2, 6, 6)).astype(np.float32)
    dy = rng.normal(size=(4, 3, 6, 6)).astype(np.float32)
    grads = {}
    for name, f in [("fp32", None), ("wide", F.MiniFloat(8, 23, saturate=False)), ("e3m2", F.MiniFloat(3, 2))]:
        m = single(L.Conv2D(3, 3, padding="same", grad_accum_format=f), (2, 6, 6), seed=1)
        grads[name] = fwd_bwd(m, x, dy)[2][0]
    assert_close(grads["wide"], grads["fp32"], 1e-5, "wide accumulator")
    assert np.abs(grads["e3m2"] - grads["fp32"]).max() > 1e-2


# ----- integer accumulators ----------------------------------------------------------
def _int_reference(x, k, bits, overflow):
    """z of an int8 x int8 Dense through a `bits`-bit register: operands from the Int(8)
    grids (s = max|v| / 127), acc += k_x k_w saturating or wrapping at every add."""
    sx = np.float32(np.float64(np.abs(x).max()) / 127)
    sw = np.float32(np.float64(np.abs(k).max()) / 127)
    kx = np.clip(np.rint(x.astype(np.float64) / np.float64(sx)), -127, 127).astype(np.int64)
    kw = np.clip(np.rint(k.astype(np.float64) / np.float64(sw)), -127, 127).astype(np.int64)
    lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    z = np.zeros((x.shape[0], k.shape[1]), np.float32)
    for n in range(x.shape[0]):
        for j in range(k.shape[1]):
            acc = 0
            for i in range(k.shape[0]):
                acc += int(kx[n, i]) * int(kw[i, j])
                acc = ((acc - lo) % 2 ** bits) + lo if overflow == "wrap" else min(max(acc, lo), hi)
            z[n, j] = np.float32(np.float64(acc) * np.float64(sx) * np.float64(sw))
    return z


@pytest.mark.parametrize("bits,overflow", [(32, "saturate"), (14, "saturate"), (14, "wrap")])
def test_int_accumulator_register(bits, overflow, rng):
    x = rng.normal(size=(3, 48)).astype(np.float32)
    m = single(L.Dense(5, weight_format=F.Int(8), input_format=F.Int(8), accum_format=F.Int(bits, overflow=overflow),
                       use_bias=False), (48,), seed=7)
    (k,) = m.get_weights()
    z = m.predict(x)
    ref = _int_reference(x, k, bits, overflow)
    np.testing.assert_array_equal(z, ref)
    if bits == 32:  # a wide register equals the fp32 simulation of the int8 layer
        plain = single(L.Dense(5, weight_format=F.Int(8), input_format=F.Int(8), use_bias=False), (48,), seed=7)
        assert_close(z, plain.predict(x), 1e-5, "int32 accumulator")
    else:  # 14 bits overflow on these sums: the rule matters
        assert not np.allclose(ref, _int_reference(x, k, 32, "saturate"))


def test_int_accumulator_conv_per_channel_trains(rng):
    x, y = _data(rng, (2, 8, 8))
    m = lb.Sequential([L.Conv2D(4, 3, weight_format=F.Int(8, per_channel=True), input_format=F.Int(8),
                                accum_format=F.Int(16), input_shape=(2, 8, 8)),
                       L.Flatten(), L.Dense(3)], seed=0)
    train_loss, loss = _fit_twice(m, x, y)
    assert np.isfinite(train_loss) and np.isfinite(loss)
    wide = lb.Sequential([L.Conv2D(4, 3, weight_format=F.Int(8, per_channel=True), input_format=F.Int(8),
                                   accum_format=F.Int(32), input_shape=(2, 8, 8))], seed=0)
    ref = lb.Sequential([L.Conv2D(4, 3, weight_format=F.Int(8, per_channel=True), input_format=F.Int(8),
                                  input_shape=(2, 8, 8))], seed=0)
    assert_close(wide.predict(x), ref.predict(x), 1e-5, "int32 accumulator, per-channel scales")


def test_precision_with_accumulators(rng):
    x, y = _data(rng, (1, 12, 12))
    m = lb.models.lenet(input_shape=(1, 12, 12), num_classes=3, seed=0)
    p = lb.Precision(weight=F.Int(8, per_channel=True), input=F.Int(8), accum=F.Int(24), exempt_first=True,
                     grad_accum=F.BFloat16())
    m.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy", precision=p)
    h = m.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0])
    first, second = m._kernel_layers()[:2]
    assert "accum" not in first._precision_formats  # fp32 input: no integer register
    assert isinstance(second._precision_formats["accum"], F.Int)


# ----- format rules ------------------------------------------------------------------
def test_fixed_overflow_wrap_and_saturate():
    x = np.array([0.5, 0.875, 1.0, 1.125, -1.0, -1.125, -2.0], np.float32)
    sat = F.Fixed(4, msb=0).quantize(x)
    wrap = F.Fixed(4, msb=0, overflow="wrap").quantize(x)
    np.testing.assert_array_equal(sat, [0.5, 0.875, 0.875, 0.875, -1.0, -1.0, -1.0])
    np.testing.assert_array_equal(wrap, [0.5, 0.875, -1.0, -0.875, -1.0, 0.875, 0.0])
    assert "overflow='wrap'" in repr(F.Fixed(4, msb=0, overflow="wrap"))


def test_last_step_reports_grid_steps(rng):
    x = rng.normal(size=(4, 10)).astype(np.float32)
    f = F.Int(8, per_channel=True)
    f.quantize(x, channels=4)
    np.testing.assert_allclose(f.last_step, np.abs(x).max(1) / 127, rtol=1e-6)
    g = F.Fixed(8, msb=2)
    g.quantize(x)
    assert g.last_step == [2.0 ** (2 + 1 - 8)]


@pytest.mark.parametrize("kwargs,match", [
    (dict(accum_format=F.Binary()), "accum_format must be"),
    (dict(accum_format=F.Ternary()), "accum_format must be"),
    (dict(grad_accum_format=F.Int(16)), "grad_accum_format must be"),
    (dict(accum_format=F.Int(16)), "integer grid"),
    (dict(accum_format=F.Int(16), weight_format=F.Int(8), input_format=F.Float16()), "integer grid"),
    (dict(accum_format=F.Fixed(16, msb="auto")), "given msb"),
    (dict(accum_format=F.Fixed(16, msb=3, rounding="stochastic")), "stochastic"),
    (dict(accum_format=F.Fixed(16, msb=3, signed=False)), "signed Fixed"),
])
def test_accumulator_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        single(L.Conv2D(2, 3, **kwargs), (1, 6, 6))


def test_bad_overflow_names():
    with pytest.raises(ValueError, match="overflow"):
        F.Fixed(8, msb=0, overflow="clip")
    with pytest.raises(ValueError, match="overflow"):
        F.Int(8, overflow=1)


# ----- smoke matrix: every family in every role ----------------------------------------
FAMILIES = {
    "float32": lambda: F.Float32(),
    "fp16": lambda: F.Float16(),
    "bf16": lambda: F.BFloat16(),
    "minifloat": lambda: F.MiniFloat(4, 3),
    "fixed": lambda: F.Fixed(12, msb=3),
    "int": lambda: F.Int(8),
    "binary": lambda: F.Binary(scale="mean_abs"),
    "ternary": lambda: F.Ternary(),
    "fp8": lambda: F.FP8E4M3FN(),
    "fp4": lambda: F.FP4E2M1(),
    "bf16_stochastic": lambda: F.BFloat16(rounding="stochastic", seed=1),
    "mxfp4": lambda: F.MXFP4(),
    "mxint8": lambda: F.MXINT8(),
    "nvfp4": lambda: F.NVFP4(),
}
# the rest: ValueError (stochastic rounding is no accumulator mode, block formats no register)
ACCUMULATORS = {"float32", "fp16", "bf16", "minifloat", "fixed", "int", "fp8", "fp4"}
GRAD_ACCUMULATORS = ACCUMULATORS - {"int"}


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_every_format_in_every_role_trains(kind, rng):
    x, y = _data(rng, (2, 6, 6), n=16)
    failures = []
    for role in L.ROLES:
        for fam, make in FAMILIES.items():
            kw = {f"{role}_format": make()}
            if role == "accum" and fam == "int":  # an integer register over integer operands
                kw.update(weight_format=F.Int(8), input_format=F.Int(8))
            allowed = {"accum": ACCUMULATORS, "grad_accum": GRAD_ACCUMULATORS}.get(role, FAMILIES)
            try:
                layer = (L.Conv2D(3, 3, padding="same", **kw, input_shape=(2, 6, 6)) if kind == "conv" else
                         L.Dense(8, **kw, input_shape=(72,)))
                head = [L.Flatten(), L.Dense(3)] if kind == "conv" else [L.Dense(3)]
                m = lb.Sequential([layer] + head, seed=0)
                data = x if kind == "conv" else x.reshape(16, -1)
                train_loss, loss = _fit_twice(m, data, y)
            except ValueError as e:
                if fam in allowed:
                    failures.append(f"{role}={fam}: {e}")
                continue
            if fam not in allowed:
                failures.append(f"{role}={fam}: accepted, expected ValueError")
            elif not (np.isfinite(train_loss) and np.isfinite(loss)):
                failures.append(f"{role}={fam}: loss {train_loss}, {loss}")
    assert not failures, "\n".join(failures)
