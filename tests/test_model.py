"""Model API: optimizers and schedules against their update rules, determinism,
initialisers, weights I/O, callbacks, bad input, GIL release."""
import os
import threading
import time

import numpy as np
import pytest

import lowbit as lb

L = lb.layers


def dense_model(seed=0, units=3, features=4):
    m = lb.Sequential([L.Dense(units, input_shape=(features,))], seed=seed)
    return m


def np_updates(name, cfg, w, grads):
    """The update rules written out in numpy (float64), applied for each gradient."""
    w = w.astype(np.float64)
    s1, s2 = np.zeros_like(w), np.zeros_like(w)
    lr, wd = cfg["learning_rate"], cfg.get("weight_decay", 0.0)
    for t, g in enumerate(grads, 1):
        g = g + wd * w
        if name == "sgd":
            mu = cfg.get("momentum", 0.0)
            s1 = mu * s1 + g
            w = w - lr * ((g + mu * s1) if cfg.get("nesterov") else s1)
        elif name == "adam":
            b1, b2, eps = cfg.get("beta_1", .9), cfg.get("beta_2", .999), cfg.get("epsilon", 1e-7)
            s1 = b1 * s1 + (1 - b1) * g
            s2 = b2 * s2 + (1 - b2) * g * g
            w = w - lr * (s1 / (1 - b1 ** t)) / (np.sqrt(s2 / (1 - b2 ** t)) + eps)
        elif name == "adadelta":
            rho, eps = cfg.get("rho", .95), cfg.get("epsilon", 1e-7)
            s1 = rho * s1 + (1 - rho) * g * g
            u = g * np.sqrt(s2 + eps) / np.sqrt(s1 + eps)
            s2 = rho * s2 + (1 - rho) * u * u
            w = w - lr * u
        elif name == "rmsprop":
            rho, eps = cfg.get("rho", .9), cfg.get("epsilon", 1e-7)
            s1 = rho * s1 + (1 - rho) * g * g
            w = w - lr * g / (np.sqrt(s1) + eps)
    return w


@pytest.mark.parametrize("opt,cfg", [
    (lb.optimizers.SGD, dict(learning_rate=0.1)),
    (lb.optimizers.SGD, dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-2)),
    (lb.optimizers.SGD, dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    (lb.optimizers.Adam, dict(learning_rate=0.01)),
    (lb.optimizers.Adam, dict(learning_rate=0.01, weight_decay=1e-3, epsilon=1e-8)),
    (lb.optimizers.Adadelta, dict(learning_rate=1.0)),
    (lb.optimizers.RMSprop, dict(learning_rate=0.01)),
])
def test_optimizer_matches_update_rule(opt, cfg, rng):
    m = dense_model()
    m.compile(opt(**cfg), "mse")
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    w0 = m.get_weights()
    grads = []
    for _ in range(3):  # gradients at the engine's own iterates, one full batch per step
        _, g = m.compute_gradients(x, y)
        grads.append([a.astype(np.float64) for a in g])
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for i in range(2):
        ref = np_updates(opt.name, cfg, w0[i], [g[i] for g in grads])
        np.testing.assert_allclose(m.get_weights()[i], ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("sched,expect", [
    (lb.optimizers.StepDecay(0.1, step_size=2, gamma=0.5), [0.1, 0.1, 0.05, 0.05, 0.025]),
    (lb.optimizers.MultiStepDecay(0.1, milestones=[1, 3], gamma=0.1), [0.1, 0.01, 0.01, 0.001, 0.001]),
    (lb.optimizers.ExponentialDecay(0.1, gamma=0.5), [0.1, 0.05, 0.025, 0.0125, 0.00625]),
    (lb.optimizers.CosineDecay(0.1, t_max=4, min_lr=0.0), [0.1, 0.05 * (1 + np.sqrt(0.5)), 0.05, 0.05 * (1 - np.sqrt(0.5)), 0.0]),
])
def test_schedules(sched, expect, rng):
    m = dense_model()
    m.compile(lb.optimizers.SGD(sched), "mse")
    x = rng.normal(size=(4, 4)).astype(np.float32)
    h = m.fit(x, rng.normal(size=(4, 3)).astype(np.float32), batch_size=4, epochs=5, verbose=0)
    np.testing.assert_allclose(h.history["learning_rate"], expect, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([sched(e) for e in range(5)], expect, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sched", [
    lb.optimizers.CosineDecay(0.1, t_max=2, min_lr=0.01, per_step=True),
    lb.optimizers.ExponentialDecay(0.1, gamma=0.25, per_step=True),
])
def test_per_step_schedule_sets_the_rate_before_every_step(sched, rng):
    """4 steps per epoch, 2 epochs: step k of epoch e runs at sched(e + k/4). Reference:
    one batch per fit call at that constant rate (plain SGD keeps no state)."""
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.normal(size=(16, 3)).astype(np.float32)
    m = dense_model()
    m.compile(lb.optimizers.SGD(sched), "mse")
    w0 = m.get_weights()
    h = m.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    ref = dense_model()
    ref.set_weights(w0)
    rates = [sched(e + k / 4) for e in range(2) for k in range(4)]
    for i, lr in enumerate(rates):
        ref.compile(lb.optimizers.SGD(lr), "mse")
        ref.fit(x[4 * (i % 4):4 * (i % 4 + 1)], y[4 * (i % 4):4 * (i % 4 + 1)], batch_size=4, epochs=1,
                shuffle=False, verbose=0)
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert len(set(rates)) > 2 and rates[1] != sched(0)  # the rate really moves within an epoch
    np.testing.assert_allclose(h.history["learning_rate"], [rates[3], rates[7]], rtol=1e-6)


def test_schedule_per_step_flag_is_checked():
    with pytest.raises(TypeError, match="per_step"):
        lb.optimizers.CosineDecay(0.1, t_max=2, per_step="yes")
    assert lb.optimizers.CosineDecay(0.1, t_max=4)(1.9) == lb.optimizers.CosineDecay(0.1, t_max=4)(1)


def _small_cnn(seed):
    return lb.Sequential([
        L.Conv2D(4, 3, activation="relu", input_shape=(1, 8, 8)), L.BatchNormalization(), L.MaxPooling2D(2),
        L.Dropout(0.25), L.Flatten(), L.Dense(10, activation="softmax")], seed=seed)


def test_same_seed_same_data_bit_identical(rng):
    x = rng.uniform(size=(300, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    runs = []
    for _ in range(2):
        m = _small_cnn(seed=7)
        m.compile(lb.optimizers.Adam(1e-2), metrics=["accuracy"])
        h = m.fit(x, y, batch_size=32, epochs=2, seed=11, verbose=0)
        runs.append((m.get_weights(), h.history["loss"]))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]
    m = _small_cnn(seed=7)  # a different fit seed changes the shuffles and masks
    m.compile(lb.optimizers.Adam(1e-2))
    m.fit(x, y, batch_size=32, epochs=2, seed=12, verbose=0)
    assert not np.array_equal(m.get_weights()[0], runs[0][0][0])


def test_initializers_statistics():
    big = (256, 512)
    m = lb.Sequential([L.Dense(512, kernel_initializer="glorot_uniform", input_shape=(256,))], seed=1)
    k = m.get_weights()[0]
    lim = np.sqrt(6 / (256 + 512))
    assert k.shape == big and np.abs(k).max() <= lim and np.abs(k).max() > 0.99 * lim
    assert k.var() == pytest.approx(lim ** 2 / 3, rel=0.03)
    m = lb.Sequential([L.Conv2D(64, 3, kernel_initializer="he_normal", input_shape=(32, 8, 8))], seed=1)
    k = m.get_weights()[0]
    assert k.std() == pytest.approx(np.sqrt(2 / (32 * 9)), rel=0.03)
    assert np.abs(k).max() <= 2 * np.sqrt(2 / (32 * 9)) / 0.8796 + 1e-6  # truncated at 2 sigma
    m = lb.Sequential([L.Dense(100, kernel_initializer="torch", bias_initializer="torch", input_shape=(400,))])
    k, b = m.get_weights()
    assert np.abs(k).max() <= 0.05 and np.abs(b).max() <= 0.05 and np.abs(b).max() > 0.04
    a = lb.models.lenet(seed=3).get_weights()
    b = lb.models.lenet(seed=3).get_weights()
    c = lb.models.lenet(seed=4).get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_reference_models():
    m = lb.models.lenet()
    assert m.count_params() == 369_174
    shapes = [w.shape for w in m.get_weights()]
    assert shapes[0] == (32, 1, 5, 5) and shapes[4] == (1200, 256)
    s = lb.models.simple_cnn()
    assert s.layers[2].get_config()["name"].startswith("flatten")
    assert s.count_params() == 12 * 9 + 12 + 2028 * 10 + 10
    lines = []
    m.summary(print_fn=lines.append)
    assert "369,174" in lines[0]


def test_save_and_load_weights_atomically(tmp_path, rng):
    m = _small_cnn(seed=1)
    m.compile("adam")
    x = rng.uniform(size=(64, 1, 8, 8)).astype(np.float32)
    m.fit(x, rng.integers(0, 10, 64), batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "w.npz"
    m.save_weights(path)
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]  # no temporary left behind
    m2 = _small_cnn(seed=2)
    m2.load_weights(path)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)  # running statistics included
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        m2.load_weights(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        m2.save_weights(tmp_path / "missing_dir" / "w.npz")
    other = lb.models.lenet()
    with pytest.raises(ValueError, match="expected"):
        other.load_weights(path)


def test_history_callbacks_and_progress_bar(rng, capsys):
    x = rng.uniform(size=(100, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 100)
    m = _small_cnn(seed=0)
    m.compile(lb.optimizers.SGD(1e-9), metrics=["accuracy"])
    seen = []
    cb = lb.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append((e, sorted(logs))))
    stop = lb.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=1.0)
    h = m.fit(x, y, batch_size=10, epochs=5, validation_data=(x, y), callbacks=[cb, stop], verbose=1)
    assert len(h.history["loss"]) == 2  # nothing improves by 1.0: stopped after patience
    assert set(h.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time"}
    assert seen[0][0] == 0 and "val_accuracy" in seen[0][1]
    assert "epoch 1/5" in capsys.readouterr().err  # tqdm writes to stderr


def test_fit_releases_the_gil(rng):
    (x, y), _ = lb.datasets.fashion_mnist()
    m = lb.models.lenet(seed=0)
    m.compile("adam")
    ticks = []
    t = threading.Thread(target=lambda: m.fit(x[:3000], y[:3000], batch_size=100, epochs=1, verbose=0))
    t0 = time.perf_counter()
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    assert time.perf_counter() - t0 > 0.05
    assert len(ticks) > 20  # the main thread kept running while C++ trained


def test_digits_trains_quickly():
    pytest.importorskip("sklearn")
    (x, y), (xt, yt) = lb.datasets.digits()
    m = lb.models.simple_cnn(input_shape=(1, 8, 8), seed=0)
    m.compile(lb.optimizers.Adam(3e-3), metrics=["accuracy"])
    m.fit(x, y, batch_size=32, epochs=15, verbose=0)
    assert m.evaluate(xt, yt)["accuracy"] > 0.9


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(rng):
    m = lb.models.lenet(seed=0)
    m.compile("adam")
    x = rng.uniform(size=(4, 1, 28, 28)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match="rank"):
        m.fit(x[:, 0], y, verbose=0)
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        m.fit(np.zeros((4, 3, 28, 28), np.float32), y, verbose=0)
    bad = x.copy()
    bad[1, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.fit(bad, y, verbose=0)
    bad[2, 0, 0, 0], bad[3, 0, 27, 27] = np.inf, -np.inf  # counted without a temporary array
    with pytest.raises(ValueError, match="found 3 NaN/inf entries"):
        m.predict(bad)
    big = x.astype(np.float64)
    big[0, 0, 1, 1] = 1e39  # beyond float32: inf
    with pytest.raises(ValueError, match="found 1 NaN/inf"):
        m.predict(big)
    with pytest.raises(ValueError, match="labels"):
        m.fit(x, np.array([0, 1, 2, 10]), verbose=0)
    with pytest.raises(ValueError, match="labels"):
        m.evaluate(x, np.array([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="4 samples but y has 3"):
        m.fit(x, y[:3], verbose=0)
    with pytest.raises(TypeError, match="dtype"):
        m.fit(np.full((4, 1, 28, 28), "a"), y, verbose=0)
    with pytest.raises(ValueError, match="loss"):
        m.compile("adam", loss="hinge")
    with pytest.raises(ValueError, match="optimizer"):
        m.compile("adamw")
    with pytest.raises(ValueError, match="padding"):
        L.Conv2D(4, 3, padding="full")
    with pytest.raises(ValueError, match="filters"):
        L.Conv2D(0, 3)
    with pytest.raises(ValueError, match="activation"):
        L.Dense(3, activation="gelu")
    with pytest.raises(ValueError, match="Flatten"):
        lb.Sequential([L.Dense(3, input_shape=(1, 4, 4))]).build()
    with pytest.raises(ValueError, match="kernel extent"):
        lb.Sequential([L.Conv2D(3, 7, input_shape=(1, 4, 4))]).build()
    with pytest.raises(ValueError, match="groups"):
        lb.Sequential([L.Conv2D(3, 3, groups=2, input_shape=(3, 8, 8))]).build()
    with pytest.raises(ValueError, match="expects shape"):
        m.set_weights([np.zeros((2, 2), np.float32)] + m.get_weights()[1:])
    with pytest.raises(ValueError, match="learning_rate"):
        lb.optimizers.SGD(learning_rate=-1)
    with pytest.raises(FloatingPointError, match="diverged"):
        d = dense_model()
        d.compile(lb.optimizers.SGD(1e30), "mse")
        d.fit(rng.normal(size=(8, 4)) * 1e10, rng.normal(size=(8, 3)), batch_size=8, epochs=3, verbose=0)
    with pytest.raises(ValueError, match="compile"):
        lb.models.lenet().fit(x, y, verbose=0)


def test_dtype_conversion_rule(rng):
    m = dense_model()
    m.compile("sgd", "mse")
    x64 = rng.normal(size=(5, 4))                       # float64 -> float32
    xi = rng.integers(-3, 3, size=(5, 4))               # ints -> float32
    xf = np.asfortranarray(x64.astype(np.float32))      # non-contiguous -> contiguous copy
    y = rng.normal(size=(5, 3))
    ref = m.predict(x64.astype(np.float32))
    np.testing.assert_array_equal(m.predict(x64), ref)
    np.testing.assert_array_equal(m.predict(xf), ref)
    assert m.predict(xi).dtype == np.float32
    assert np.isfinite(m.evaluate(x64, y)["loss"])
    with pytest.raises(ValueError, match="whole class numbers"):
        lb.model.as_target(np.array([0.5, 1.0]))


def test_topology_lists_every_layer_after_its_inputs():
    L = lb.layers
    x = lb.Input((3, 8, 8))
    h = L.Conv2D(4, 3, padding="same", name="c1")(x)
    a = L.Conv2D(4, 3, padding="same", name="c2")(h)
    b = L.Conv2D(4, 1, name="short")(h)
    y = L.Dense(2, name="out")(L.Flatten()(L.Add(name="sum")([a, b])))
    model = lb.Model(x, y)
    nodes, output = model.topology()
    names = [layer.name for layer, _ in nodes]
    assert nodes[0][1] == [] and output == len(nodes) - 1 and names[output] == "out"
    for i, (_, inputs) in enumerate(nodes):
        assert all(j < i for j in inputs)
    add = names.index("sum")
    assert sorted(names[j] for j in nodes[add][1]) == ["c2", "short"]
    assert {n for n in names[1:]} == {layer.name for layer in model.layers}
    with pytest.raises(ValueError, match="not built"):
        lb.Sequential([L.Dense(2)]).topology()


def test_rebuild_keeps_quantizer_states_of_unchanged_layers():
    """An Int activation's running range (tracked in training, used by predict) survives
    a graph rebuild (progressive quantization rebuilds after freezing or re-formatting a
    layer); a layer whose formats change starts afresh."""
    L = lb.layers
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    m = lb.Sequential([L.Conv2D(4, 3, activation="relu", input_shape=(1, 8, 8), name="c",
                                input_format=lb.formats.Int(6)), L.Flatten(),
                       L.Dense(3, input_format=lb.formats.Int(4), weight_format=lb.formats.Int(4), name="d")])
    m.compile("adam")
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before = m.predict(x[:7])  # 7 samples: their own max |x| would give another grid
    m.layers[0].trainable = False
    m._rebuild()
    np.testing.assert_array_equal(m.predict(x[:7]), before)
    m.layers[0].input_format = lb.formats.Int(5)  # new format: its range is tracked anew
    m._rebuild()
    ranges = [st[3] for layer, nodes in m._layers for n in nodes for st in m._graph.get_quant_state(n)
              if layer.name == "c" and st[3] >= 0]
    assert ranges == []
    assert not np.array_equal(m.predict(x[:7]), before)


def test_calibrate_keeps_quantizer_states_of_layers_it_does_not_calibrate():
    """calibrate() runs a float graph and rebuilds the quantized one: layers whose MSBs it
    chose start afresh, the others keep their states (here: Int input's running range)."""
    L = lb.layers
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 256)
    m = lb.Sequential([L.Conv2D(4, 3, activation="relu", input_shape=(1, 8, 8), name="c"), L.Flatten(),
                       L.Dense(3, input_format=lb.formats.Int(4), name="d")])
    m.compile("adam", precision=lb.Precision(weight=lb.formats.Fixed(8, msb="auto"), exempt_last=True))
    m.fit(x, y, epochs=1, batch_size=32, verbose=0)  # calibrates, then tracks c's MSB and d's range

    def states(name):
        return [st for layer, nodes in m._layers if layer.name == name for n in nodes
                for st in m._graph.get_quant_state(n)]
    ranges = [st[3] for st in states("d")]
    assert max(ranges) > 0
    assert any(st[0] != -1000 for st in states("c"))
    m.calibrate(x[:64])
    assert [st[3] for st in states("d")] == ranges
    assert all(st[0] == -1000 for st in states("c"))  # the tracked MSBs: calibrated anew
