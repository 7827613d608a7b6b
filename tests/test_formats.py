"""Every number format against an independent numpy implementation of its definition,
on data with zeros, negative zero, ties, subnormals and huge values; STE rules;
argument validation."""
import numpy as np
import pytest

import lowbit as lb

F = lb.formats


def hard_data(rng, n=20000):
    x = np.concatenate([
        rng.normal(size=n).astype(np.float32),
        (rng.normal(size=n) * 1e-5).astype(np.float32),           # fp16 subnormal range
        (rng.normal(size=n) * 1e5).astype(np.float32),            # fp16 overflow range
        np.float32(2.0) ** rng.integers(-30, 30, n).astype(np.float32) * (1 + np.float32(2.0 ** -11)),  # fp16 ties
        np.array([0.0, -0.0, 65504, 65520, -65520, 65519.99, 1e38, -1e38, 2 ** -24, 2 ** -25, 3 * 2 ** -26,
                  np.inf, -np.inf], np.float32),
    ])
    return x


def test_float16_bit_exact_with_numpy(rng):
    x = hard_data(rng)
    q = F.Float16().quantize(x)
    ref = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(q.view(np.uint32), ref.view(np.uint32))  # -0 and inf included
    assert np.isnan(F.Float16().quantize(np.array([np.nan], np.float32)))[0]


def np_bfloat16(x):
    u = x.view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000  # round half to even on the top 16 bits
    return r.astype(np.uint32).view(np.float32)


def test_bfloat16_round_half_even(rng):
    x = hard_data(rng)
    x = np.concatenate([x, np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.3895314e38], np.float32)])  # ties, overflow
    np.testing.assert_array_equal(F.BFloat16().quantize(x).view(np.uint32), np_bfloat16(x).view(np.uint32))


def minifloat_grid(e, m):
    """All non-negative finite values of the (e, m) format, by code (even code = even mantissa)."""
    bias = 2 ** (e - 1) - 1
    vals = []
    for E in range(0, 2 ** e - 1):  # top exponent reserved
        for M in range(2 ** m):
            vals.append(M * 2.0 ** (1 - bias - m) if E == 0 else (1 + M / 2 ** m) * 2.0 ** (E - bias))
    return np.array(vals)


def np_minifloat(x, e, m, saturate):
    grid = minifloat_grid(e, m)
    a = np.abs(x.astype(np.float64))
    idx = np.clip(np.searchsorted(grid, a), 1, len(grid) - 1)
    lo, hi = grid[idx - 1], grid[idx]
    pick_hi = (a - lo > hi - a) | ((a - lo == hi - a) & (idx % 2 == 0))  # tie -> even code
    q = np.where(pick_hi, hi, lo)
    top = grid[-1]
    ulp = grid[-1] - grid[-2]
    over = a >= top + ulp / 2 if not saturate else a > top
    q = np.where(a > top, top, q)
    if not saturate:
        q = np.where(over, np.inf, q)
    return (np.sign(x) * q).astype(np.float32) + np.where(x == 0, x, 0)


@pytest.mark.parametrize("e,m,sat", [(4, 3, True), (5, 2, True), (3, 2, True), (4, 3, False), (5, 10, False),
                                     (2, 1, True)])
def test_minifloat_matches_enumerated_grid(e, m, sat, rng):
    f = F.MiniFloat(e, m, saturate=sat)
    grid = minifloat_grid(e, m)
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties
    x = np.concatenate([rng.normal(size=5000) * grid[-1] / 3, rng.uniform(0, grid[4] + 1e-9, 500), mids, -mids,
                        grid, [0.0, grid[-1] * 1.5, -grid[-1] * 3]]).astype(np.float32)
    x = x[np.abs(x) < 3e38]
    q = f.quantize(x)
    np.testing.assert_array_equal(q, np_minifloat(x, e, m, sat))
    assert f.max == grid[-1]
    assert np.signbit(f.quantize(np.array([-0.0], np.float32)))[0]


def np_fixed(x, bits, msb, rounding):
    q = 2.0 ** (msb + 1 - bits)
    v = x.astype(np.float64) / q
    k = np.rint(v) if rounding == "nearest" else np.floor(v)
    return (np.clip(k, -2 ** (bits - 1), 2 ** (bits - 1) - 1) * q).astype(np.float32)


@pytest.mark.parametrize("bits,msb,rounding", [(8, 0, "nearest"), (8, 0, "floor"), (16, 3, "nearest"),
                                               (4, 1, "floor"), (6, -2, "nearest"), (1, 0, "floor"),
                                               (32, 0, "nearest")])
def test_fixed_matches_definition(bits, msb, rounding, rng):
    f = F.Fixed(bits, msb=msb, rounding=rounding)
    q = 2.0 ** (msb + 1 - bits)
    ties = (np.arange(-40, 40) + 0.5) * q  # half-way points: half to even / floor
    x = np.concatenate([rng.normal(size=10000) * 2.0 ** msb, ties, [0.0, -0.0, 1e30, -1e30, 2.0 ** msb,
                                                                    -2.0 ** msb]]).astype(np.float32)
    np.testing.assert_array_equal(f.quantize(x), np_fixed(x, bits, msb, rounding))
    if bits < 32:
        assert f.quantize(np.array([1e30], np.float32))[0] == 2.0 ** msb - q  # largest level A - q
    assert f.step == q


def test_fixed_q_format_and_s2_quantizer(rng):
    # frac_bits spelling: Q3.4 in 8 bits -> msb = 8 - 1 - 4 = 3
    assert F.Fixed(8, frac_bits=4).msb == 3
    # S2 eq. 4.6: q = clip(round(2^(Q-1) w) / 2^(Q-1), -1, 1 - 2^-(Q-1)) == Fixed(Q, msb=0, nearest)
    w = rng.uniform(-1.5, 1.5, 5000).astype(np.float32)
    Q = 8
    ref = np.clip(np.rint(2 ** (Q - 1) * w.astype(np.float64)) / 2 ** (Q - 1), -1, 1 - 2 ** -(Q - 1))
    np.testing.assert_array_equal(F.Fixed(Q, msb=0).quantize(w), ref.astype(np.float32))


def test_fixed_stochastic_is_unbiased_and_seeded(rng):
    x = rng.uniform(-0.9, 0.9, 2000).astype(np.float32)
    f = F.Fixed(4, msb=0, rounding="stochastic", seed=3)
    draws = np.stack([f.quantize(x) for _ in range(400)])
    q = 2.0 ** (1 - 4)
    assert np.all(np.abs(draws / q - np.round(draws / q)) < 1e-6)  # on the grid
    assert np.all((draws >= np.floor(x / q) * q - 1e-7) & (draws <= np.ceil(x / q) * q + 1e-7))
    assert np.abs(draws.mean(0) - x).max() < 0.03  # E[q(x)] = x
    g = F.Fixed(4, msb=0, rounding="stochastic", seed=3)
    np.testing.assert_array_equal(g.quantize(x), draws[0])  # same seed, same first draw


def test_fixed_auto_msb_calibration(rng):
    x = (rng.normal(size=100000) * 3).astype(np.float32)
    f = F.Fixed(8, msb="auto")
    msb = f.calibrate(x, 99.9)
    lim = max(abs(np.percentile(x, 0.1)), abs(np.percentile(x, 99.9)))
    assert msb == int(np.ceil(np.log2(lim))) and f.msb == msb
    assert F.msb_from_percentile(np.array([0.3, -2.5, 1.0]), 100) == 2
    assert F.msb_from_percentile(np.array([0.0, 0.0]), 99) == 0


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_int_symmetric_and_asymmetric(bits, rng):
    x = np.concatenate([rng.normal(size=3000), [0.0, -0.0]]).astype(np.float32)
    qmax = 2 ** (bits - 1) - 1
    s = np.abs(x).max() / qmax
    ref = np.clip(np.rint(x / s), -qmax, qmax) * s
    np.testing.assert_allclose(F.Int(bits).quantize(x), ref, rtol=1e-6, atol=1e-7)
    lo, hi = min(x.min(), 0), max(x.max(), 0)
    s = (hi - lo) / (2 ** bits - 1)
    zp = np.rint(-lo / s)
    ref = (np.clip(np.rint(x / s) + zp, 0, 2 ** bits - 1) - zp) * s
    np.testing.assert_allclose(F.Int(bits, symmetric=False).quantize(x), ref, rtol=1e-5, atol=1e-6)
    # per-channel scales: rows of axis 0
    w = (rng.normal(size=(4, 50)) * np.array([[0.1], [1], [10], [0.01]])).astype(np.float32)
    got = F.Int(bits, per_channel=True).quantize(w, channels=4)
    for r in range(4):
        np.testing.assert_allclose(got[r], F.Int(bits).quantize(w[r]), rtol=1e-6)
    # percentile/mse calibration clip outliers and never do worse than min-max on heavy tails
    t = rng.standard_t(2, size=20000).astype(np.float32)
    err = {c: np.mean((F.Int(bits, calibration=c).quantize(t) - t) ** 2) for c in ("minmax", "percentile", "mse")}
    assert err["mse"] <= err["minmax"] + 1e-12


def test_binary_sign_scale_and_hysteresis(rng):
    x = np.array([0.0, -0.0, 0.3, -0.3, 2.0, -1e-30], np.float32)
    np.testing.assert_array_equal(F.Binary().quantize(x), [1, 1, 1, -1, 1, -1])  # sign(0) = sign(-0) = +1
    a = np.abs(x).mean()
    np.testing.assert_allclose(F.Binary(scale="mean_abs").quantize(x), np.where(x < 0, -a, a), rtol=1e-6)
    w = rng.normal(size=(3, 8)).astype(np.float32)
    got = F.Binary(scale="channel_mean_abs").quantize(w, channels=3)
    np.testing.assert_allclose(got, np.where(w < 0, -1, 1) * np.abs(w).mean(1, keepdims=True), rtol=1e-6)
    # hysteresis t = 0.1: the sign flips only when the latent value crosses -t or +t
    f = F.Binary(hysteresis=0.1)
    path = [0.5, 0.05, -0.05, -0.09, -0.11, -0.05, 0.05, 0.1, 0.11]
    got = [f.quantize(np.array([v], np.float32))[0] for v in path]
    assert got == [1, 1, 1, 1, -1, -1, -1, -1, 1]


def test_ternary_twn(rng):
    x = np.concatenate([rng.normal(size=1000), [0.0, -0.0]]).astype(np.float32)
    t = 0.7 * np.abs(x).mean()
    keep = np.abs(x) > t
    a = np.abs(x[keep]).mean()
    np.testing.assert_allclose(F.Ternary().quantize(x), np.where(keep, np.sign(x) * a, 0), rtol=1e-6)
    got = F.Ternary(threshold=0.5).quantize(np.array([0.4, -0.6, 0.8, 0.5], np.float32))
    np.testing.assert_allclose(got, [0, -0.7, 0.7, 0], rtol=1e-6)


@pytest.mark.parametrize("fmt,rule", [
    (F.Fixed(8, msb=1, ste="identity"), lambda x: np.ones_like(x)),
    (F.Fixed(8, msb=1, ste="clipped"), lambda x: (np.abs(x) <= 2.0) * 1.0),
    (F.Binary(), lambda x: (np.abs(x) <= 1) * 1.0),
    (F.Binary(ste="approx_sign"), lambda x: np.maximum(0, 2 - 2 * np.abs(x))),
    (F.Binary(ste="hardtanh"), lambda x: (np.abs(x) <= 1) * 1.0),
    (F.Ternary(ste="none"), lambda x: np.zeros_like(x)),
    (F.Float16(), lambda x: np.ones_like(x)),
    (F.MiniFloat(4, 3, ste="clipped"), lambda x: (np.abs(x) <= 240.0) * 1.0),
])
def test_straight_through_gradients(fmt, rule, rng):
    x = np.concatenate([rng.normal(size=500) * 1.5, [0.0, 1.0, -1.0, 2.0, -2.0, 2.0001, 240.0, 241.0, -250.0]]).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    np.testing.assert_allclose(fmt.backward(x, g), g * rule(x.astype(np.float64)), rtol=1e-6, atol=1e-7)


def test_identity_at_32_bits_and_reprs():
    x = np.linspace(-1, 1, 101).astype(np.float32)
    np.testing.assert_array_equal(F.Float32().quantize(x), x)
    assert np.abs(F.Fixed(32, msb=1).quantize(x) - x).max() <= 2.0 ** -30
    assert repr(F.Float16()) == "Float16()" and repr(F.BFloat16()) == "BFloat16()"
    assert "bits=8" in repr(F.Fixed(8, msb=2)) and "msb=2" in repr(F.Fixed(8, msb=2))
    assert F.Fixed(8, msb=2) == F.Fixed(8, msb=2) and F.Fixed(8, msb=2) != F.Fixed(8, msb=3)
    assert F.get("fp16") == F.Float16() and F.get(None) is None


@pytest.mark.parametrize("make,match", [
    (lambda: F.Fixed(0), "bits"), (lambda: F.Fixed(64), "bits"), (lambda: F.Fixed(33), "bits"),
    (lambda: F.Int(0), "bits"), (lambda: F.Int(64), "bits"), (lambda: F.MiniFloat(1, 3), "exp_bits"),
    (lambda: F.MiniFloat(4, -1), "man_bits"), (lambda: F.Fixed(8, rounding="up"), "rounding"),
    (lambda: F.Fixed(8, msb=1.5), "msb"), (lambda: F.Binary(ste="foo"), "ste"),
    (lambda: F.Int(8, calibration="kl"), "calibration"), (lambda: F.Binary(scale="max"), "scale"),
    (lambda: F.Fixed(8, msb=1, frac_bits=2), "msb or frac_bits"), (lambda: F.get("fp8"), "format"),
])
def test_invalid_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_float16_and_bfloat16_on_random_bit_patterns(rng):
    """Every exponent of float32, both signs, NaN excluded: fp16 against numpy, bf16
    against the bit-level reference."""
    x = rng.integers(0, 2 ** 32, size=200000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(F.Float16().quantize(x).view(np.uint32), ref.view(np.uint32))
    np.testing.assert_array_equal(F.BFloat16().quantize(x).view(np.uint32), np_bfloat16(x).view(np.uint32))
