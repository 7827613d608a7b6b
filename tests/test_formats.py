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
    with np.errstate(over="ignore"):  # overflow to inf is part of what is compared
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


def np_ufixed(x, bits, msb, rounding):
    q = 2.0 ** (msb - bits)  # unsigned: [0, 2^msb) in 2^bits steps
    v = x.astype(np.float64) / q
    k = np.rint(v) if rounding == "nearest" else np.floor(v)
    return (np.clip(k, 0, 2 ** bits - 1) * q).astype(np.float32)


@pytest.mark.parametrize("bits,msb,rounding", [(4, 0, "nearest"), (4, 2, "floor"), (1, 0, "nearest"),
                                               (8, -3, "nearest"), (16, 5, "floor")])
def test_fixed_unsigned_matches_definition(bits, msb, rounding, rng):
    f = F.Fixed(bits, msb=msb, rounding=rounding, signed=False)
    q = 2.0 ** (msb - bits)
    ties = (np.arange(-8, 2 ** min(bits, 6) + 8) + 0.5) * q
    x = np.concatenate([rng.normal(size=10000) * 2.0 ** msb, ties, [0.0, -0.0, 1e30, -1e30, 2.0 ** msb,
                                                                    -2.0 ** msb]]).astype(np.float32)
    y = f.quantize(x)
    np.testing.assert_array_equal(y, np_ufixed(x, bits, msb, rounding))
    assert f.step == q and y.min() == 0 and y.max() == 2.0 ** msb - q  # negatives -> 0, top level A - q
    assert bits > 8 or len(np.unique(y)) == 2 ** bits  # every code used: twice the signed grid's levels on x >= 0
    # on x >= 0 it is the signed grid with one more bit (the sign bit that is always 0)
    pos = np.abs(x)
    np.testing.assert_array_equal(f.quantize(pos), F.Fixed(bits + 1, msb=msb, rounding=rounding).quantize(pos))


def test_fixed_unsigned_stochastic_ste_config_and_errors(rng):
    x = rng.uniform(-0.2, 1.2, 4000).astype(np.float32)
    f = F.Fixed(4, msb=0, rounding="stochastic", seed=1, signed=False)
    draws = np.stack([f.quantize(x) for _ in range(300)])
    q = 2.0 ** -4
    assert draws.min() == 0 and draws.max() == 1 - q and np.all(draws / q == np.round(draws / q))
    inside = (x > 0) & (x < 1 - q)
    assert np.abs(draws.mean(0) - x)[inside].max() < 0.02  # unbiased inside the range
    # STE: identity passes everything; clipped passes the range [0, A] only
    g = np.linspace(1, 2, 7).astype(np.float32)
    xs = np.array([-0.5, -1e-6, 0.0, 0.5, 1.0, 1.0 + 1e-6, 3.0], np.float32)
    np.testing.assert_array_equal(F.Fixed(4, msb=0, signed=False).backward(xs, g), g)
    np.testing.assert_array_equal(F.Fixed(4, msb=0, signed=False, ste="clipped").backward(xs, g),
                                  g * np.array([0, 0, 1, 1, 1, 0, 0], np.float32))
    np.testing.assert_array_equal(F.Fixed(4, msb=0, ste="clipped").backward(xs, g),
                                  g * np.array([1, 1, 1, 1, 1, 0, 0], np.float32))
    # config round trip; signed configs keep their old form (no "signed" key)
    u = F.Fixed(4, msb=2, rounding="floor", signed=False)
    assert u.config()["signed"] == 0 and "signed" not in F.Fixed(4, msb=2).config()
    back = F.from_config(u.config())
    assert back == u and not back.signed and back != F.Fixed(4, msb=2, rounding="floor")
    assert "signed=False" in repr(u) and "signed" not in repr(F.Fixed(4, msb=2))
    np.testing.assert_array_equal(back.quantize(x), u.quantize(x))
    # S4 Eq. 11 on the max of non-negative data: [0, 2^msb) holds it
    a = F.Fixed(4, msb="auto", signed=False)
    assert a.calibrate(np.array([0.0, 0.3, 2.5, 1.0], np.float32), 100) == 2
    assert a.quantize(np.array([2.5, 5.0], np.float32)).tolist() == [2.5, 3.75]
    with pytest.raises(ValueError, match="signed True or False"):
        F.Fixed(4, signed="no")
    with pytest.raises(ValueError, match="needs signed=True"):
        F.Fixed(4, msb=0, signed=False, overflow="wrap")


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
    (lambda: F.Fixed(8, msb=1, frac_bits=2), "msb or frac_bits"), (lambda: F.get("fp7"), "format"),
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


def test_minifloat_with_float32s_own_mantissa_is_the_identity(rng):
    """MiniFloat(8, 23) is float32's grid: nothing to round (odd mantissas once moved up by
    an ulp), on every exponent, subnormals and both signs; MiniFloat(8, 22) rounds half to even."""
    x = rng.integers(0, 2 ** 32, size=200000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x)]
    np.testing.assert_array_equal(F.MiniFloat(8, 23).quantize(x).view(np.uint32), x.view(np.uint32))
    b = np.array([0x3F800001, 0x3F800003, 0x3F800002, 0x00000001, 0x00000003], np.uint32)  # 1+ulp, 1+3ulp, ...
    got = F.MiniFloat(8, 22).quantize(b.view(np.float32)).view(np.uint32)
    np.testing.assert_array_equal(got, [0x3F800000, 0x3F800004, 0x3F800002, 0x00000000, 0x00000004])


# ----- OCP element formats, bit-exact with ml_dtypes ------------------------------------
ml_dtypes = pytest.importorskip("ml_dtypes")
OCP = [(F.FP8E4M3FN, "float8_e4m3fn"), (F.FP8E5M2, "float8_e5m2"), (F.FP6E3M2, "float6_e3m2fn"),
       (F.FP6E2M3, "float6_e2m3fn"), (F.FP4E2M1, "float4_e2m1fn")]


def ml_codes(dtype):
    """Every finite non-NaN value of an ml_dtypes type, sorted, from its bit patterns."""
    bits = {1: np.uint8}[np.dtype(dtype).itemsize]
    v = np.arange(256, dtype=bits).view(dtype).astype(np.float64)
    return np.unique(v[np.isfinite(v)])


def span_data(rng, codes):
    """Subnormals to overflow: log-uniform over the range, every code, every midpoint
    (exact ties), just beside the midpoints, signed zeros, inf, NaN and float32 extremes."""
    top = codes[-1]
    mids = (codes[1:] + codes[:-1]) / 2
    x = np.concatenate([
        np.exp(rng.uniform(np.log(1e-6), np.log(top * 4), 40000)) * rng.choice([-1, 1], 40000),
        codes, mids, np.nextafter(mids.astype(np.float32), np.float32(np.inf)),
        np.nextafter(mids.astype(np.float32), np.float32(0)), [top * 1.5, top * 1e6, 3e38, 1e-40, 1e-45],
    ]).astype(np.float32)
    x = np.concatenate([x, -x, np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)])
    return x


def assert_bits(actual, ref):
    actual, ref = np.asarray(actual, np.float32), np.asarray(ref, np.float32)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(actual[ok].view(np.uint32), ref[ok].view(np.uint32))  # -0 included


@pytest.mark.parametrize("cls,name", OCP)
def test_ocp_formats_bit_exact_with_ml_dtypes(cls, name, rng):
    dt = getattr(ml_dtypes, name)
    codes = ml_codes(dt)
    fmt = cls()
    assert fmt.max == codes[-1] == float(ml_dtypes.finfo(dt).max)
    x = span_data(rng, codes)
    cast = x.astype(dt).astype(np.float32)
    has_nan = name in ("float8_e4m3fn", "float8_e5m2")
    if has_nan:  # not saturating: the conversion ml_dtypes does (E4M3FN: overflow -> NaN; E5M2: inf)
        assert_bits(cls(saturate=False).quantize(x), cast)
    # saturating (the default, OCP): the cast of x clipped to +-max; NaN stays NaN
    ref = np.clip(x, -codes[-1], codes[-1]).astype(dt).astype(np.float32)
    ref[np.isnan(x)] = np.nan
    assert_bits(fmt.quantize(x), ref)
    if not has_nan:  # FP6/FP4 have no NaN: ml_dtypes gives -0 for it, we keep NaN (documented)
        ok = ~np.isnan(x)
        assert_bits(fmt.quantize(x)[ok], cast[ok])
    assert_bits(fmt.quantize(codes.astype(np.float32)), codes)  # every code is a fixed point


def test_fn_encoding_spelled_as_minifloat(rng):
    x = rng.normal(size=2000).astype(np.float32) * 10
    assert_bits(F.MiniFloat(4, 3, encoding="fn").quantize(x), F.FP8E4M3FN().quantize(x))
    assert_bits(F.MiniFloat(3, 2, encoding="fn").quantize(x), F.FP6E3M2().quantize(x))
    assert F.MiniFloat(2, 1, encoding="fn").max == 6 and F.MiniFloat(2, 1).max == 3  # the reserved top exponent
    assert F.MiniFloat(3, 2, encoding="fn", nan=True).max == 24  # S.111.11 taken by NaN
    assert F.FP8E4M3FN() == F.FP8E4M3FN() and F.FP8E4M3FN() != F.MiniFloat(4, 3)
    assert F.get("fp8") == F.FP8E4M3FN() and F.get("fp4_e2m1") == F.FP4E2M1()
    # E4M3FN non-saturating: 464 is the tie between 448 and the NaN code, goes to even (448)
    np.testing.assert_array_equal(F.FP8E4M3FN(saturate=False).quantize(np.float32([464, 464.1, -1e9])),
                                  [448, np.nan, np.nan])


# ----- MX and NVFP4 against an independent numpy reference of the specs ---------------
MX_ELEMENTS = {"e4m3": ("float8_e4m3fn", 8), "e5m2": ("float8_e5m2", 15), "e3m2": ("float6_e3m2fn", 4),
               "e2m3": ("float6_e2m3fn", 2), "e2m1": ("float4_e2m1fn", 2), "int8": (None, 0)}


def np_blocks(x, block, one_block, dtype=np.float64):
    """Applies one_block(v) to the blocks of `block` values along the last axis (the last
    one partial); a block holding NaN or inf becomes NaN."""
    rows = x.reshape(-1, x.shape[-1]).astype(dtype)
    out = np.empty_like(rows)
    for r in range(rows.shape[0]):
        for b0 in range(0, rows.shape[1], block):
            v = rows[r, b0:b0 + block]
            out[r, b0:b0 + block] = one_block(v) if np.all(np.isfinite(v)) else np.nan
    return out.reshape(x.shape).astype(np.float32)


def np_mx(x, element, block=32):
    """OCP MX v1.0 along the last axis: X = 2^(floor(log2 amax) - emax_elem) clipped to
    E8M0's [-127, 127]; P = sat(round(v / X)) in the element format."""
    name, emax = MX_ELEMENTS[element]

    def one_block(v):
        amax = np.abs(v).max()
        e = np.frexp(amax)[1] - 1 - emax if amax > 0 else -127  # floor(log2 amax), exactly
        X = 2.0 ** np.clip(e, -127, 127)
        if name is None:  # MXINT8: k 2^-6, |k| <= 127, round half to even
            return np.clip(np.round(v / X * 64), -127, 127) / 64 * X
        dt = getattr(ml_dtypes, name)
        top = float(ml_dtypes.finfo(dt).max)
        return np.clip(v / X, -top, top).astype(dt).astype(np.float64) * X
    return np_blocks(x, block, one_block)


def mx_data(rng):
    """Rows of 100 (three full blocks and a partial one of 4) with blocks of very
    different magnitudes, an all-zero block, a block with one huge value, subnormal blocks,
    signed zeros, inf and NaN blocks."""
    x = rng.normal(size=(12, 100)) * 10.0 ** rng.integers(-6, 6, size=(12, 1))
    x[1, 32:64] = 0
    x[1, 40] = -0.0
    x[2, :32] = rng.normal(size=32) * 1e-3
    x[2, 5] = 3e4  # one huge value: the rest of its block flushes towards 0
    x[3, 64:96] = rng.normal(size=32) * 1e-41  # float32 subnormals: X clipped at 2^-127
    x[4, 97] = np.inf
    x[5, 10] = np.nan
    x[6, :32] = 2.0 ** rng.integers(-3, 3, 32) * 1.5  # ties of the element grids
    return x.astype(np.float32)


@pytest.mark.parametrize("fmt,element", [(F.MXFP8(), "e4m3"), (F.MXFP8("e5m2"), "e5m2"), (F.MXFP6(), "e2m3"),
                                         (F.MXFP6("e3m2"), "e3m2"), (F.MXFP4(), "e2m1"), (F.MXINT8(), "int8"),
                                         (F.MX("e2m1", block=8), "e2m1")])
def test_mx_matches_spec_reference(fmt, element, rng):
    x = mx_data(rng)
    assert_bits(fmt.quantize(x), np_mx(x, element, fmt.block))
    # blocks along another axis: the same as moving that axis last
    x4 = rng.normal(size=(2, 40, 3, 5)).astype(np.float32)
    ref = np.moveaxis(np_mx(np.ascontiguousarray(np.moveaxis(x4, 1, -1)), element, fmt.block), -1, 1)
    assert_bits(fmt.quantize(x4, axis=1), ref)
    assert np.all(fmt.quantize(np.zeros((3, 40), np.float32)) == 0)


def np_nvfp4(x, block=16):
    """NVFP4 in float32 arithmetic: g = 2688 / amax (finite values), s_b = E4M3(amax_b / 6 * g),
    d = s_b / g, y = E2M1(v / d) * d (saturating casts); s_b = 0 -> +-0; NaN/inf block -> NaN."""
    e4m3, e2m1 = ml_dtypes.float8_e4m3fn, ml_dtypes.float4_e2m1fn
    f32 = np.float32
    fin = np.abs(x[np.isfinite(x)])
    amax_t = fin.max() if fin.size else f32(0)
    g = f32(2688) / amax_t if amax_t > 0 else f32(0)

    def one_block(v):
        sb = np.clip(np.abs(v).max() / f32(6) * g, -448, 448).astype(e4m3).astype(f32)
        if not sb > 0:
            return np.copysign(f32(0), v)
        d = sb / g
        return np.clip(v / d, -6, 6).astype(e2m1).astype(f32) * d
    return np_blocks(x, block, one_block, np.float32)


def test_nvfp4_matches_reference(rng):
    x = mx_data(rng)
    fmt = F.NVFP4()
    assert fmt.block == 16
    assert_bits(fmt.quantize(x), np_nvfp4(x))
    y = rng.normal(size=(7, 45)).astype(np.float32)  # partial last block of 13
    assert_bits(fmt.quantize(y), np_nvfp4(y))
    z = np.zeros((2, 16), np.float32)
    z[0, 3] = -0.0
    assert_bits(fmt.quantize(z), z)
    # relative error of NVFP4 on gaussian data: between MXFP4's and MXFP8's
    w = rng.normal(size=(64, 256)).astype(np.float32)
    err = {f: np.abs(f.quantize(w) - w).mean() for f in (F.MXFP4(), F.NVFP4(), F.MXFP8())}
    e4, nv, e8 = err.values()
    assert e8 < nv < e4


def test_long_rows_match_reference(rng):
    """Rows longer than one chunk of 64 blocks (the vectorised path works on chunks of
    blocks): 70 MX blocks and 140 NVFP4 blocks per row, plus a partial block, magnitudes
    varying per block, an all-zero block and a NaN block in the second chunk."""
    n = 32 * 70 + 5
    x = rng.normal(size=(2, n)) * 10.0 ** rng.integers(-8, 8, size=(2, n // 16 + 1)).repeat(16, axis=1)[:, :n]
    x[0, 32 * 66:32 * 67] = 0
    x[1, 32 * 68 + 3] = np.nan
    x = x.astype(np.float32)
    assert_bits(F.MXFP4().quantize(x), np_mx(x, "e2m1"))
    assert_bits(F.MXFP8().quantize(x), np_mx(x, "e4m3"))
    assert_bits(F.NVFP4().quantize(x), np_nvfp4(x))


def test_block_format_memory_figures():
    assert F.MXFP4().bits_per_element == 4.25 and F.MXFP8().bits_per_element == 8.25
    assert F.MXFP6().bits_per_element == 6.25 and F.NVFP4().bits_per_element == 4.5
    assert F.MXFP4().storage_bits(1024) == 1024 * 4 + 32 * 8
    assert F.MXFP4().storage_bits(100 * 3, rows=3) == 300 * 4 + 3 * 4 * 8  # partial block per row
    assert F.NVFP4().storage_bits(64) == 64 * 4 + 4 * 8 + 32
    assert F.FP8E4M3FN().storage_bits(10) == 80 and F.BFloat16().bits_per_element == 16
    assert F.Int(8, per_channel=True).storage_bits(40, rows=4) == 320
    with pytest.raises(ValueError, match="rows"):
        F.MXFP4().storage_bits(10, rows=3)


# ----- stochastic rounding for float formats ---------------------------------------------
@pytest.mark.parametrize("fmt", [F.BFloat16(rounding="stochastic", seed=5), F.FP8E4M3FN(rounding="stochastic", seed=5),
                                 F.FP4E2M1(rounding="stochastic", seed=5), F.Float16(rounding="stochastic", seed=5),
                                 F.MXFP4(rounding="stochastic", seed=5)])
def test_float_stochastic_rounding_unbiased_and_seeded(fmt, rng):
    """Values between two grid points (and subnormals): every result is one of the two
    neighbours and the mean over many draws is the value; the stream is the seed's."""
    import copy
    twin = copy.deepcopy(fmt)  # same configuration, fresh stream counter
    v = np.float32([1.3, -2.71, 0.77, 2.9] if isinstance(fmt, F.MX) else [1.3, -2.71, 0.1234, 3e-3])
    reps = 4000
    x = np.tile(v, (reps, 1))  # MX: each row is a block, X = 2^-1
    q = fmt.quantize(x)
    for j in range(len(v)):
        vals = np.unique(q[:, j])
        assert len(vals) == 2 and vals[0] < v[j] < vals[1], (j, vals)
        step = vals[1] - vals[0]
        assert abs(q[:, j].astype(np.float64).mean() - v[j]) < 4 * step / np.sqrt(reps), (j, vals)
    assert_bits(twin.quantize(x), q)  # same seed, same first call: same draws
    assert not np.array_equal(fmt.quantize(x), q)  # the next call draws from the next stream


def test_stochastic_rounding_edges():
    f = F.FP8E4M3FN(rounding="stochastic", seed=1)
    x = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, 1e6, -1e6, 448, 2.0 ** -9, 2.0 ** -6])
    q = f.quantize(x)
    assert_bits(q, np.float32([0.0, -0.0, 448, -448, np.nan, 448, -448, 448, 2.0 ** -9, 2.0 ** -6]))
    with pytest.raises(ValueError, match="rounding"):
        F.MiniFloat(4, 3, rounding="floor")
    with pytest.raises(ValueError, match="stochastic"):
        lb.Sequential([lb.layers.Dense(3, accum_format=F.BFloat16(rounding="stochastic"))]).build((4,))


def test_ocp_and_block_invalid_arguments():
    with pytest.raises(ValueError, match="encoding"):
        F.MiniFloat(4, 3, encoding="fnuz")
    with pytest.raises(ValueError, match="nan"):
        F.MiniFloat(4, 3, nan=True)
    with pytest.raises(ValueError, match="element"):
        F.MX("e8m7")
    with pytest.raises(ValueError, match="element"):
        F.MX(F.BFloat16())
    with pytest.raises(ValueError, match="element"):
        F.MXFP8("e2m1")
    with pytest.raises(ValueError, match="block"):
        F.MX("e2m1", block=0)
    with pytest.raises(ValueError, match="axis"):
        F.MXFP4().quantize(np.zeros((2, 3), np.float32), axis=2)


def test_block_formats_straight_through(rng):
    x = rng.normal(size=(4, 64)).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(F.MXFP4().backward(x, g), g)
    np.testing.assert_array_equal(F.FP8E4M3FN(ste="clipped").backward(x * 300, g), np.where(np.abs(x * 300) <= 448, g, 0))


@pytest.mark.parametrize("fmt,expect", [(F.FP8E4M3FN(saturate=False), np.nan), (F.FP8E4M3FN(), 448.0),
                                        (F.FP8E5M2(saturate=False), 640.0), (F.FP4E2M1(), 6.0)])
def test_ocp_accumulators_overflow_rules(fmt, expect):
    """acc = round(acc + a b) per multiply-add with the format's overflow rule:
    E4M3FN 288 + 300 -> NaN (no inf) or 448 saturating; E5M2 320 + 300 -> 640; FP4 saturates."""
    m = lb.Sequential([lb.layers.Dense(1, use_bias=False, kernel_initializer="ones", accum_format=fmt)])
    m.build((2,))
    y = m.predict(np.float32([[300, 300]]))[0, 0]
    np.testing.assert_equal(y, np.float32(expect))
