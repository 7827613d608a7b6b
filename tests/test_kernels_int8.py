"""int8 layers in evaluate/predict (oneDNN u8/s8 x s8 -> s32, dequantised in the output
scales) against the simulated Int layers: random shapes (odd sizes, stride 2, padding, 1x1,
dilation, channel counts not a multiple of 64), per-tensor and per-channel weight scales,
symmetric and asymmetric (zero-point) inputs, Int(b < 8).

The bound: the simulated layer sums the fp32 products float(k_x s_x) float(k_w s_w) in
fp32 (each rounding at most 2^-24 relative, K - 1 additions); the kernel sums k_x k_w
exactly and rounds twice (float(acc), times float(s_x) float(s_w)). Both lie within
(K + 4) 2^-24 sum|x_q w_q| of the exact sum, hence |z - z_sim| <= (K + 4) 2^-24 sum|x_q w_q|;
the kernel alone within 8 2^-24 sum|x_q w_q| of it. An Int(8) output: within one LSB."""
import numpy as np
import pytest

import lowbit as lb
from conftest import CONV_CASES, conv_case_geometry, conv_case_id, model_with_random_weights, np_conv2d, predict_kernels_on_off

K, L, F = lb.kernels, lb.layers, lb.formats
U = 2.0 ** -24
NATIVE = K.info()["int8"] != "simulated"
native_only = pytest.mark.skipif(not NATIVE, reason=f"int8 simulated here: {K.info().get('int8_simulated_because')}")


def check_bound(fast, sim, exact, absref, K_len):
    """|fast - sim| <= (K + 4) u sum|x_q w_q|; |fast - exact| <= 8 u sum|x_q w_q|."""
    tiny = 1e-30
    assert np.all(np.abs(fast.astype(np.float64) - sim) <= (K_len + 4) * U * absref + tiny)
    assert np.all(np.abs(fast.astype(np.float64) - exact) <= 8 * U * absref + tiny)


FORMATS = {  # input, weight
    "s8-tensor": (F.Int(8), F.Int(8)),
    "s8-channel": (F.Int(8), F.Int(8, per_channel=True)),
    "u8-zero-point": (F.Int(8, symmetric=False), F.Int(8, per_channel=True)),
    "int6-int4": (F.Int(6), F.Int(4)),
    # fixed point with a given MSB is an integer grid too (step 2^(msb - bits + 1)), and
    # binary weights are codes +-1 with their scale alpha (S1's w1a8 layers)
    "fixed8-binary": (F.Fixed(8, msb=2), F.Binary(scale="channel_mean_abs")),
    "fixed6-int8": (F.Fixed(6, msb=1), F.Int(8, per_channel=True)),
    "int8-binary": (F.Int(8), F.Binary()),
}


@native_only
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_case_id)
def test_int8_conv2d_equals_simulated_layer(case, fmt, rng):
    shape, filters, k, s, pad, d = case
    fin, fw = FORMATS[fmt]
    layer = L.Conv2D(filters, k, strides=s, padding=pad, dilation_rate=d, use_bias=False, weight_format=fw,
                     input_format=fin)
    m, w, _ = model_with_random_weights(layer, shape[1:], rng)
    x = rng.normal(size=shape).astype(np.float32)
    if not fin.config().get("symmetric", 1):
        x = x + 0.7  # an asymmetric range: a zero point strictly inside the grid
    fast, sim, used = predict_kernels_on_off(m, x, "int8", batch_size=shape[0])  # one batch: its own range
    assert used == 1
    xq = fin.quantize(x)
    wq = fw.quantize(w, channels=filters)
    geo = conv_case_geometry(case)
    exact = np_conv2d(xq, wq, None, *geo)
    absref = np_conv2d(np.abs(xq), np.abs(wq), None, *geo)
    check_bound(fast, sim, exact, absref, w[0].size)
    assert "int8:onednn:" in m.kernels(batch_size=2).impls()[0]


@native_only
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
@pytest.mark.parametrize("n,fan_in,units", [(5, 130, 45), (1, 1, 1), (4, 200, 33), (9, 577, 70), (3, 64, 64)])
def test_int8_dense_equals_simulated_layer(n, fan_in, units, fmt, rng):
    fin, fw = FORMATS[fmt]
    layer = L.Dense(units, use_bias=False, weight_format=fw, input_format=fin)
    m, w, _ = model_with_random_weights(layer, (fan_in,), rng)
    x = rng.normal(size=(n, fan_in)).astype(np.float32) + (0.7 if not fin.config().get("symmetric", 1) else 0.0)
    fast, sim, used = predict_kernels_on_off(m, x, "int8", batch_size=n)
    assert used == 1
    xq, wq = fin.quantize(x).astype(np.float64), fw.quantize(w).astype(np.float64)
    check_bound(fast, sim, xq @ wq, np.abs(xq) @ np.abs(wq), fan_in)


@native_only
@pytest.mark.parametrize("fin", [F.Int(8), F.Int(8, symmetric=False)], ids=["s8", "u8"])
def test_codes_at_rounding_ties_follow_the_quantizer(fin, rng):
    """Inputs on the half-way points (k + 1/2) s of the grid: the kernel's fast float
    encoding must hand these to the exact (double) rounding the quantizer uses; one code
    off would move z by s_x |w|, far outside the bound."""
    n, fan_in = 6, 300
    k = rng.integers(-120, 120, size=(n, fan_in)) + 0.5
    x = (k * 0.0123).astype(np.float32)
    x[0, 0] = 127 * 0.0123  # sets max|x|: s = max|x| / 127 = 0.0123 up to its rounding
    x[0, 1] = -127 * 0.0123
    layer = L.Dense(40, use_bias=False, weight_format=F.Int(8), input_format=fin)
    m, w, _ = model_with_random_weights(layer, (fan_in,), rng)
    fast, sim, used = predict_kernels_on_off(m, x, "int8", batch_size=n)
    assert used == 1
    xq, wq = fin.quantize(x).astype(np.float64), F.Int(8).quantize(w).astype(np.float64)
    check_bound(fast, sim, xq @ wq, np.abs(xq) @ np.abs(wq), fan_in)


@native_only
def test_int8_output_format_within_one_lsb_and_bias(rng):
    """output_format=Int(8) and a bias: y = Q_out(z) + b, one output LSB apart at most."""
    i8 = dict(weight_format=F.Int(8, per_channel=True), input_format=F.Int(8), output_format=F.Int(8))
    layer = L.Conv2D(40, 3, strides=2, padding="same", **i8)
    m, w, b = model_with_random_weights(layer, (33, 15, 15), rng)
    x = rng.normal(size=(4, 33, 15, 15)).astype(np.float32)
    fast, sim, used = predict_kernels_on_off(m, x, "int8", batch_size=4)
    assert used == 1
    z = sim - b[None, :, None, None]
    lsb = np.abs(z).max() / 127
    assert np.abs(fast - sim).max() <= 1.001 * lsb


@native_only
def test_int8_bias_is_added_in_the_epilogue(rng):
    """A bias without an output format goes into the kernel's epilogue: z + b, one fp32
    rounding as the simulated layer's addition (so up to one more ulp of the result)."""
    q = dict(weight_format=F.Int(8, per_channel=True), input_format=F.Int(8))
    for layer, shape in [(L.Conv2D(19, 3, padding="same", **q), (3, 21, 7, 7)), (L.Dense(23, **q), (4, 50))]:
        m, w, b = model_with_random_weights(layer, shape[1:], rng)
        x = rng.normal(size=shape).astype(np.float32)
        fast, sim, used = predict_kernels_on_off(m, x, "int8", batch_size=shape[0])
        assert used == 1
        # per-channel scales are per output channel of a conv; a Dense kernel has one (per tensor)
        xq, wq = q["input_format"].quantize(x), q["weight_format"].quantize(w, channels=len(b) if w.ndim == 4 else 1)
        if len(shape) == 4:
            absref = np_conv2d(np.abs(xq), np.abs(wq), None, (1, 1), ((1, 1), (1, 1)))
        else:
            absref = np.abs(xq).astype(np.float64) @ np.abs(wq)
        k = w[0].size if len(shape) == 4 else w.shape[0]
        assert np.all(np.abs(fast.astype(np.float64) - sim) <= (k + 4) * U * absref + 2 * U * np.abs(sim))


def assert_close_but_for_code_flips(fast, sim):
    """Class probabilities of a deep int8 net: a layer's z differs from the simulated one by
    its fp32 rounding, and where z_sim lies that close to a rounding boundary of the next
    layer's Int grid, one input code of that layer differs by one (a step of s_x w in its
    sums). Almost every output agrees to the roundings; none by more than such a step."""
    close = np.isclose(fast, sim, rtol=1e-4, atol=1e-6)
    assert close.mean() >= 0.97, f"{(~close).sum()} of {close.size} outputs differ"
    np.testing.assert_allclose(fast, sim, rtol=0, atol=5e-3)
    assert np.array_equal(fast.argmax(1), sim.argmax(1))


def int8_net():
    """Int(8) convs (odd size, stride 2, 1x1, per-channel weights, an asymmetric input after
    ReLU), batch norm between them, an Int(8) Dense, fp32 first and last layers. The 16 ->
    16 conv reads and writes nChw16c with one block, which is NHWC: no copies."""
    q = dict(weight_format=F.Int(8, per_channel=True), input_format=F.Int(8))
    return lb.Sequential([
        L.Conv2D(16, 3, padding="same", input_shape=(3, 11, 11)),
        L.BatchNormalization(),
        L.Conv2D(16, 3, padding="same", **q),
        L.BatchNormalization(),
        L.Conv2D(32, 3, padding="same", **q),
        L.BatchNormalization(),
        L.Activation("relu"),
        L.Conv2D(70, 3, strides=2, padding="same", weight_format=F.Int(8), input_format=F.Int(8, symmetric=False)),
        L.Conv2D(33, 1, **q),
        L.Flatten(),
        L.Dense(45, weight_format=F.Int(8), input_format=F.Int(8)),
        L.Dense(10, activation="softmax"),
    ], seed=0)


@native_only
def test_engine_predict_evaluate_and_weight_cache(rng):
    m = int8_net()
    m.compile(lb.optimizers.Adam(1e-2), "categorical_crossentropy", metrics=["accuracy"])
    x = rng.normal(size=(21, 3, 11, 11)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 21)]
    calls = K.info()["engine_int8_calls"]
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)  # trained weights, running input ranges
    assert K.info()["engine_int8_calls"] == calls, "the training forward ran the int8 kernels"
    prep = K.info()["engine_weight_preparations"]
    fast, sim, used = predict_kernels_on_off(m, x, "int8")
    assert used == 5 * 3  # five int8 layers, three batches of 7
    assert K.info()["engine_weight_preparations"] - prep == 5  # once per layer, not per batch
    assert_close_but_for_code_flips(fast, sim)
    ev_fast = m.evaluate(x, y, batch_size=6)
    K.use_in_engine(False)
    try:
        ev_sim = m.evaluate(x, y, batch_size=6)
    finally:
        K.use_in_engine(True)
    assert ev_fast["accuracy"] == ev_sim["accuracy"]
    assert ev_fast["loss"] == pytest.approx(ev_sim["loss"], rel=1e-3)
    # new weights reach the kernels: set_weights and an optimizer step make a new version
    w = m.get_weights()
    m.set_weights([-a if a.ndim == 4 and a.shape[0] == 70 else a for a in w])
    fast2, sim2, _ = predict_kernels_on_off(m, x, "int8")
    assert_close_but_for_code_flips(fast2, sim2)
    assert not np.allclose(fast2, fast, rtol=1e-3)
    prep = K.info()["engine_weight_preparations"]
    m.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    fast3, sim3, _ = predict_kernels_on_off(m, x, "int8")
    assert K.info()["engine_weight_preparations"] - prep == 5
    assert_close_but_for_code_flips(fast3, sim3)
    assert not np.allclose(fast3, fast2, rtol=1e-3)


def test_formats_without_an_int8_kernel_stay_simulated(rng):
    """Asymmetric weights (no weight zero point in oneDNN's conv), Int(16), an Int
    accumulator, an fp32 input, and fixed-point inputs that floor, track their MSB or have
    more than 8 bits all run the simulated layer, bit for bit."""
    x = rng.normal(size=(3, 20, 7, 7)).astype(np.float32)
    for kw in [dict(weight_format=F.Int(8, symmetric=False), input_format=F.Int(8)),
               dict(weight_format=F.Int(16), input_format=F.Int(8)),
               dict(weight_format=F.Int(8), input_format=F.Int(8), accum_format=F.Int(32)),
               dict(weight_format=F.Int(8)),
               dict(weight_format=F.Binary(), input_format=F.Fixed(8, msb=2, rounding="floor")),  # S4's floor
               dict(weight_format=F.Int(8), input_format=F.Fixed(8, msb="auto")),  # MSB moves with the data
               dict(weight_format=F.Int(8), input_format=F.Fixed(12, msb=2))]:
        m, _, _ = model_with_random_weights(L.Conv2D(9, 3, **kw), (20, 7, 7), rng)
        fast, sim, used = predict_kernels_on_off(m, x, "int8")
        assert used == 0
        np.testing.assert_array_equal(fast, sim)
        assert not any(i.startswith("int8:") for i in m.kernels(batch_size=2).impls())


@native_only
def test_s1_w1a8_resnet_runs_its_quantact_convs_on_int8_kernels():
    """S1's w1a8 ResNet-20 quantizes feature maps with a QuantAct (Fixed(8, msb=3) node) in
    front of each binary-weight conv: the conv reads values on that grid, so at inference
    it runs the int8 kernel (s8 codes x +-1, alpha in the output scales)."""
    rng = np.random.default_rng(0)
    m = lb.models.resnet20((3, 8, 8), 10, seed=0, precision="w1a8", bn_momentum=0.9)
    m.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy")
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    m.fit(x, np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)], batch_size=8, epochs=1, verbose=0)
    fast, sim, used = predict_kernels_on_off(m, x, "int8")
    assert used == 18 * 3  # the block convs, batches of 7, 7, 2
    assert_close_but_for_code_flips(fast, sim)
    assert sum(r["impl"].startswith("int8:") for r in m.kernels(batch_size=2)) == 18
