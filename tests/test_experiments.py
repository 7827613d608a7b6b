"""lb.experiments.run, the Results table, the energy estimate and the study plots, on
scikit-learn's 8x8 digits (a few hundred images: each run takes a fraction of a second)."""
import json
import os

import numpy as np
import pytest

import lowbit as lb
from lowbit import energy
from lowbit import formats as F

L = lb.layers


@pytest.fixture(scope="module")
def data():
    (x, y), (xt, yt) = lb.datasets.digits()
    return (x[:384], y[:384]), (xt[:96], yt[:96])


class Counting:
    """A model builder that counts how many models (trainings) it made."""

    def __init__(self):
        self.calls = 0
        self.__name__ = "tiny"

    def __call__(self, input_shape, num_classes, seed):
        self.calls += 1
        return lb.Sequential([L.Conv2D(8, 3, padding="same", activation="relu", input_shape=input_shape),
                              L.MaxPooling2D(2), L.Flatten(), L.Dense(32, activation="relu"),
                              L.Dropout(0.25), L.Dense(num_classes, activation="softmax")], seed=seed)


def _run(data, tmp_path, builder, **kw):
    args = dict(data=data, epochs=2, batch_size=32, results_dir=str(tmp_path), verbose=False)
    args.update(kw)
    return lb.experiments.run(builder, ["fp32", "fixed8"], **args)


def test_run_rows_and_stored_files(data, tmp_path):
    res = _run(data, tmp_path, {"tiny": Counting(), "simple": "simple_cnn"})
    assert len(res) == 4 and res.model_labels == ["tiny", "simple"] and res.precision_labels == ["fp32", "fixed8"]
    for r in res:
        assert 0 <= r["accuracy"] <= 1 and r["accuracy"] == r["history"]["val_accuracy"][-1]
        assert len(r["history"]["loss"]) == r["epochs"] == 2
        assert r["images_per_s"] == pytest.approx(384 / r["epoch_time_s"])
        assert r["energy_inference_uJ"] > 0 and r["energy_train_J"] > 0 and r["stored"] is False
        assert r["peak_mem_mb"] is None or r["peak_mem_mb"] >= 0
    fp32, fixed8 = res.get("tiny", "fp32"), res.get("tiny", "fixed8")
    assert fp32["size_bytes"] == fp32["float32_bytes"] == 4 * fp32["params"]
    assert fixed8["size_bytes"] < fp32["size_bytes"] / 3  # 8-bit kernels, 32-bit biases
    assert fixed8["energy_inference_uJ"] < fp32["energy_inference_uJ"]
    names = sorted(os.listdir(tmp_path))
    assert len([n for n in names if n.endswith(".json")]) == 4
    assert len([n for n in names if n.endswith(".curves.csv")]) == 4
    assert not [n for n in names if n.endswith(".tmp")]
    with open(tmp_path / [n for n in names if n.startswith("tiny__fixed8") and n.endswith(".json")][0]) as f:
        stored = json.load(f)
    assert stored["history"] == fixed8["history"] and stored["model"] == "tiny"
    csv = (tmp_path / [n for n in names if n.startswith("tiny__fixed8") and n.endswith(".csv")][0]).read_text()
    assert csv.splitlines()[0] == "epoch,loss,accuracy,val_loss,val_accuracy,epoch_time" and len(csv.splitlines()) == 3
    loaded = lb.experiments.Results.load(str(tmp_path))
    assert len(loaded) == 4 and {(r["model"], r["precision"]) for r in loaded} == \
        {(r["model"], r["precision"]) for r in res}
    with pytest.raises(KeyError, match="0 rows"):
        res.get("tiny", "bf16")


def test_resume_skips_finished_runs(data, tmp_path):
    b = Counting()
    first = _run(data, tmp_path, b)
    assert b.calls == 2
    again = _run(data, tmp_path, b)
    assert b.calls == 2 and all(r["stored"] for r in again)
    assert [r["history"] for r in again] == [r["history"] for r in first]
    # one result lost, one cut short mid-write: only those two retrain
    jsons = sorted(n for n in os.listdir(tmp_path) if n.endswith(".json"))
    os.unlink(tmp_path / jsons[0])
    _run(data, tmp_path, b)
    assert b.calls == 3
    text = (tmp_path / jsons[1]).read_text()
    (tmp_path / jsons[1]).write_text(text[:len(text) // 2])
    _run(data, tmp_path, b)
    assert b.calls == 4
    _run(data, tmp_path, b, epochs=1)  # other settings: other keys
    assert b.calls == 6
    _run(data, tmp_path, b, resume=False)
    assert b.calls == 8


def test_identical_seeds_identical_results(data):
    a = _run(data, None, Counting(), results_dir=None, seed=3)
    b = _run(data, None, Counting(), results_dir=None, seed=3)
    c = _run(data, None, Counting(), results_dir=None, seed=4)
    for ra, rb in zip(a, b):
        assert ra["history"]["loss"] == rb["history"]["loss"] and ra["accuracy"] == rb["accuracy"]
    assert a[0]["history"]["loss"] != c[0]["history"]["loss"]
    # same initial weights and batches at every precision: fp16 tracks fp32 closely
    h = lb.experiments.run(Counting(), ["fp32", "fp16"], data=data, epochs=1, batch_size=32, results_dir=None,
                           verbose=False)
    assert h[0]["history"]["loss"][0] == pytest.approx(h[1]["history"]["loss"][0], rel=2e-3)


def test_keep_models_reloads_stored_weights(data, tmp_path):
    first = _run(data, tmp_path, Counting(), keep_models=True)
    b = Counting()
    again = _run(data, tmp_path, b, keep_models=True)
    assert all(r["stored"] for r in again) and b.calls == 2  # built to hold the weights, not trained
    for key, m in first.models.items():
        for w1, w2 in zip(m.get_weights(), again.models[key].get_weights()):
            np.testing.assert_array_equal(w1, w2)
    (_, _), (xt, yt) = data
    assert again.models[("tiny", "fixed8")].evaluate(xt, yt)["accuracy"] == pytest.approx(
        first.get("tiny", "fixed8")["accuracy"])


def test_results_views(data):
    res = _run(data, None, Counting(), results_dir=None, title="digits study")
    text = str(res)
    assert "digits study" in text and "estimate" in text and "CPU:" in text
    assert "test acc %" in text and "fixed8" in text and len(text.splitlines()) == 4 + 2 + 1
    html = res._repr_html_()
    assert html.count("<tr>") == 3 and "estimate" in html
    both = res + res
    assert len(both) == 4 and both.title == "digits study"
    pd = pytest.importorskip("pandas")
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df["precision"]) == ["fp32", "fixed8"]


def test_pivot_and_epoch_tables(data):
    res = lb.experiments.run({"tiny": Counting(), "simple": "simple_cnn"}, ["fp32", "fp16", "fixed8"], data=data,
                             epochs=3, batch_size=32, results_dir=None, verbose=False)
    acc = res.pivot("accuracy")
    assert [r["model"] for r in acc] == ["tiny", "simple"] and list(acc[0])[1:] == ["fp32", "fp16", "fixed8"]
    assert acc[1]["fixed8"] == pytest.approx(100 * res.get("simple", "fixed8")["accuracy"])
    diff = res.pivot("accuracy", baseline="fp32")
    assert diff[0]["fp32"] == 0 and diff[0]["fixed8"] == pytest.approx(acc[0]["fixed8"] - acc[0]["fp32"])
    assert res.pivot("size_bytes")[0]["fp16"] == pytest.approx(res.get("tiny", "fp16")["size_bytes"] / 1024)
    assert res.pivot("best_accuracy")[1]["fp32"] == pytest.approx(100 * res.get("simple", "fp32")["best_accuracy"])
    partial = lb.experiments.Results([r for r in res if (r["model"], r["precision"]) != ("simple", "fp32")])
    assert partial.pivot("accuracy", baseline="fp32")[1]["fp16"] is None  # no baseline, no difference
    with pytest.raises(ValueError, match="baseline 'bf16'"):
        res.pivot("accuracy", baseline="bf16")
    with pytest.raises(ValueError, match="no rows with loss 'mse'"):
        res.pivot("accuracy", loss_fn="mse")
    seed = acc.join([{"model": "tiny", "fixed": 1.5}], on="model", prefix="seed ")
    assert seed[0]["seed fixed"] == 1.5 and seed[1]["seed fixed"] is None and "seed fixed" in str(seed)
    ep = res.at_epochs((1, 3), metrics=("val_accuracy", "loss"))
    r = ep[4]
    assert (r["model"], r["precision"]) == ("simple", "fp16")
    h = res.get("simple", "fp16")["history"]
    assert r["val_accuracy @1"] == h["val_accuracy"][0] and r["loss @3"] == h["loss"][2]
    assert ep.rows[0]["train_s"] == res[0]["train_time_s"]
    both = res + lb.experiments.run({"tiny": Counting()}, "fp32", data=data, epochs=1, batch_size=32, loss="mse",
                                    results_dir=None, verbose=False)
    with pytest.raises(ValueError, match="several rows"):
        both.pivot("accuracy")
    assert both.pivot("accuracy", loss_fn="mse")[0]["fp32"] == pytest.approx(100 * both[-1]["accuracy"])


def test_partial_builders_have_stable_keys(data, tmp_path):
    import functools
    b = Counting()
    wide = functools.partial(b)  # same function, stable key across reruns
    _run(data, tmp_path, {"tiny": wide})
    _run(data, tmp_path, {"tiny": functools.partial(b)})
    assert b.calls == 2


def test_bad_inputs(data, tmp_path):
    run = lb.experiments.run
    kw = dict(data=data, results_dir=None, verbose=False)
    with pytest.raises(ValueError, match="unknown model 'nonet'"):
        run("nonet", "fp32", **kw)
    with pytest.raises(ValueError, match="unknown precision 'fp12'"):
        run(Counting(), "fp12", **kw)
    with pytest.raises(ValueError, match="a precision must be"):
        run(Counting(), [3], **kw)
    with pytest.raises(ValueError, match="epochs >= 1"):
        run(Counting(), "fp32", epochs=0, **kw)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        run(Counting(), "fp32", batch_size=1.5, **kw)
    with pytest.raises(ValueError, match="duplicate precision labels"):
        run(Counting(), ["fp32", "fp32"], **kw)
    with pytest.raises(ValueError, match="at least one model"):
        run([], "fp32", **kw)
    with pytest.raises(ValueError, match="unknown loss"):
        run(Counting(), "fp32", loss="hinge", **kw)
    with pytest.raises(ValueError, match="unknown optimizer"):
        run(Counting(), "fp32", optimizer="lbfgs", **kw)
    with pytest.raises(ValueError, match="learning_rate with an optimizer name"):
        run(Counting(), "fp32", optimizer=lb.optimizers.SGD(0.1), learning_rate=0.1, **kw)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        run(Counting(), "fp32", data="imagenet", results_dir=None, verbose=False)
    with pytest.raises(ValueError, match="data must be"):
        run(Counting(), "fp32", data=(1, 2, 3), results_dir=None, verbose=False)
    with pytest.raises(ValueError, match="train_limit"):
        run(Counting(), "fp32", train_limit=0, **kw)
    with pytest.raises(ValueError, match="must return an lb.Model"):
        run({"bad": lambda **k: "not a model"}, "fp32", **kw)

    def compiled(**k):
        m = Counting()(**k)
        m.compile("adam")
        return m
    with pytest.raises(ValueError, match="already compiled"):
        run(compiled, "fp32", **kw)
    (x, y), (xt, yt) = data
    with pytest.raises(ValueError, match="384 training images but 10 labels"):
        run(Counting(), "fp32", data=((x, y[:10]), (xt, yt)), results_dir=None, verbose=False)


# ----------------------------------------------------------------------------------- energy
def test_op_energy_table():
    # Horowitz 45 nm: fp32 3.7 + 0.9, fp16 1.1 + 0.4, int8 0.2 x + int32 0.1 +
    assert energy.op_energy() == pytest.approx(4.6)
    assert energy.op_energy(F.Float16(), F.Float16()) == pytest.approx(1.5)
    assert energy.op_energy(F.BFloat16(), F.BFloat16()) == pytest.approx(1.5)  # fp16 row: upper bound
    assert energy.op_energy(F.Float16(), F.Float16(), accum=F.Float32()) == pytest.approx(1.1 + 0.9)
    assert energy.op_energy(F.Fixed(8, msb=0), F.Fixed(8, msb=0)) == pytest.approx(0.3)
    assert energy.op_energy(F.Fixed(16, msb=0), F.Int(8)) == pytest.approx(0.8 + 0.1)  # wider operand
    assert energy.op_energy(F.Fixed(4, msb=0), F.Fixed(4, msb=0)) == pytest.approx(0.3)  # next wider row
    assert energy.op_energy(F.Binary(), F.Binary()) == pytest.approx(0.03 / 8 + 0.03)
    assert energy.op_energy(F.Binary(), None) == pytest.approx(4.6)  # float input: fp32 multiply
    assert energy.op_energy(F.Fixed(8, msb=0), F.Float16()) == pytest.approx(1.5)
    assert energy.op_energy(F.MXINT8(), F.MXINT8()) == pytest.approx(0.3)  # MX blocks count as their element
    assert energy.op_energy(F.MXFP4(), F.MXFP4()) == pytest.approx(1.5)


@pytest.mark.parametrize("precision, mac, bwd, wbits, abits", [
    ("fp32", 4.6, 4.6, 32, 32),
    ("fixed8", 0.2 + 0.1, 3.7 + 0.9, 8, 8),   # gradients stay fp32
    ("fp16", 1.1 + 0.4, 1.1 + 0.4, 16, 16),
    ("fw16bw32", 1.5, 4.6, 16, 16),
])
def test_energy_estimate_by_hand(precision, mac, bwd, wbits, abits):
    m = lb.Sequential([L.Dense(8, activation="relu", input_shape=(16,)), L.Dense(4)], seed=0)
    m.compile("sgd", precision=precision)
    B = 32
    macs = 16 * 8 + 8 * 4
    weight_bits = (16 * 8 + 8 * 4) * wbits + (8 + 4) * 32  # kernels at the format, biases fp32
    dram = weight_bits / 32 * 640 / B
    sram = ((16 + 8) * abits + (8 + 4) * abits) / 32 * 5   # each layer's input and output
    inference = macs * mac + dram + sram
    train = inference + 2 * macs * bwd + dram + 2 * sram + 2 * (macs + 12) * 640 / B
    est = energy.estimate(m, B)
    assert est["macs"] == macs and est["weight_bits"] == weight_bits
    assert est["inference_uJ"] == pytest.approx(inference * 1e-6)
    assert est["train_uJ"] == pytest.approx(train * 1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        energy.estimate(m, 0)


def test_energy_of_an_input_binarised_by_binact():
    # layer 1: binary kernel, fp32 input -> fp32 multiply-adds; layer 2 reads BinAct's
    # +-1 output with a binary kernel -> XNOR-popcount, and its input costs 1 bit of SRAM
    m = lb.Sequential([L.Dense(8, weight_format=F.Binary(), input_shape=(16,)), L.BinAct(),
                       L.Dense(4, weight_format=F.Binary())], seed=0)
    m.compile("sgd")
    B = 16
    inference = 128 * 4.6 + 32 * (0.03 / 8 + 0.03) + (160 * 1 + 12 * 32) / 32 * 640 / B \
        + (16 * 32 + 8 * 32) / 32 * 5 + (8 * 1 + 4 * 32) / 32 * 5
    assert energy.estimate(m, B)["inference_uJ"] == pytest.approx(inference * 1e-6)


def test_run_energy_matches_estimate(data):
    res = _run(data, None, Counting(), results_dir=None, keep_models=True, epochs=1)
    for (name, prec), model in res.models.items():
        row = res.get(name, prec)
        est = energy.estimate(model, 32)
        assert row["energy_inference_uJ"] == pytest.approx(est["inference_uJ"])
        assert row["energy_train_J"] == pytest.approx(est["train_uJ"] * 1e-6 * 384)


# ----------------------------------------------------------------------------------- plots
def _png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000


def test_plots_write_files(data, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    res = _run(data, None, {"tiny": Counting(), "simple": "simple_cnn"}, results_dir=None, keep_models=True)
    mse = lb.experiments.run({"tiny": Counting()}, "fp32", data=data, epochs=2, batch_size=32, loss="mse",
                             results_dir=None, verbose=False)
    both = res + mse
    fig = lb.plots.plot_curves(both, path=tmp_path / "curves.png")
    assert len(fig.axes) == 4 and "CPU:" in fig._suptitle.get_text()
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"fp32 (CE)", "fixed8 (CE)", "fp32 (mse)"}
    fig = lb.plots.plot_bars(res, metrics=("accuracy", "size_bytes", "energy_inference_uJ", "epoch_time_s"),
                             path=tmp_path / "bars.png")
    assert "estimate" in fig.axes[2].get_title()
    assert len(fig.axes[0].patches) == 4  # 2 models x 2 precisions
    models = {k: m for k, m in res.models.items() if k[0] == "tiny"}
    fig = lb.plots.plot_weight_histograms(models, path=tmp_path / "hist.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert "fp32" in titles[0] and "Fixed(8, msb" in titles[1]
    for name in ("curves.png", "bars.png", "hist.png"):
        assert _png(tmp_path / name), name
    plt.close("all")
    _, latent, quant, fmt = lb.plots.latent_and_quantized(models[("tiny", "fixed8")], 1)
    assert isinstance(fmt, F.Fixed) and np.unique(quant).size <= 256 and latent.shape == quant.shape
    np.testing.assert_array_equal(quant, fmt.quantize(latent))
    with pytest.raises(ValueError, match="unknown metrics"):
        lb.plots.plot_bars(res, metrics=("speed",))
    with pytest.raises(TypeError, match="expected lb.experiments.Results"):
        lb.plots.plot_curves([1, 2])
    with pytest.raises(ValueError, match="no Conv2D / Dense layer named 'conv9'"):
        lb.plots.plot_weight_histograms(models, layer="conv9")
    with pytest.raises(ValueError, match="out of range"):
        lb.plots.plot_weight_histograms(models, layer=7)
