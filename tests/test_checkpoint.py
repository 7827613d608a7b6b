"""Whole-model save and exact resume: model.save / lb.load_model, fit(initial_epoch=),
ModelCheckpoint. Training 2 epochs in one go and 1 epoch, save, load (in a new process),
1 more epoch must give bit-identical weights."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import lowbit as lb

L = lb.layers
F = lb.formats


def data(n=256, seed=0):
    r = np.random.default_rng(seed)
    return r.uniform(size=(n, 1, 8, 8)).astype(np.float32), r.integers(0, 10, n)


def cnn(seed=5):
    return lb.Sequential([
        L.Conv2D(8, 3, activation="relu", input_shape=(1, 8, 8)), L.BatchNormalization(), L.MaxPooling2D(2),
        L.Dropout(0.25), L.Flatten(), L.Dense(16, activation="relu"), L.Dropout(0.1),
        L.Dense(10, activation="softmax")], name="resume_cnn", seed=seed)


def compiled(precision=None, opt=None):
    m = cnn()
    m.compile(opt or lb.optimizers.Adam(lb.optimizers.StepDecay(3e-3, step_size=1, gamma=0.5)),
              metrics=["accuracy"], precision=precision)
    return m


def assert_same_weights(a, b):
    wa, wb = a.get_weights() if hasattr(a, "get_weights") else a, b.get_weights() if hasattr(b, "get_weights") else b
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


# The resumed half runs in a fresh interpreter: nothing but the file carries the state.
RESUME = """
import sys, numpy as np, lowbit as lb
path, out, mode = sys.argv[1:4]
r = np.random.default_rng(0)
x, y = r.uniform(size=(256, 1, 8, 8)).astype(np.float32), r.integers(0, 10, 256)
m = lb.load_model(path)
if mode == "initial_epoch":
    m.fit(x, y, batch_size=32, epochs=2, initial_epoch=1, verbose=0)
else:
    m.fit(x, y, batch_size=32, epochs=1, verbose=0)
np.savez(out, *m.get_weights())
"""


@pytest.mark.parametrize("mode", ["continue", "initial_epoch"])
def test_two_epochs_equal_one_save_load_in_new_process_one(tmp_path, mode):
    x, y = data()
    ref = compiled()
    ref.fit(x, y, batch_size=32, epochs=2, verbose=0)
    m = compiled()
    m.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = tmp_path / "half.lowbit"
    m.save(path)
    assert sorted(os.listdir(tmp_path)) == ["half.lowbit"]  # atomic: no temporary left
    out = tmp_path / "resumed.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", RESUME, str(path), str(out), mode], check=True, env=env, timeout=300)
    with np.load(out) as z:
        assert_same_weights([z[f"arr_{i}"] for i in range(len(z.files))], ref)


@pytest.mark.parametrize("precision,opt", [
    ("fp16", lb.optimizers.SGD(0.05, momentum=0.9, nesterov=True)),     # dynamic loss scaler state
    ("fixed8", lb.optimizers.RMSprop(1e-3)),                          # calibrated MSBs, tracked state
    ("int8", lb.optimizers.Adadelta(1.0)),                            # running activation ranges
    (lb.Precision(F.Int(8, per_channel=True), F.Int(8, symmetric=False)), lb.optimizers.Adam(1e-3)),  # (min, max)
    (lb.Precision(F.Fixed(8, msb=1, rounding="stochastic"), F.Fixed(8, msb=2)), lb.optimizers.Adam(1e-3)),
    ("binary", lb.optimizers.Bop(fp_optimizer=lb.optimizers.Adam(1e-3))),
])
def test_exact_resume_for_precisions_and_optimizers(tmp_path, precision, opt):
    import copy
    x, y = data(128)
    ref = compiled(precision, copy.deepcopy(opt))
    ref.fit(x, y, batch_size=32, epochs=2, validation_data=(x[:64], y[:64]), verbose=0)
    m = compiled(precision, copy.deepcopy(opt))
    m.fit(x, y, batch_size=32, epochs=1, validation_data=(x[:64], y[:64]), verbose=0)
    m.save(tmp_path / "m.lowbit")
    r = lb.load_model(tmp_path / "m.lowbit")
    assert r._epochs_done == 1 and r._graph.step == m._graph.step
    assert r._graph.scaler_state == m._graph.scaler_state
    r.fit(x, y, batch_size=32, epochs=1, validation_data=(x[:64], y[:64]), verbose=0)
    assert_same_weights(r, ref)
    np.testing.assert_array_equal(r.predict(x), ref.predict(x))


def test_save_records_architecture_precision_and_state(tmp_path):
    x, y = data(64)
    m = compiled("fixed8")
    m.fit(x, y, batch_size=32, seed=9, verbose=0)
    m.save(tmp_path / "m.lowbit")
    with zipfile.ZipFile(tmp_path / "m.lowbit") as z:
        h = json.loads(z.read("lowbit.json"))
        members = set(z.namelist())
    assert h["format"] == "lowbit-model" and h["version"] == lb.serial.VERSION
    assert [c["__object__"] for c in h["model"]["sequential"]][:2] == ["layers.Conv2D", "layers.BatchNormalization"]
    assert h["model"]["sequential"][0]["kwargs"]["filters"] == 8
    assert h["compile"]["precision"]["kwargs"]["name"] == "fixed8"
    assert h["compile"]["optimizer"]["__object__"] == "optimizers.Adam"
    assert h["training"] == {"epochs": 1, "step": 2, "fit_seed": 9, "calibrated": True, "optimizer_steps": 2,
                             "loss_scaler": [1.0, 0.0, 0.0]}
    trainable = len(m._param_slots(True))
    assert {f"opt_{p:04d}_{s}.npy" for p in range(trainable) for s in (0, 1)} <= members
    assert any(k.startswith("qmsb_") for k in members)
    r = lb.load_model(tmp_path / "m.lowbit")
    assert type(r) is lb.Sequential and r.name == "resume_cnn" and r.seed == m.seed
    assert [layer.name for layer in r.layers] == [layer.name for layer in m.layers]
    assert r._fit_seed == 9 and r._calibrated
    assert [f.msb for f in r.layers[0]._precision_formats.values()] == \
        [f.msb for f in m.layers[0]._precision_formats.values()]
    opt_m, opt_r = m._graph.optimizer_state(), r._graph.optimizer_state()
    assert opt_m[0] == opt_r[0] == 2
    for a, b in zip(sum(opt_m[1], []), sum(opt_r[1], [])):
        np.testing.assert_array_equal(a, b)


def test_functional_model_and_uncompiled_model_round_trip(tmp_path):
    inp = lb.Input((3, 8, 8))
    a = L.Conv2D(4, 3, padding="same", activation="relu", weight_format=F.Fixed(8, msb=0))(inp)
    b = L.Conv2D(4, 1, input_format="bf16")(inp)
    s = L.Add()([a, b])
    c = L.Concatenate()([s, L.ZeroPadding2D(((0, 0), (0, 0)))(a)])
    out = L.Dense(5, activation="softmax")(L.Flatten()(L.QuantizedReLU(3)(c)))
    m = lb.Model(inp, out, name="dag", seed=3)
    x = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    m.save(tmp_path / "dag.lowbit")
    r = lb.load_model(tmp_path / "dag.lowbit")
    assert type(r) is lb.Model and r._compiled is None
    np.testing.assert_array_equal(r.predict(x), m.predict(x))
    r.compile("sgd")
    r.fit(x, [0, 1, 2, 3], verbose=0)


def test_initial_epoch_sets_schedule_position_and_callbacks(rng=None):
    x, y = data(64)
    m = compiled()
    seen = []
    cb = lb.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append((e, logs["learning_rate"])))
    h = m.fit(x, y, batch_size=32, epochs=5, initial_epoch=3, verbose=0, callbacks=[cb])
    assert [e for e, _ in seen] == [3, 4] and len(h.history["loss"]) == 2
    assert [lr for _, lr in seen] == pytest.approx([3e-3 * 0.5 ** 3, 3e-3 * 0.5 ** 4])
    assert m._epochs_done == 5
    m.fit(x, y, batch_size=32, verbose=0, callbacks=[cb])  # continues with epoch 5
    assert seen[-1][0] == 5
    for bad in (-1, 6, 2.0, True):
        with pytest.raises(ValueError, match="initial_epoch"):
            m.fit(x, y, epochs=5, initial_epoch=bad, verbose=0)


def test_model_checkpoint(tmp_path):
    x, y = data(96)
    m = compiled()
    ck = lb.callbacks.ModelCheckpoint(tmp_path / "ck-{epoch:02d}-{val_loss:.3f}.lowbit")
    m.fit(x, y, batch_size=32, epochs=2, validation_data=(x[:32], y[:32]), verbose=0, callbacks=[ck])
    assert len(ck.saved) == 2 and ck.saved[0].endswith(".lowbit") and "ck-02-" in ck.saved[1]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in ck.saved)
    assert_same_weights(lb.load_model(ck.saved[-1]), m)
    # save_best_only: saved only when the monitored value improves
    best = lb.callbacks.ModelCheckpoint(tmp_path / "best.lowbit", monitor="val_loss", save_best_only=True)
    best.model = m
    for epoch, v in enumerate([1.0, 2.0, 0.5, 0.7]):
        best.on_epoch_end(epoch, {"val_loss": v})
    assert best.saved == [str(tmp_path / "best.lowbit")] * 2 and best.best == 0.5
    acc = lb.callbacks.ModelCheckpoint(tmp_path / "w-{epoch}.lowbit", monitor="val_accuracy", save_best_only=True,
                                       save_weights_only=True)
    acc.model = m
    for epoch, v in enumerate([0.5, 0.4, 0.6]):
        acc.on_epoch_end(epoch, {"val_accuracy": v})
    assert [os.path.basename(p) for p in acc.saved] == ["w-1.lowbit", "w-3.lowbit"]
    m.load_weights(acc.saved[-1])
    with pytest.raises(ValueError, match="'val_loss' is not among the epoch's logs"):
        m.fit(x, y, verbose=0, callbacks=[lb.callbacks.ModelCheckpoint(tmp_path / "x.lowbit", save_best_only=True)])
    with pytest.raises(ValueError, match="cannot fill in"):
        m.fit(x, y, verbose=0, callbacks=[lb.callbacks.ModelCheckpoint(tmp_path / "{nope}.lowbit")])
    with pytest.raises(ValueError, match="mode"):
        lb.callbacks.ModelCheckpoint(tmp_path / "x", mode="up")


def test_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    m = compiled()
    path = tmp_path / "m.lowbit"
    m.save(path)
    before = path.read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.lowbit"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        m.save(tmp_path / "no" / "m.lowbit")
