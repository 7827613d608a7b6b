"""lb.quantize (S4): extraction, percentiles and MSBs, off-/on-model quantization,
batch-norm folding, progressive quantization with checkpoints, and the command line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit as lb
from conftest import np_conv2d
from lowbit import cli

Q = lb.quantize
L = lb.layers


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    (x, y), (xt, yt) = lb.datasets.digits()
    return (x[:600], y[:600]), (xt[:200], yt[:200])  # small: these tests check mechanics, not accuracy


def small_cnn(seed=0):
    """Three kernel layers on 8x8 digits: conv - pool - conv - dense."""
    return lb.Sequential([
        L.Conv2D(4, 3, padding="same", activation="relu", input_shape=(1, 8, 8), name="conv1"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
        L.Flatten(name="flat"),
        L.Dense(10, activation="softmax", name="fc"),
    ], name="small_cnn", seed=seed)


@pytest.fixture(scope="module")
def trained(digits):
    (x, y), _ = digits
    m = small_cnn()
    m.compile(lb.optimizers.Adam(3e-3), "categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, y, batch_size=64, epochs=4, verbose=0, seed=0)
    return m


def fresh_copy(model, lr=1e-3):
    c = Q.copy_model(model)
    c.compile(lb.optimizers.Adam(lr), "categorical_crossentropy", metrics=["accuracy"])
    return c


# ------------------------------------------------------------------------ Eq. 11 / limits
def test_msb_from_limits_formula():
    # the seed's Tables 4 and 7: limits -> MSB exponent
    assert Q.msb_from_limits((-0.7315, 0.6775)) == 0
    assert Q.msb_from_limits((-0.4321, 0.4153)) == -1
    assert Q.msb_from_limits((-0.2158, 0.2088)) == -2
    assert Q.msb_from_limits((-1008, 571.9)) == 10
    assert Q.msb_from_limits((-507, 377.8)) == 9
    assert Q.msb_from_limits((-170, 184.5)) == 8
    assert Q.msb_from_limits((-115.8, 127.3)) == 7
    # exact powers of two need no extra bit; just above does
    assert Q.msb_from_limits(0.5) == -1 and Q.msb_from_limits(1.0) == 0 and Q.msb_from_limits(1.0001) == 1
    assert Q.msb_from_limits([0.0, -0.0]) == 0
    with pytest.raises(ValueError, match="finite"):
        Q.msb_from_limits([1.0, np.nan])


def test_percentile_limits_match_numpy(rng):
    a = np.concatenate([rng.standard_normal(5000) * 0.3, np.zeros(100), [4.0, -6.0]]).astype(np.float32)
    b = rng.standard_t(3, 3000).astype(np.float32) * 50
    t = Q.percentile_limits({"a": a, "b": b}, role="output")
    for name, v in (("a", a), ("b", b)):
        for p in Q.PERCENTILES:
            (row,) = [r for r in t if r["layer"] == name and r["percentile"] == p]
            lo, hi = np.percentile(v.astype(np.float64), [100 - p, p])
            assert row["low"] == pytest.approx(lo, rel=1e-12) and row["high"] == pytest.approx(hi, rel=1e-12)
            assert row["msb"] == lb.formats.msb_from_percentile(v, p)  # the engine's Eq. 11 agrees
    assert t.msb(98)["b"] == Q.msb_from_limits(np.percentile(b, [2, 98]))
    with pytest.raises(ValueError, match="percentiles in"):
        Q.percentile_limits({"a": a}, percentiles=(30,))
    with pytest.raises(ValueError, match="unknown role"):
        Q.percentile_limits({"a": a}, role="bias")


def test_histogram_is_exact_and_percentiles_within_a_bin(rng):
    parts = [rng.standard_normal(2000) * 0.01, rng.standard_normal(3000), rng.standard_normal(1000) * 40]
    h = Q.Histogram(bins=512)
    for p in parts:  # the range doubles twice on the way: bin pairs must merge exactly
        h.add(p)
    allv = np.concatenate(parts)
    counts, _ = np.histogram(allv, bins=h.edges)
    np.testing.assert_array_equal(h.counts, counts)
    assert h.n == allv.size and h.min == allv.min() and h.max == allv.max()
    for p in (0.01, 2, 50, 95, 99.9, 99.99):
        assert abs(h.percentile(p) - np.percentile(allv, p)) <= 2 * h.width
    merged = Q.Histogram(512).add(parts[0]).merge(Q.Histogram(512).add(parts[2]))
    np.testing.assert_array_equal(merged.counts, np.histogram(np.concatenate([parts[0], parts[2]]),
                                                              bins=merged.edges)[0])
    with pytest.raises(ValueError, match="multiple of 4"):
        Q.Histogram(bins=6)
    with pytest.raises(ValueError, match="finite"):
        Q.Histogram().add([np.inf])


# --------------------------------------------------------------------------- extraction
def test_extract_equals_numpy_conv(rng):
    m = lb.Sequential([L.Conv2D(4, 3, padding="same", activation="relu", input_shape=(2, 6, 6), name="c"),
                       L.Conv2D(3, 3, strides=2, name="d"), L.Flatten(), L.Dense(5, name="fc")], seed=3)
    m.build()
    w = m.get_weights()
    w[1] = rng.standard_normal(4).astype(np.float32)  # a bias, to be left out of the output
    m.set_weights(w)
    x = rng.standard_normal((7, 2, 6, 6)).astype(np.float32)
    st = Q.extract(m, x, batch_size=3)  # several batches, concatenated
    assert st.layers == ["c", "d", "fc"] and st.kinds["fc"] == "Dense"
    np.testing.assert_array_equal(st.get("c", "kernel"), w[0])
    np.testing.assert_array_equal(st.get("c", "input"), x)
    z = np_conv2d(x, w[0], None, (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_allclose(st.get("c", "output"), z, rtol=1e-5, atol=1e-5)
    h = np.maximum(z + w[1][None, :, None, None], 0)  # relu(conv + bias) feeds d
    np.testing.assert_allclose(st.get("d", "input"), h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st.get("d", "output"), np_conv2d(h, w[2], None, (2, 2), ((0, 0), (0, 0))),
                               rtol=1e-4, atol=1e-5)
    flat = st.get("fc", "input")
    np.testing.assert_allclose(st.get("fc", "output"), flat.astype(np.float64) @ w[4], rtol=1e-4, atol=1e-5)
    hs = Q.extract(m, x, histogram=True, bins=256)
    assert hs.get("c", "output").n == z.size
    for p in (98, 99.9):
        lo_a = Q.percentile_limits(st, p, "output")
        lo_h = Q.percentile_limits(hs, p, "output")
        width = max(hs.get(n, "output").width for n in hs.layers)
        for ra, rh in zip(lo_a, lo_h):
            assert abs(ra["high"] - rh["high"]) <= 2 * width
    with pytest.raises(ValueError, match="samples of shape"):
        Q.extract(m, x[:, :1])
    with pytest.raises(ValueError, match="no layer or unit"):
        Q.extract(m, x, layers=["nope"])


def test_units_group_fire_modules():
    inp = lb.Input((1, 8, 8))
    s = L.Conv2D(2, 1, name="fire2/squeeze1x1")(L.Conv2D(4, 3, name="conv1")(inp))
    e = L.Concatenate(name="fire2/concat")([L.Conv2D(3, 1, name="fire2/expand1x1")(s),
                                             L.Conv2D(3, 3, padding="same", name="fire2/expand3x3")(s)])
    m = lb.Model(inp, L.Dense(2, name="fc")(L.Flatten()(e)))
    assert [(u, [k.name for k in ks]) for u, ks in Q.units(m)] == [
        ("conv1", ["conv1"]), ("fire2", ["fire2/squeeze1x1", "fire2/expand1x1", "fire2/expand3x3"]), ("fc", ["fc"])]
    assert len(Q.units(m, "layer")) == 5
    assert [k.name for k in Q.kernel_layers(m, ["fire2"])][0] == "fire2/squeeze1x1"


# ------------------------------------------------------------------ off- and on-model
def test_quantize_weights_equals_formats_applied(trained, digits):
    _, (xt, yt) = digits
    before = trained.get_weights()
    f = lb.formats.Fixed(4, msb=0, rounding="floor")
    q = Q.quantize_weights(trained, f)
    for a, b in zip(trained.get_weights(), before):  # the original is untouched
        np.testing.assert_array_equal(a, b)
    w = q.get_weights()
    for i in (0, 2, 4):  # kernels
        np.testing.assert_array_equal(w[i], f.quantize(before[i]))
    for i in (1, 3, 5):  # biases stay float
        np.testing.assert_array_equal(w[i], before[i])
    pc = lb.formats.Int(3, per_channel=True, calibration="mse")
    q2 = Q.quantize_weights(trained, {"conv1": pc, "conv2": pc, "fc": None})
    w2 = q2.get_weights()
    np.testing.assert_array_equal(w2[0], pc.quantize(before[0], 4))  # one scale per output channel
    assert not np.array_equal(w2[0], lb.formats.Int(3, calibration="mse").quantize(before[0]))
    np.testing.assert_array_equal(w2[4], before[4])
    with pytest.raises(ValueError, match="no format for layer"):
        Q.quantize_weights(trained, {"conv1": pc})
    # S4 Table 6: on-model kernel-only quantization gives the same model as off-model
    on = Q.copy_model(trained)
    Q.quantize_layers(on, (4, None, None), msb=(0, 0, 0))
    np.testing.assert_array_equal(on.predict(xt), q.predict(xt))


def test_quantize_layers_msb_choices(trained, digits):
    (x, _), (xt, yt) = digits
    m = Q.copy_model(trained)
    got = Q.quantize_layers(m, (8, 6, 6), msb=99.9, layers=["conv2"], x=x[:128])
    assert list(got) == ["conv2"] and m.layers[0].weight_format is None
    st = Q.extract(trained, x[:128], layers=["conv2"])
    want = [lb.formats.msb_from_percentile(st.get("conv2", r), 99.9) for r in ("kernel", "input", "output")]
    assert got["conv2"]["msb"] == want
    assert m.layers[2].output_format == lb.formats.Fixed(6, msb=want[2], rounding="floor")
    Q.quantize_layers(m, "8-8-8", msb={"conv1": (0, 0, 2), "conv2": (0, 1, 2), "fc": (-1, 2, 3)})
    assert m.layers[4].input_format.msb == 2
    assert Q.layer_formats(m)["conv1"]["output"]["msb"] == 2
    auto = Q.quantize_layers(m, (4, 4, 4), msb="auto", x=x[:128])
    assert all(len(v["msb"]) == 3 for v in auto.values())
    m2 = small_cnn(seed=5)
    m2.build()
    Q.apply_layer_formats(m2, Q.layer_formats(m))
    assert Q.layer_formats(m2) == Q.layer_formats(m)
    Q.clear_quantization(m)
    assert Q.layer_formats(m) == {}
    np.testing.assert_allclose(m.predict(xt), trained.predict(xt), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="needs x"):
        Q.quantize_layers(m, (8, 6, 6), msb=98)
    with pytest.raises(ValueError, match="bits"):
        Q.quantize_layers(m, (8, 6), msb=(0, 0, 0))
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        Q.quantize_layers(m, (8, 6, 6), msb=(0, 0, 0), scheme="magic")


def test_unsigned_input_scheme(trained, digits):
    (x, _), (xt, _) = digits
    assert x.min() >= 0  # the image, then ReLU outputs: every layer's input is >= 0
    m = Q.copy_model(trained)
    got = Q.quantize_layers(m, (4, 4, 4), msb="auto", x=x[:128], scheme="unsigned_input")
    for k in (m.layers[0], m.layers[2], m.layers[4]):
        mw, mi, mo = got[k.name]["msb"]
        assert k.input_format == lb.formats.Fixed(4, msb=mi, signed=False)
        assert k.weight_format == lb.formats.Fixed(4, msb=mw) and k.output_format == lb.formats.Fixed(4, msb=mo)
    # on inputs >= 0 it is the signed grid with one more bit at the same MSB
    ref = Q.copy_model(trained)
    Q.quantize_layers(ref, (4, 5, 4), msb={n: tuple(v["msb"]) for n, v in got.items()}, scheme="nearest")
    np.testing.assert_array_equal(m.predict(xt), ref.predict(xt))
    m2 = small_cnn(seed=5)
    m2.build()
    Q.apply_layer_formats(m2, Q.layer_formats(m))
    assert m2.layers[2].input_format == m.layers[2].input_format
    both = Q.copy_model(trained)
    got = Q.quantize_layers(both, (4, 4, 4), msb=98, x=x[:128], scheme="unsigned")
    st = Q.extract(trained, x[:128])
    for k in Q.kernel_layers(both):
        mw, mi, mo = got[k.name]["msb"]
        assert mo == Q.msb_from_limits(max(np.percentile(st.get(k.name, "output"), 98), 0))  # Eq. 11 on the high limit
        assert k.input_format == lb.formats.Fixed(4, msb=mi, signed=False, ste="clipped")
        assert k.output_format == lb.formats.Fixed(4, msb=mo, signed=False, ste="clipped") and k.weight_format.signed
    for what in ("unsigned_input", "unsigned_output"):
        with pytest.raises(ValueError, match="needs activation='fixed'"):
            Q.Scheme(activation="int", **{what: True})
        with pytest.raises(ValueError, match=f"{what} True or False"):
            Q.Scheme(**{what: 1})


def test_fold_batch_norm_keeps_predictions(rng):
    inp = lb.Input((2, 8, 8))
    a = L.BatchNormalization(name="bn1")(L.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inp))
    b = L.BatchNormalization(name="bn2")(L.Conv2D(3, 3, name="c2")(L.ReLU()(a)))
    c = L.BatchNormalization(name="bn3")(L.Conv2D(3, 1, activation="relu", name="c3")(b))  # after relu: kept
    m = lb.Model(inp, L.Dense(5, name="fc")(L.Flatten()(c)), seed=1)
    g = m._graph
    for layer, nodes in m._layers:  # random statistics: gamma, beta, moving mean, positive variance
        if isinstance(layer, L.BatchNormalization):
            for k, (name, shape, _) in enumerate(g.node_params(nodes[0])):
                v = rng.uniform(0.5, 2.0, shape) if name in ("gamma", "moving_variance") else rng.standard_normal(shape)
                g.set_param(nodes[0], k, v.astype(np.float32))
    f = Q.fold_batch_norm(m)
    names = [layer.name for layer in f.layers]
    assert "bn1" not in names and "bn2" not in names and "bn3" in names
    assert f.layers[names.index("c1")].use_bias
    x = rng.standard_normal((6, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(f.predict(x), m.predict(x), rtol=1e-4, atol=1e-5)


def test_copy_model_is_independent(trained, digits):
    _, (xt, _) = digits
    c = Q.copy_model(trained)
    np.testing.assert_array_equal(c.predict(xt), trained.predict(xt))
    w = c.get_weights()
    c.set_weights([a * 0 for a in w])
    assert np.abs(trained.get_weights()[0]).sum() > 0


# ----------------------------------------------------------------------------- freezing
def test_trainable_false_freezes_a_layer(digits):
    (x, y), _ = digits
    m = small_cnn(seed=2)
    m.layers[2].trainable = False
    m.compile(lb.optimizers.Adam(1e-2), "categorical_crossentropy", metrics=["accuracy"])
    w0 = m.get_weights()
    m.fit(x[:256], y[:256], epochs=1, verbose=0)
    w1 = m.get_weights()
    assert np.array_equal(w0[2], w1[2]) and np.array_equal(w0[3], w1[3])  # conv2 kernel and bias
    assert not np.array_equal(w0[0], w1[0]) and not np.array_equal(w0[4], w1[4])
    m.layers[2].trainable = True
    m.compile(lb.optimizers.Adam(1e-2), "categorical_crossentropy", metrics=["accuracy"])  # as in Keras
    m.fit(x[:256], y[:256], epochs=1, verbose=0)
    assert not np.array_equal(w1[2], m.get_weights()[2])


# -------------------------------------------------------------------------- progressive
class Snapshots(lb.callbacks.Callback):
    def __init__(self):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def test_quantize_and_lock_freezes_quantized_layers(trained, digits):
    train, val = digits
    m = fresh_copy(trained)
    w_start = m.get_weights()
    snap = Snapshots()
    h = Q.progressive(m, train, val, strategy="quantize_and_lock", resolutions=(8, 6, 6), msb=98,
                      epochs_per_layer=2, batch_size=64, verbose=0, callbacks=[snap], calibration_samples=128)
    assert [p["unit"] for p in h.phases] == ["conv1", "conv2", "fc"]
    assert len(snap.weights) == 6 and [r["epoch"] for r in h.rows] == list(range(7))
    # conv1 is locked from phase 1 on, conv2 from phase 2 (epochs 3-6), fc from phase 3
    for s in snap.weights:
        np.testing.assert_array_equal(s[0], w_start[0])
        np.testing.assert_array_equal(s[1], w_start[1])
    for s in snap.weights[2:]:
        np.testing.assert_array_equal(s[2], snap.weights[1][2])
    np.testing.assert_array_equal(snap.weights[4][4], snap.weights[3][4])
    np.testing.assert_array_equal(snap.weights[5][4], snap.weights[3][4])
    assert not np.array_equal(snap.weights[1][4], w_start[4])  # fc trained while conv1 was locked
    assert all(k.trainable for k in m.layers)  # flags restored at the end; the model stays quantized
    assert Q.layer_formats(m)["fc"]["kernel"]["bits"] == 8
    assert h.phases[1]["layers"]["conv2"]["locked"] and "val_accuracy_quantized" in h.phases[0]


def test_quantize_while_train_trains_all_layers(trained, digits):
    train, val = digits
    m = fresh_copy(trained)
    snap = Snapshots()
    h = Q.progressive(m, train, val, strategy="quantize_while_train", resolutions=(6, 6, 6), msb="auto",
                      epochs_per_layer=1, batch_size=64, verbose=0, callbacks=[snap], calibration_samples=128)
    for a, b in zip(snap.weights, snap.weights[1:]):  # every layer moves in every phase
        for i in range(6):
            assert not np.array_equal(a[i], b[i])
    assert h.final_accuracy > 0.5 and h.rows[-1]["unit"] == "fc"
    out = Q.progressive(fresh_copy(trained), train, val, strategy="quantize_while_train", epochs_per_layer=1,
                        order="output_to_input", relax_epochs=1, batch_size=64, verbose=0, calibration_samples=64)
    assert [p["unit"] for p in out.phases] == ["fc", "conv2", "conv1", "relax"] and len(out) == 5
    given = Q.progressive(fresh_copy(trained), train, val, strategy="quantize_while_train", epochs_per_layer=0,
                          order=["fc", "conv1", "conv2"], msb="auto", batch_size=64, verbose=0, calibration_samples=64)
    assert [p["unit"] for p in given.phases] == ["fc", "conv1", "conv2"]


def test_gradual_resolution_loss_schedule(trained, digits):
    assert Q.grl_schedule((8, 6, 6)) == [(16, 16, 16), (12, 12, 12), (8, 8, 8), (8, 6, 6)]
    assert Q.grl_schedule((4, 4, 4), (16, 8, 4)) == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    assert Q.grl_schedule((16, 16, 16)) == [(16, 16, 16)]
    assert Q.grl_schedule((5, 3, 3), (8, 6, 4)) == [(8, 8, 8), (6, 6, 6), (5, 4, 4), (5, 3, 3)]
    with pytest.raises(ValueError, match="decreasing"):
        Q.grl_schedule((8, 6, 6), (4, 8))
    train, val = digits
    m = fresh_copy(trained)
    h = Q.progressive(m, train, val, strategy="gradual_resolution_loss", resolutions=(4, 4, 4), steps=(8, 6, 4),
                      epochs_per_layer=1, batch_size=64, verbose=0, calibration_samples=128)
    assert [p["bits"] for p in h.phases] == ["8-8-8", "6-6-6", "4-4-4"]
    assert all(len(p["layers"]) == 3 for p in h.phases)
    assert {f["kernel"]["bits"] for f in Q.layer_formats(m).values()} == {4}


def test_quantize_and_lock_result_is_the_quantized_model(trained, digits):
    train, val = digits
    m = fresh_copy(trained)
    h = Q.progressive(m, train, val, strategy="quantize_and_lock", resolutions=(3, 3, 3), msb=98,
                      epochs_per_layer=1, batch_size=64, verbose=0, calibration_samples=128)
    ev = m.evaluate(*val)
    assert ev["accuracy"] == h.final_accuracy and ev["loss"] == pytest.approx(h.rows[-1]["val_loss"], rel=1e-6)
    # the last phase locks the last unit: nothing trains, the score is that of quantizing it
    assert h.rows[-1]["val_accuracy"] == h.phases[-1]["val_accuracy_quantized"]
    float_twin = Q.copy_model(m)
    Q.clear_quantization(float_twin)
    assert float_twin.evaluate(*val)["loss"] != pytest.approx(ev["loss"], rel=1e-3)  # 3 bits do cost something
    assert {f["output"]["bits"] for f in Q.layer_formats(m).values()} == {3}


def test_recalibrate_rechooses_earlier_units_from_float_values(trained, digits):
    train, val = digits
    m = fresh_copy(trained)
    snap = Snapshots()
    h = Q.progressive(m, train, val, strategy="quantize_while_train", resolutions=(6, 6, 6), msb=98,
                      epochs_per_layer=1, recalibrate=True, batch_size=64, verbose=0, callbacks=[snap],
                      calibration_samples=128)
    assert "recalibrated" not in h.phases[0]
    assert sorted(h.phases[1]["recalibrated"]) == ["conv1"]
    assert sorted(h.phases[2]["recalibrated"]) == ["conv1", "conv2"]
    # at phase 3 every layer is measured float with the weights after phase 2: Eq. 11 by numpy
    twin = small_cnn()
    twin.build()
    twin.set_weights(snap.weights[1])
    stats = Q.extract(twin, train[0][:128])
    for name, d in [*h.phases[2]["recalibrated"].items(), *h.phases[2]["layers"].items()]:
        want = [Q.msb_from_limits(np.percentile(stats.get(name, r), [2, 98])) for r in ("kernel", "input", "output")]
        assert d["msb"] == want, name
    assert Q.layer_formats(m)["conv1"]["output"]["msb"] == h.phases[2]["recalibrated"]["conv1"]["msb"][2]
    locked = Q.progressive(fresh_copy(trained), train, val, strategy="quantize_and_lock", msb="auto",
                           epochs_per_layer=1, recalibrate=True, batch_size=64, verbose=0, calibration_samples=64)
    assert all("recalibrated" not in p for p in locked.phases)  # locked units keep their MSBs


def test_progressive_learning_rate_of_the_run(trained, digits):
    train, val = digits

    class Rates(lb.callbacks.Callback):
        def __init__(self):
            self.rates = []

        def on_epoch_end(self, epoch, logs=None):
            self.rates.append(logs["learning_rate"])

    r = Rates()
    m = fresh_copy(trained, lr=2e-3)
    assert m._epochs_done == 4
    Q.progressive(m, train, val, epochs_per_layer=2, relax_epochs=1, learning_rate="cosine", batch_size=64,
                  verbose=0, callbacks=[r], calibration_samples=64)
    # per step: the rate of an epoch's last step, at epoch + images before it / images;
    # epoch 0 is the run's first (7 epochs), not the model's fifth
    cos = lb.optimizers.CosineDecay(2e-3, t_max=7, per_step=True)
    n = len(train[0])
    last = 64 * ((n - 1) // 64) / n
    np.testing.assert_allclose(r.rates, [cos(e + last) for e in range(7)], rtol=1e-5)
    r2 = Rates()
    Q.progressive(fresh_copy(trained), train, val, epochs_per_layer=1, learning_rate=5e-4, batch_size=64,
                  verbose=0, callbacks=[r2], calibration_samples=64)
    np.testing.assert_allclose(r2.rates, [5e-4] * 3, rtol=1e-6)
    r3 = Rates()  # warm restarts: every phase (2 epochs; relax 1) from 2e-3 down to 0
    h = Q.progressive(fresh_copy(trained, lr=2e-3), train, val, epochs_per_layer=2, relax_epochs=1,
                      learning_rate="cosine_restarts", batch_size=64, verbose=0, callbacks=[r3],
                      calibration_samples=64)
    two, one = (lb.optimizers.CosineDecay(2e-3, t_max=t, per_step=True) for t in (2, 1))
    np.testing.assert_allclose(r3.rates, [two(last), two(1 + last)] * 3 + [one(last)], rtol=1e-5)
    assert [r["epoch"] for r in h.rows] == list(range(8)) and h.settings["learning_rate"]["restarts"]
    for bad, match in [("linear", "learning_rate"), (-1.0, "learning_rate"), (True, "learning_rate")]:
        with pytest.raises(ValueError, match=match):
            Q.progressive(fresh_copy(trained), train, val, learning_rate=bad, verbose=0)
    with pytest.raises(ValueError, match="recalibrate"):
        Q.progressive(fresh_copy(trained), train, val, msb=(0, 2, 2), recalibrate=True, verbose=0)
    with pytest.raises(ValueError, match="recalibrate"):
        Q.progressive(fresh_copy(trained), train, val, recalibrate="yes", verbose=0)


@pytest.mark.parametrize("extra", [{}, {"recalibrate": True, "learning_rate": "cosine"}])
def test_progressive_resumes_after_interruption(trained, digits, tmp_path, extra):
    train, val = digits
    kw = dict(strategy="quantize_while_train", resolutions=(6, 6, 6), msb=98, epochs_per_layer=2, batch_size=64,
              verbose=0, calibration_samples=128, seed=3, **extra)
    whole = fresh_copy(trained)
    h1 = Q.progressive(whole, train, val, checkpoint_dir=str(tmp_path / "a"), **kw)

    class Stop(Exception):
        pass

    class StopInPhase2(lb.callbacks.Callback):
        seen = 0

        def on_epoch_end(self, epoch, logs=None):
            StopInPhase2.seen += 1
            if StopInPhase2.seen == 3:  # first epoch of phase 2: phase 1 is checkpointed
                raise Stop()

    with pytest.raises(Stop):
        Q.progressive(fresh_copy(trained), train, val, checkpoint_dir=str(tmp_path / "b"),
                      callbacks=[StopInPhase2()], **kw)
    state = json.loads((tmp_path / "b" / "progress.json").read_text())
    assert state["phases_done"] == 1 and os.listdir(tmp_path / "b").count("phase_001.npz") == 1
    other = small_cnn(seed=9)  # not the model the run started from
    other.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    with pytest.raises(ValueError, match="start_weights"):
        Q.progressive(other, train, val, checkpoint_dir=str(tmp_path / "b"), **kw)
    resumed = fresh_copy(trained)
    h2 = Q.progressive(resumed, train, val, checkpoint_dir=str(tmp_path / "b"), **kw)
    key = ["epoch", "phase", "unit", "bits", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert [[r[k] for k in key] for r in h2.rows] == [[r[k] for k in key] for r in h1.rows]
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="other settings"):
        Q.progressive(fresh_copy(trained), train, val, checkpoint_dir=str(tmp_path / "b"),
                      **dict(kw, resolutions=(8, 6, 6)))


def test_progressive_validates(trained, digits):
    train, val = digits
    m = Q.copy_model(trained)
    with pytest.raises(ValueError, match="unknown strategy"):
        Q.progressive(m, train, val, strategy="lock_and_pray")
    with pytest.raises(ValueError, match="unknown order"):
        Q.progressive(m, train, val, order="sideways")
    for bad in (["conv1", "conv2"], ["conv1", "conv2", "fc", "fc"], ["conv1", "conv2", "dense"]):
        with pytest.raises(ValueError, match="every unit once"):
            Q.progressive(m, train, val, order=bad)
    with pytest.raises(ValueError, match="unknown order"):
        Q.progressive(m, train, val, order=3)
    with pytest.raises(ValueError, match="epochs_per_layer"):
        Q.progressive(m, train, val, epochs_per_layer=-1)
    with pytest.raises(ValueError, match="percentile"):
        Q.progressive(m, train, val, msb=20)
    bare = small_cnn()
    bare.build()
    with pytest.raises(ValueError, match="compile"):
        Q.progressive(bare, train, val)


def test_quantization_plots(trained, digits, tmp_path):
    pytest.importorskip("matplotlib")
    train, val = digits
    st = Q.extract(trained, val[0][:32])
    for role in ("kernel", "output"):
        lb.plots.plot_value_histogram(st, role, path=tmp_path / f"{role}.png")
        lb.plots.plot_percentile_limits(Q.percentile_limits(st, role=role), path=tmp_path / f"{role}_l.png")
    lb.plots.plot_value_histogram(Q.extract(trained, val[0][:32], histogram=True), "output",
                                  path=tmp_path / "h.png")
    h = Q.progressive(fresh_copy(trained), train, val, epochs_per_layer=1, batch_size=64, verbose=0,
                      calibration_samples=64)
    h.plot(tmp_path / "p.png")
    for f in ("kernel.png", "output_l.png", "h.png", "p.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val accuracy" in str(h) and h.to_dict()["phases"][0]["unit"] == "conv1"


# ----------------------------------------------------------------------------- the CLI
def _lowbit(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.path.dirname(os.path.dirname(lb.__file__)) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "lowbit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_chain_end_to_end(tmp_path):
    pytest.importorskip("sklearn")
    common = ["-d", "digits", "--model", "simple_cnn", "--quiet", "--limit", "600", "--val-limit", "200"]
    r = _lowbit("train", *common, "-e", "3", "--lr", "3e-3", "-o", "train", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "lowbit train" in r.stdout and "epochs: 3" in r.stdout and "elapsed:" in r.stdout
    model = str(tmp_path / "train" / "model.npz")
    steps = [("output-extraction", ["--samples", "16", "--plot"]),
             ("progressive-quantization", ["-q", "8:6:6", "--phase", "1", "--msb", "98", "--strategy", "qwt",
                                           "--relax", "1", "--recalibrate", "--cosine", "--plot"]),
             ("evaluate", []), ("summary", []), ("export", [])]
    for cmd, extra in steps:
        src = str(tmp_path / "progressive-quantization" / "model.npz") if cmd in ("evaluate", "summary", "export") \
            else model
        r = _lowbit(cmd, "-m", src, *common[:2], "--quiet", *common[5:], *extra, "-o", cmd, cwd=tmp_path)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
        assert "elapsed:" in r.stdout and f"lowbit {cmd}" in r.stdout
        res = json.loads((tmp_path / cmd / "results.json").read_text())
        assert res["command"] == cmd and res["elapsed_s"] > 0 and res["settings"]["model"] == "simple_cnn"
        assert (tmp_path / cmd / "model.npz").exists() and (tmp_path / cmd / "model.json").exists()
    pq = json.loads((tmp_path / "progressive-quantization" / "results.json").read_text())["results"]
    assert [p["unit"] for p in pq["history"]["phases"]] == ["conv2d_1", "dense_1", "relax"]
    st = pq["history"]["settings"]
    assert st["recalibrate"] and st["learning_rate"]["name"] == "cosine" and st["learning_rate"]["t_max"] == 3
    assert sorted(pq["history"]["phases"][2]["recalibrated"]) == ["conv2d_1", "dense_1"]
    ev = json.loads((tmp_path / "evaluate" / "results.json").read_text())["results"]
    assert ev["accuracy"] == pytest.approx(pq["final_accuracy"])  # the quantized model was reloaded as it was
    arch = json.loads((tmp_path / "evaluate" / "model.json").read_text())
    assert arch["layer_formats"]["conv2d_1"]["input"]["bits"] == 6
    exp = np.load(tmp_path / "export" / "export.npz")
    codes, step = exp["dense_1/kernel_codes"], exp["dense_1/kernel_step"]
    assert codes.dtype == np.int8 and codes.min() >= -128 and codes.max() <= 127
    assert np.unique(codes).size > 16  # an 8-bit grid in use
    ext = json.loads((tmp_path / "output-extraction" / "results.json").read_text())["results"]
    assert ext["msb"]["rows"][0]["layer"] == "conv2d_1"
    for png in ("output-extraction/kernel_histogram.png", "progressive-quantization/progressive.png"):
        assert (tmp_path / png).exists()


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--bogus"], "unrecognized arguments"),
    (["evaluate"], "needs a trained model"),
    (["evaluate", "-m", "missing.npz"], "no file missing.npz"),
    (["progressive-quantization", "-m", "x.npz", "-q", "8:6"], "-q"),
    (["progressive-quantization", "-m", "x.npz", "-q", "8:6:99"], "bits in"),
    (["progressive-quantization", "-m", "x.npz", "--msb", "30"], "percentile"),
    (["progressive-quantization", "-m", "x.npz", "--strategy", "magic"], "--strategy"),
    (["progressive-quantization", "-m", "x.npz", "--msb", "0:4:4", "--recalibrate"], "--recalibrate"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--model", "nosuchnet", "-d", "digits", "--limit", "10"], "unknown model"),
    (["train", "-c", "2"], "channels"),
])
def test_cli_bad_options_exit_2_with_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        rc = cli.main(args + ["-o", str(tmp_path / "o")])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("lowbit: error:") and message in err
