"""fp16 accumulation kernels (issue 11): Float16 accumulators over binary16 operands run
on a kernel (native AVX512-FP16, AVX-512F or AVX2 round-to-odd, or portable C++), and every path
equals the float64 simulation bit for bit - forward, input and weight gradients, bias."""
import os
from fractions import Fraction

import numpy as np
import pytest

import lowbit as lb
from conftest import fwd_bwd, single

L, F = lb.layers, lb.formats
K = lb.kernels


def available_paths():
    info = K.info()
    paths = ["portable"]
    if info["fp16_accum_avx2_supported"]:
        paths.append("avx2")
    if info["fp16_accum_avx512f_supported"]:
        paths.append("avx512f")
    if info["fp16_accum_native_supported"]:
        paths.append("avx512_fp16")
    return paths


@pytest.fixture
def restore_path():
    was = K.fp16_accum_path()
    yield
    K.fp16_accum_path(was)


def half(a):
    """float32 array of binary16 values (overflow to inf, subnormals kept)."""
    with np.errstate(over="ignore"):
        return np.asarray(a, np.float64).astype(np.float16).astype(np.float32)


def run_paths(model, x, dy):
    """{path: (y, dx, grads)} for the simulation and every kernel path of this CPU,
    checking that the kernel paths really ran on kernels."""
    out = {}
    for p in ["simulate"] + available_paths():
        K.fp16_accum_path(p)
        before = K.info()["fp16_accum_kernel_calls"]
        out[p] = fwd_bwd(model, x, dy)
        ran = K.info()["fp16_accum_kernel_calls"] - before
        assert (ran == 0) if p == "simulate" else (ran >= 4), f"{p}: {ran} dot products on a kernel"
    return out


def assert_bits(a, r, what):
    """Equal values, NaN where NaN, and the same sign of every zero."""
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(a, r, err_msg=what)
    num = ~np.isnan(r)
    np.testing.assert_array_equal(np.signbit(a[num]), np.signbit(r[num]), err_msg=f"{what}: signs")


def assert_same(results):
    ref = results.pop("simulate")
    for p, (y, dx, grads) in results.items():
        assert_bits(y, ref[0], f"{p}: forward")
        assert_bits(dx, ref[1], f"{p}: input gradient")
        for g, r, what in zip(grads, ref[2], ("kernel", "bias")):
            assert_bits(g, r, f"{p}: {what} gradient")


# (C, H, W), filters, kernel, conv keyword arguments, value scale
CONV_CASES = {
    "3x3-same": ((3, 9, 7), 5, 3, dict(padding="same"), 1.0),
    "5x5-stride2-same": ((4, 11, 10), 6, 5, dict(strides=2, padding="same"), 1.0),
    "groups2-valid": ((6, 8, 8), 4, 3, dict(groups=2), 1.0),
    "1x1-stride2": ((5, 7, 9), 70, 1, dict(strides=2), 1.0),
    "dilated": ((3, 10, 10), 4, 3, dict(dilation_rate=2, padding="same"), 1.0),
    "wide-lanes": ((2, 13, 13), 3, 3, dict(padding="same"), 4.0),   # 169 lanes: full tiles and a tail
    "subnormal": ((3, 8, 8), 4, 3, dict(padding="same"), 2.0 ** -7),  # products 2^-14 .. 2^-30
    "overflow": ((3, 8, 8), 4, 3, dict(padding="same"), 300.0),       # sums beyond 65504: inf, inf - inf
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_paths_equal_simulation(case, rng, restore_path):
    shape, filters, k, kw, scale = CONV_CASES[case]
    m = single(L.Conv2D(filters, k, accum_format=F.Float16(), grad_accum_format=F.Float16(),
                        bias_initializer="torch", **kw), shape, seed=3)
    w, b = m.get_weights()
    m.set_weights([half(w * scale * 3), half(b)])
    x = half(rng.normal(size=(3,) + shape) * scale)
    OH, OW = m.output_shape[1:]
    dy = half(rng.normal(size=(3, filters, OH, OW)) * scale)
    res = run_paths(m, x, dy)
    y = res["simulate"][0]
    if case == "subnormal":
        assert np.any((y != 0) & (np.abs(y - half(b)[None, :, None, None]) < 2.0 ** -14)), "no subnormal sums"
    if case == "overflow":
        assert np.isinf(y).any() and np.isfinite(y).any(), "no overflow to inf"
    assert_same(res)


@pytest.mark.parametrize("n,fan_in,units,scale", [(4, 37, 70, 1.0), (3, 130, 17, 0.5), (5, 8, 200, 2.0 ** -6)])
def test_dense_paths_equal_simulation(n, fan_in, units, scale, rng, restore_path):
    m = single(L.Dense(units, accum_format=F.Float16(), grad_accum_format=F.Float16(), bias_initializer="torch"),
               (fan_in,), seed=5)
    w, b = m.get_weights()
    m.set_weights([half(w * 4), half(b)])
    x = half(rng.normal(size=(n, fan_in)) * scale)
    dy = half(rng.normal(size=(n, units)) * scale)
    assert_same(run_paths(m, x, dy))


def rn16_exact(v):
    """Round a Fraction to binary16, nearest even (|v| well inside the normal range)."""
    e = int(np.floor(np.log2(abs(float(v)))))
    step = Fraction(2) ** (e - 10)
    q = v / step
    k = int(q)
    frac = q - k
    k += 1 if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and k % 2) else 0
    return float(k * step)


def test_double_rounding_is_avoided(restore_path):
    """acc + a*b whose float32 sum lands exactly on a binary16 midpoint: rounding the fp32
    sum again would go to even, the exact sum is above the midpoint. Every path gives the
    correctly rounded value (round-to-odd), as the simulation does."""
    acc, a, b = np.float32(1.0), np.float32(1 + 2.0 ** -5), np.float32(0.0004734992980957031)
    assert half(b) == b
    exact = Fraction(float(acc)) + Fraction(float(a)) * Fraction(float(b))
    naive = np.float16(np.float32(float(acc) + float(a) * float(b)))  # fp32 sum, then fp16
    want = rn16_exact(exact)
    assert float(naive) != want, "the values do not show double rounding"
    m = single(L.Dense(1, use_bias=False, accum_format=F.Float16()), (2,))
    m.set_weights([np.array([[1.0], [b]], np.float32)])
    x = np.array([[acc, a]], np.float32)
    for p in ["simulate"] + available_paths():
        K.fp16_accum_path(p)
        assert float(m.predict(x)[0, 0]) == want, p


def test_fp32_operands_stay_simulated(rng, restore_path):
    """An operand that is no binary16 value (here the fp32 input) keeps the simulation,
    whose float64 sum defines the result; weights alone being fp16 does not suffice."""
    m = single(L.Dense(6, accum_format=F.Float16()), (9,), seed=1)
    w, b = m.get_weights()
    m.set_weights([half(w), b])
    x = rng.normal(size=(2, 9)).astype(np.float32)
    K.fp16_accum_path("auto")
    i0 = K.info()
    y = m.predict(x)
    i1 = K.info()
    assert i1["fp16_accum_kernel_calls"] == i0["fp16_accum_kernel_calls"]
    assert i1["fp16_accum_simulated_calls"] > i0["fp16_accum_simulated_calls"]
    K.fp16_accum_path("simulate")
    np.testing.assert_array_equal(y, m.predict(x))


def test_training_step_identical_on_kernels(rng, restore_path):
    """A LeNet at fp16 with fp16 accumulators: one training step gives the same weights
    on the kernels as on the simulation (the loss gradient, fp32, stays simulated)."""
    F16 = F.Float16
    x = rng.random((8, 1, 12, 12), dtype=np.float32)
    y = rng.integers(0, 3, 8)
    weights = {}
    for p in ("simulate", "auto"):
        K.fp16_accum_path(p)
        m = lb.models.lenet(input_shape=(1, 12, 12), num_classes=3, seed=0)
        m.compile(lb.optimizers.SGD(0.1), "categorical_crossentropy",
                  precision=lb.Precision(F16(), F16(), F16(), F16(), accum=F16(), grad_accum=F16()))
        before = K.info()["fp16_accum_kernel_calls"]
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, seed=1)
        if p == "auto":
            assert K.info()["fp16_accum_kernel_calls"] - before >= 10
        weights[p] = m.get_weights()
    for a, b in zip(weights["simulate"], weights["auto"]):
        np.testing.assert_array_equal(a, b)


def test_dispatch_and_errors(monkeypatch, restore_path):
    info = K.info()
    assert info["fp16_accum"] in ("avx512_fp16", "avx512f", "avx2", "portable")
    if info["fp16_accum_native_supported"]:
        assert info["fp16_accum"] == "avx512_fp16"
    else:
        with pytest.raises(ValueError, match="AVX512-FP16"):
            K.fp16_accum_path("avx512_fp16")
    with pytest.raises(ValueError, match="unknown path"):
        K.fp16_accum_path("fast")
    monkeypatch.setenv("LOWBIT_PORTABLE_KERNELS", "1")
    assert K.info()["fp16_accum"] == "portable"
    monkeypatch.setenv("LOWBIT_PORTABLE_KERNELS", "0")
    assert K.info()["fp16_accum"] == info["fp16_accum"]
    assert K.fp16_accum_path("simulate") == "auto"
    assert K.info()["fp16_accum"] == "simulate"
