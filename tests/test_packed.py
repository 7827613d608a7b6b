"""model.export_packed / lb.load_packed: weights stored in their formats, the file's weight
bytes equal summary()'s memory, the loaded model predicts what the simulated one does,
and damaged files are refused."""
import io
import json
import zipfile

import numpy as np
import pytest

import lowbit as lb

L, F = lb.layers, lb.formats
RNG = np.random.default_rng(0)
X = RNG.uniform(size=(48, 1, 28, 28)).astype(np.float32)
Y = np.arange(48) % 10


def members(path):
    """name -> array of every .npy member, read independently of lowbit's reader."""
    with zipfile.ZipFile(path) as z:
        return {n[:-4]: np.load(io.BytesIO(z.read(n)), allow_pickle=False)
                for n in z.namelist() if n.endswith(".npy")}


def header(path):
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("lowbit.json"))


def trained(precision, model=None):
    m = model or lb.models.lenet(seed=1)
    m.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"], precision=precision)
    m.fit(X, Y, batch_size=16, epochs=1, verbose=0)  # moves weights, tracks activation ranges
    return m


def weight_bytes(path):
    return sum(a.nbytes for n, a in members(path).items() if lb.packed.WEIGHT_ARRAY.fullmatch(n))


@pytest.mark.parametrize("preset", ["binary", "int8", "fp16", "w1a8", "bf16", "fixed8", "fp8", "mxfp4", "mxfp6",
                                    "nvfp4"])
def test_lenet_presets_predict_exactly_and_size_is_the_summary(tmp_path, preset):
    m = trained(preset)
    want = m.predict(X)
    path = tmp_path / "m.lowbit"
    sizes = m.export_packed(path)
    table = m.summary(print_fn=None)
    assert sum(sizes.values()) == table.totals["memory_bytes"] == weight_bytes(path)
    assert header(path)["format"] == "lowbit-packed"
    loaded = lb.load_packed(path)
    # the same formats on weights that are fixed points of them: the same layers and
    # kernels run, so even int8 (allowed one output LSB) agrees bit for bit
    family = {"int8": "int8", "bf16": "bf16", "fp16": "fp16"}.get(preset)
    calls = lb.kernels.info().get(f"engine_{family}_calls", 0)
    got = loaded.predict(X)
    np.testing.assert_array_equal(got, want)
    if family and lb.kernels.info()[family].startswith("onednn"):  # the loaded layers run the format's kernel
        assert lb.kernels.info()[f"engine_{family}_calls"] > calls
    assert loaded.evaluate(X, Y) == m.evaluate(X, Y)
    assert loaded.summary(print_fn=None).totals["memory_bytes"] == table.totals["memory_bytes"]
    fp32 = 4 * m.count_params()
    ratio = {"binary": 25, "w1a8": 25, "int8": 3.9, "fixed8": 3.9, "fp8": 3.9, "fp16": 1.99, "bf16": 1.99,
             "mxfp4": 7, "mxfp6": 5, "nvfp4": 7}[preset]
    assert fp32 / sum(sizes.values()) > ratio


def test_binary_weights_are_packbits_of_the_signs_with_channel_scales(tmp_path):
    m = trained("binary")
    m.export_packed(tmp_path / "b.lowbit")
    a = members(tmp_path / "b.lowbit")
    w = m.get_weights()
    conv = w[2]  # second conv (48, 32, 5, 5): binary, scaled per filter
    alpha = np.abs(F.Binary(scale="channel_mean_abs").quantize(conv, 48).reshape(48, -1)[:, 0])  # mean |w|
    np.testing.assert_array_equal(a["w0002_codes"], np.packbits(conv.reshape(48, -1) < 0, axis=1))
    assert a["w0002_codes"].shape == (48, 100) and a["w0002_codes"].dtype == np.uint8
    np.testing.assert_array_equal(a["w0002_scale"], alpha)
    dense = w[4]  # (1200, 256): packed along the reduction axis K per unit; the engine scales per tensor
    np.testing.assert_array_equal(a["w0004_codes"], np.packbits(dense.T < 0, axis=1))
    assert a["w0004_scale"].shape == (1,)
    assert a["w0000_codes"].shape == (32, 4)  # the first layer: binary weights (25 bits), float input
    assert "w0008" in a and "w0009" in a and a["w0008"].shape == (84, 10)  # the exempt last layer: fp32
    assert a["w0003"].dtype == np.float32  # biases


def test_int8_codes_and_fp16_bits(tmp_path):
    m = trained("int8")
    m.export_packed(tmp_path / "i.lowbit")
    a = members(tmp_path / "i.lowbit")
    conv = m.get_weights()[2].reshape(48, -1)
    amax = np.abs(conv).max(axis=1)
    s = amax.astype(np.float64) / 127
    np.testing.assert_array_equal(a["w0002_amax"], amax)
    assert a["w0002_codes"].dtype == np.int8
    np.testing.assert_array_equal(a["w0002_codes"], np.clip(np.rint(conv / s[:, None]), -127, 127))
    m = trained("fp16")
    m.export_packed(tmp_path / "h.lowbit")
    a = members(tmp_path / "h.lowbit")
    conv = m.get_weights()[0].reshape(32, -1)
    assert a["w0000_codes"].dtype == np.uint16  # IEEE binary16 bit patterns
    np.testing.assert_array_equal(a["w0000_codes"].view(np.float16), conv.astype(np.float16))
    m = trained("bf16")
    m.export_packed(tmp_path / "b.lowbit")
    bf = members(tmp_path / "b.lowbit")["w0002_codes"]
    wq = F.BFloat16().quantize(m.get_weights()[2]).reshape(48, -1)
    np.testing.assert_array_equal(bf, wq.view(np.uint32) >> 16)  # float32's top 16 bits


def layer_format_model():
    inp = lb.Input((2, 9, 9))
    x = L.Conv2D(5, 3, weight_format=F.Binary(hysteresis=0.05), input_format=F.Binary(), name="bin_h")(inp)
    x = L.BatchNormalization()(x)
    x = L.Conv2D(6, 3, strides=2, padding="same", weight_format=F.Int(4, per_channel=True), name="int4")(x)
    x = L.Conv2D(4, 1, weight_format=F.Ternary(), name="tern")(x)
    x = L.Conv2D(4, 3, weight_format=F.MiniFloat(3, 2), name="e3m2")(x)
    x = L.Flatten()(x)
    x = L.Dense(7, weight_format=F.Fixed(6, msb=0, rounding="floor"), name="fix6")(x)
    x = L.Dense(5, weight_format=F.Int(8, symmetric=False), name="asym")(x)  # no packed form: fp32
    x = L.Dense(3, weight_format=F.Float16(rounding="stochastic", seed=3), name="sr")(x)  # fp32 too
    x = L.Dense(3, weight_format=F.MXFP8(block=4), name="mx", activation="softmax")(x)
    return lb.Model(inp, x, seed=2)


def test_layer_formats_odd_widths_and_fp32_fallbacks(tmp_path):
    x = RNG.normal(size=(16, 2, 9, 9)).astype(np.float32)
    m = layer_format_model()
    m.compile(lb.optimizers.Adam(1e-2), "categorical_crossentropy")
    m.fit(x, np.arange(16) % 3, batch_size=8, epochs=2, verbose=0)
    path = tmp_path / "l.lowbit"
    sizes = m.export_packed(path)
    assert sum(sizes.values()) == m.summary(print_fn=None).totals["memory_bytes"] == weight_bytes(path)
    h = header(path)["packed"]
    kinds = {k: (v["codes"], v["bits"]) for k, v in h.items()}
    assert ("sign", 1) in kinds.values() and ("int", 4) in kinds.values() and ("ternary", 2) in kinds.values()
    assert ("minifloat", 6) in kinds.values() and ("fixed", 6) in kinds.values() and ("mx", 8) in kinds.values()
    a = members(path)
    assert a["w0000_codes"].shape == (5, 3)  # 18 sign bits per filter -> 3 bytes
    int4 = [k for k, v in h.items() if v["bits"] == 4][0]
    assert a[f"{int4}_codes"].shape == (6, 23)  # 5 x 3 x 3 = 45 codes of 4 bits -> 23 bytes
    assert sum(1 for n in a if n.startswith("w") and "_" not in n and a[n].ndim == 2) == 2  # asym, sr kernels
    loaded = lb.load_packed(path)
    # the stochastic layer draws new bits per call from its counter, restored from the file
    np.testing.assert_array_equal(loaded.predict(x), m.predict(x))


def test_the_loaded_model_is_for_inference(tmp_path):
    m = trained("binary")
    m.export_packed(tmp_path / "p.lowbit")
    loaded = lb.load_packed(tmp_path / "p.lowbit")
    with pytest.raises(ValueError, match="packed inference file.*p.lowbit"):
        loaded.fit(X, Y, verbose=0)
    with pytest.raises(ValueError, match="packed inference file"):
        loaded.compute_gradients(X[:4], Y[:4])
    loaded.save(tmp_path / "full.lowbit")  # a model file of the quantized weights
    np.testing.assert_array_equal(lb.load_model(tmp_path / "full.lowbit").predict(X), m.predict(X))


def test_export_needs_the_default_precision_compiled(tmp_path):
    m = lb.models.lenet(seed=0, precision="binary")
    with pytest.raises(ValueError, match="compile it first"):
        m.export_packed(tmp_path / "x.lowbit")
    plain = lb.models.lenet(seed=0)  # uncompiled fp32: every weight in fp32
    sizes = plain.export_packed(tmp_path / "f.lowbit")
    assert sum(sizes.values()) == 4 * plain.count_params()
    np.testing.assert_array_equal(lb.load_packed(tmp_path / "f.lowbit").predict(X[:4]), plain.predict(X[:4]))


def rewrite(path, out, edit):
    with zipfile.ZipFile(path) as z:
        mem = {n: z.read(n) for n in z.namelist()}
    edit(mem)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in mem.items():
            z.writestr(n, b)
    out.write_bytes(buf.getvalue())
    return out


def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def test_damaged_foreign_and_wrong_kind_files(tmp_path):
    m = trained("int8")
    good = tmp_path / "good.lowbit"
    m.export_packed(good)
    raw = good.read_bytes()

    def refused(path, match):
        with pytest.raises(ValueError, match=match) as e:
            lb.load_packed(path)
        assert str(path) in str(e.value)

    (tmp_path / "trunc").write_bytes(raw[:len(raw) // 2])
    refused(tmp_path / "trunc", "truncated or corrupted")
    flipped = bytearray(raw)
    at = raw.index(b"w0002_codes.npy") + 200  # inside that member's data
    flipped[at] ^= 0xFF
    (tmp_path / "flip").write_bytes(bytes(flipped))
    refused(tmp_path / "flip", "corrupted")
    (tmp_path / "foreign").write_bytes(b"PK\x03\x04 not really a zip")
    refused(tmp_path / "foreign", "ZIP")

    def newer(mem):
        h = json.loads(mem["lowbit.json"])
        h["version"] = 99
        mem["lowbit.json"] = json.dumps(h).encode()
    refused(rewrite(good, tmp_path / "newer", newer), "newer lowbit")

    def bits(mem):
        h = json.loads(mem["lowbit.json"])
        h["packed"]["w0002"]["bits"] = 4
        mem["lowbit.json"] = json.dumps(h).encode()
    refused(rewrite(good, tmp_path / "bits", bits), "packed listing of w0002")

    def shape(mem):
        h = json.loads(mem["lowbit.json"])
        h["arrays"]["w0002_codes"] = [[48, 10], "|i1"]
        mem["lowbit.json"] = json.dumps(h).encode()
        mem["w0002_codes.npy"] = npy(np.zeros((48, 10), np.int8))
    refused(rewrite(good, tmp_path / "shape", shape), "w0002_codes.*shape")

    def nan_scale(mem):
        mem["w0002_amax.npy"] = npy(np.full(48, np.nan, np.float32))
    refused(rewrite(good, tmp_path / "nan", nan_scale), "NaN")

    def extra(mem):
        h = json.loads(mem["lowbit.json"])
        h["arrays"]["w0002_more"] = [[1], "<f4"]
        mem["lowbit.json"] = json.dumps(h).encode()
        mem["w0002_more.npy"] = npy(np.zeros(1, np.float32))
    refused(rewrite(good, tmp_path / "extra", extra), "unexpected arrays")

    def both(mem):
        h = json.loads(mem["lowbit.json"])
        h["arrays"]["w0002"] = [[48, 32, 5, 5], "<f4"]
        mem["lowbit.json"] = json.dumps(h).encode()
        mem["w0002.npy"] = npy(np.zeros((48, 32, 5, 5), np.float32))
    refused(rewrite(good, tmp_path / "both", both), "both packed and in fp32")
    with pytest.raises(FileNotFoundError):
        lb.load_packed(tmp_path / "missing.lowbit")
    with pytest.raises(ValueError, match="use lb.load_packed"):
        lb.load_model(good)
    with pytest.raises(ValueError, match="use lb.load_packed"):
        m.load_weights(good)
    m.save(tmp_path / "model.lowbit")
    refused(tmp_path / "model.lowbit", "lowbit-model file")
    np.testing.assert_array_equal(lb.load_packed(good).predict(X), m.predict(X))  # the good one still loads


def test_cli_export_packed(tmp_path, capsys):
    from lowbit import cli
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "simple_cnn", "--epochs", "1", "--limit", "300", "--quiet", "-q", "8:8:8",
                     "-o", str(run)]) == 0
    assert cli.main(["export", "-m", str(run / "model.npz"), "--packed", "--quiet", "-o", str(tmp_path / "ex")]) == 0
    out = capsys.readouterr().out
    assert "packed inference model" in out
    res = json.loads((tmp_path / "ex" / "results.json").read_text())["results"]
    path = tmp_path / "ex" / "model.packed.lowbit"
    assert res["packed_weight_bytes"] == weight_bytes(path) < res["float32_bytes"] / 3
    lb.load_packed(path).predict(X[:2])


def test_formats_set_after_construction_are_saved_and_packed(tmp_path):
    """lb.quantize sets layer formats on built layers: model files and packed files both
    record the formats the layers have, not those of their constructor call."""
    m = lb.models.lenet(seed=0)
    m.compile("adam")
    lb.quantize.quantize_layers(m, (4, 8, 8), msb=(0, 3, 3))
    want = m.predict(X)
    m.save(tmp_path / "m.lowbit")
    np.testing.assert_array_equal(lb.load_model(tmp_path / "m.lowbit").predict(X), want)
    sizes = m.export_packed(tmp_path / "p.lowbit")
    assert {v["codes"] for v in header(tmp_path / "p.lowbit")["packed"].values()} == {"fixed"}
    assert sum(sizes.values()) == m.summary(print_fn=None).totals["memory_bytes"]
    np.testing.assert_array_equal(lb.load_packed(tmp_path / "p.lowbit").predict(X), want)


def test_binary_hysteresis_keeps_the_engines_signs(tmp_path):
    """Binary(hysteresis=t): a weight inside (-t, t) keeps the sign the layer's quantizer
    last gave it, which need not be its own sign; the file stores the signs the layer uses."""
    m = lb.Sequential([L.Conv2D(3, 3, weight_format=F.Binary(scale="channel_mean_abs", hysteresis=0.5),
                                input_shape=(2, 6, 6), name="c"), L.Flatten(), L.Dense(2)], seed=0)
    x = RNG.normal(size=(5, 2, 6, 6)).astype(np.float32)
    w = m.get_weights()
    w[0] = np.where(RNG.uniform(size=w[0].shape) < 0.5, 0.9, -0.9).astype(np.float32)
    m.set_weights(w)
    m.predict(x)  # the quantizer's signs: those of +-0.9
    flipped = [a.copy() for a in w]
    flipped[0] = (-0.1 * np.sign(w[0])).astype(np.float32)  # inside (-0.5, 0.5): the old signs stay
    m.set_weights(flipped)
    want = m.predict(x)
    m.export_packed(tmp_path / "h.lowbit")
    codes = members(tmp_path / "h.lowbit")["w0000_codes"]
    np.testing.assert_array_equal(codes, np.packbits(w[0].reshape(3, -1) < 0, axis=1))  # old signs
    np.testing.assert_array_equal(lb.load_packed(tmp_path / "h.lowbit").predict(x), want)


@pytest.mark.parametrize("kw", [dict(precision="w1a8", hysteresis=0.1),
                                dict(precision="binary", hysteresis=0.1, quantize_shortcuts=True)], ids=str)
def test_resnet20_binary_blocks(tmp_path, kw):
    """S1's ResNet-20 with binary weights (hysteresis, clipped latent weights), batch norm,
    shortcuts and quantized feature maps: the same predictions and summary bytes."""
    x = RNG.uniform(size=(16, 3, 32, 32)).astype(np.float32)
    m = lb.models.resnet20(seed=0, **kw)
    m.compile(lb.optimizers.Adam(1e-2), "categorical_crossentropy")
    m.fit(x, np.arange(16) % 10, batch_size=8, epochs=1, verbose=0)
    want = m.predict(x)
    sizes = m.export_packed(tmp_path / "r.lowbit")
    assert sum(sizes.values()) == m.summary(print_fn=None).totals["memory_bytes"] == weight_bytes(tmp_path / "r.lowbit")
    assert 4 * m.count_params() / sum(sizes.values()) > 10
    np.testing.assert_array_equal(lb.load_packed(tmp_path / "r.lowbit").predict(x), want)
