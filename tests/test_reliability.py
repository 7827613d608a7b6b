"""Reliability: diverging runs stop with FloatingPointError and the weights from before
the step; a model used from several threads is serialised; bad weights files raise
ValueError naming the file and the problem and leave the model untouched."""
import threading
import time
import zipfile

import numpy as np
import pytest

import lowbit as lb

L = lb.layers
F = lb.formats


def dense(seed=0):
    return lb.Sequential([L.Dense(3, input_shape=(4,))], seed=seed)


def trained_on(batches, x, y, opt, seed=0):
    """The weights after training on the first `batches` batches of 2 samples, in order."""
    m = dense(seed)
    m.compile(opt(), "mse")
    if batches:
        m.fit(x[:2 * batches], y[:2 * batches], batch_size=2, shuffle=False, verbose=0)
    return m.get_weights()


# ---------------------------------------------------------------- divergence
@pytest.mark.parametrize("case", ["loss", "gradients", "update"])
def test_divergence_stops_with_the_weights_from_before_the_step(case, rng):
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    opt = lambda: lb.optimizers.Adam(0.01)  # noqa: E731
    if case == "loss":          # batch 3: the outputs overflow float32, the loss is inf
        x[4:6] = 3e38
        bad, match = 3, "the loss became inf"
    elif case == "gradients":   # batch 2: finite loss (fp64), weight gradients of 1e60 overflow
        x[2:4] = 1e30
        bad, match = 2, "gradients became NaN or infinite"
    else:                       # batch 1: lr * gradient overflows float32 in the update
        y[:] = 100.0
        opt = lambda: lb.optimizers.SGD(3e38, momentum=0.5)  # noqa: E731
        bad, match = 1, "update made weights NaN or infinite"
    m = dense()
    m.compile(opt(), "mse")
    with pytest.raises(FloatingPointError, match=rf"{match} in epoch 1, batch {bad} of 4"):
        m.fit(x, y, batch_size=2, shuffle=False, verbose=0)
    expect = trained_on(bad - 1, x, y, opt)
    for a, b in zip(m.get_weights(), expect):
        np.testing.assert_array_equal(a, b)
    assert m._graph.step == bad - 1


def test_divergence_names_later_epochs_and_keeps_training_possible(rng):
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = rng.normal(size=(6, 3)).astype(np.float32)
    m = dense()
    m.compile(lb.optimizers.SGD(0.01), "mse")
    m.fit(x, y, batch_size=3, epochs=2, verbose=0)
    w = m.get_weights()
    bad = x.copy()
    bad[3:] = 3e38
    with pytest.raises(FloatingPointError, match=r"epoch 3, batch 2 of 2") as e:
        m.fit(bad, y, batch_size=3, shuffle=False, verbose=0)
    assert isinstance(e.value, lb.Diverged) and "diverged" in str(e.value)
    assert not np.array_equal(m.get_weights()[0], w[0])  # batch 1 of epoch 3 was applied
    assert all(np.isfinite(a).all() for a in m.get_weights())
    m.fit(x, y, batch_size=3, verbose=0)  # the model is still usable


def test_fp16_loss_scaling_still_skips_and_halves(rng):
    m = lb.Sequential([L.Dense(10, activation="softmax", input_shape=(4,))], seed=0)
    m.compile(lb.optimizers.SGD(0.1), precision="fp16")
    m._graph.set_loss_scaling(True, 2.0 ** 24, growth_interval=1000)
    x = (rng.normal(size=(64, 4)) * 100).astype(np.float32)
    w0 = m.get_weights()[0]
    m.fit(x, rng.integers(0, 10, 64), batch_size=64, epochs=1, verbose=0)  # no exception
    assert m._graph.skipped_steps >= 1 and m._graph.loss_scale < 2.0 ** 24
    np.testing.assert_array_equal(m.get_weights()[0], w0)


# ---------------------------------------------------------------- threads
def cnn(seed=0):
    return lb.Sequential([
        L.Conv2D(8, 3, activation="relu", input_shape=(1, 8, 8)), L.BatchNormalization(), L.MaxPooling2D(2),
        L.Dropout(0.25), L.Flatten(), L.Dense(10, activation="softmax")], seed=seed)


def data(n=1024, seed=0):
    r = np.random.default_rng(seed)
    return r.uniform(size=(n, 1, 8, 8)).astype(np.float32), r.integers(0, 10, n)


def test_predict_and_evaluate_while_fit_runs_in_a_thread():
    x, y = data()
    ref = cnn()
    ref.compile("adam")
    ref.fit(x, y, batch_size=16, epochs=2, verbose=0)
    m = cnn()
    m.compile("adam")
    errors = []

    def train():
        try:
            m.fit(x, y, batch_size=16, epochs=2, verbose=0)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=train)
    t.start()
    calls = 0
    while t.is_alive():
        p = m.predict(x[:64], batch_size=16)
        assert p.shape == (64, 10) and np.isfinite(p).all()
        np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
        assert np.isfinite(m.evaluate(x[:32], y[:32], batch_size=32)["loss"])
        assert all(np.isfinite(w).all() for w in m.get_weights())
        calls += 1
    t.join()
    assert not errors and calls > 0
    # inference between batches changes nothing the training uses
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_two_models_trained_in_two_threads_match_sequential_training():
    x, y = data(512)
    refs = []
    for s in (1, 2):
        r = cnn(s)
        r.compile(lb.optimizers.SGD(0.05, momentum=0.9))
        r.fit(x, y, batch_size=16, epochs=1, verbose=0)
        refs.append(r.get_weights())
    models = [cnn(1), cnn(2)]
    for m in models:
        m.compile(lb.optimizers.SGD(0.05, momentum=0.9))
    threads = [threading.Thread(target=m.fit, args=(x, y), kwargs=dict(batch_size=16, verbose=0)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m, ref in zip(models, refs):
        for a, b in zip(m.get_weights(), ref):
            np.testing.assert_array_equal(a, b)


def test_changes_during_fit_in_another_thread_are_refused(tmp_path):
    x, y = data(256)
    m = cnn()
    m.compile("adam")
    inside, release = threading.Event(), threading.Event()

    def hold(epoch, logs):
        if epoch == 0:
            inside.set()
            release.wait(60)

    t = threading.Thread(target=m.fit, args=(x, y), kwargs=dict(
        epochs=2, verbose=0, callbacks=[lb.callbacks.LambdaCallback(on_epoch_end=hold)]))
    t.start()
    try:
        assert inside.wait(60)
        w = m.get_weights()
        for call in (lambda: m.compile("sgd"), lambda: m.fit(x, y, verbose=0), lambda: m.set_weights(w),
                     lambda: m.save(tmp_path / "m.lowbit"), lambda: m.save_weights(tmp_path / "w.lowbit"),
                     lambda: m.load_weights(tmp_path / "w.lowbit"), lambda: m.compute_gradients(x[:4], y[:4]),
                     lambda: m.build((1, 8, 8))):
            with pytest.raises(RuntimeError, match="fit\\(\\) is running on model"):
                call()
        assert m.predict(x[:8]).shape == (8, 10)  # reading is fine
    finally:
        release.set()
        t.join()
    m.compile("sgd")  # allowed again once fit returned


def test_engine_refuses_changes_queued_during_an_epoch():
    x, y = data(2048)
    m = cnn()
    m.compile("sgd")
    t = threading.Thread(target=m.fit, args=(x, y), kwargs=dict(batch_size=2, verbose=0))
    t.start()
    try:
        deadline = time.monotonic() + 120
        while m._graph.step < 5:  # read-only calls run between batches
            assert t.is_alive() and time.monotonic() < deadline
        w = m.get_weights()[0]
        with pytest.raises(RuntimeError, match="fit\\(\\) is running"):
            m._graph.set_param(m._param_slots()[0][0], 0, w)  # past the Python guard
        assert m._graph.step < 1024  # the epoch was still running
    finally:
        t.join()


# ---------------------------------------------------------------- bad files
def saved(tmp_path, name="w.lowbit"):
    m = cnn(3)
    m.compile("adam")
    x, y = data(64)
    m.fit(x, y, batch_size=16, verbose=0)
    path = tmp_path / name
    m.save(path) if name.startswith("m") else m.save_weights(path)
    return m, path


def assert_refused(model, path, match, load="load_weights"):
    before = model.get_weights()
    with pytest.raises(ValueError, match=match) as e:
        getattr(model, load)(path) if load == "load_weights" else lb.load_model(path)
    assert str(path) in str(e.value)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)  # untouched


def test_truncated_corrupted_and_random_files_raise_value_error(tmp_path):
    _, path = saved(tmp_path)
    raw = path.read_bytes()
    target = cnn(4)
    for cut in (0, 3, 10, 100, len(raw) // 2, len(raw) - 30, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.lowbit"
        bad.write_bytes(raw[:cut])
        assert_refused(target, bad, "empty|not a lowbit file|truncated|corrupted")
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF  # inside an array: the member's checksum fails
    bad = tmp_path / "flipped.lowbit"
    bad.write_bytes(bytes(flipped))
    assert_refused(target, bad, "corrupted|truncated|disagrees")
    rnd = tmp_path / "random.bin"
    rnd.write_bytes(np.random.default_rng(0).bytes(5000))
    assert_refused(target, rnd, "not a lowbit file: expected a ZIP archive")
    for load in ("load_weights", "load_model"):
        assert_refused(target, bad, "corrupted|truncated|disagrees", load)
        assert_refused(target, rnd, "not a lowbit file", load)


def test_foreign_files_and_pickles_are_refused_without_running_code(tmp_path):
    target = cnn(4)
    npz = tmp_path / "foreign.npz"
    np.savez(npz, a=np.zeros(3), b=np.ones(2))
    assert_refused(target, npz, "not a lowbit file: no lowbit.json header")
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    assert_refused(target, npy, "single .npy array")
    marker = tmp_path / "ran"
    pkl = tmp_path / "evil.pkl"
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    pkl.write_bytes(pickle.dumps(Evil()))
    assert_refused(target, pkl, "pickle")
    assert not marker.exists()
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "hello")
    assert_refused(target, z, "no lowbit.json")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert_refused(target, folder, "is a folder")
    with pytest.raises(FileNotFoundError, match="nope"):
        target.load_weights(tmp_path / "nope.lowbit")
    with pytest.raises(FileNotFoundError, match="nope"):
        lb.load_model(tmp_path / "nope.lowbit")


def rewrite(path, out, header=None, members=None):
    """Copy a lowbit file with its header changed by `header(h)` and members replaced."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "lowbit.json" and header:
                import json
                h = json.loads(data)
                header(h)
                data = json.dumps(h).encode()
            if members and info.filename in members:
                data = members[info.filename]
            dst.writestr(info.filename, data)
        for name, data in (members or {}).items():
            if name not in src.namelist():
                dst.writestr(name, data)
    return out


def npy_bytes(a, allow_pickle=False):
    import io
    f = io.BytesIO()
    np.lib.format.write_array(f, a, allow_pickle=allow_pickle)
    return f.getvalue()


def test_wrong_version_tampered_and_mismatching_files(tmp_path):
    m, path = saved(tmp_path)
    target = cnn(4)
    assert_refused(target, rewrite(path, tmp_path / "v9.lowbit", lambda h: h.update(version=9)),
                   "format version 9 was written by a newer lowbit")
    assert_refused(target, rewrite(path, tmp_path / "v0.lowbit", lambda h: h.update(version="x")),
                   "corrupted header")
    assert_refused(target, rewrite(path, tmp_path / "fmt.lowbit", lambda h: h.update(format="keras")),
                   "header format 'keras'")
    assert_refused(target, rewrite(path, tmp_path / "json.lowbit", members={"lowbit.json": b"{not json"}),
                   "corrupted header")
    w0 = m.get_weights()[0]
    assert_refused(target, rewrite(path, tmp_path / "shape.lowbit", members={"w0000.npy": npy_bytes(w0[:2])}),
                   "disagrees with the listing")
    obj = npy_bytes(np.array([object()] * 2, dtype=object), allow_pickle=True)
    assert_refused(target, rewrite(path, tmp_path / "obj.lowbit", members={"w0000.npy": obj}),
                   "unsupported dtype|corrupted")
    nan = w0.copy()
    nan[0, 0, 0, 0] = np.nan
    assert_refused(target, rewrite(path, tmp_path / "nan.lowbit", members={"w0000.npy": npy_bytes(nan)}),
                   "NaN or infinite")
    assert_refused(target, rewrite(path, tmp_path / "extra.lowbit", members={"zzz.npy": npy_bytes(w0)}),
                   "not listed: zzz.npy")
    other = lb.Sequential([L.Dense(3, input_shape=(4,))])
    assert_refused(other, path, "holds 8 weight arrays, expected 2")
    same_count = lb.Sequential([
        L.Conv2D(4, 3, activation="relu", input_shape=(1, 8, 8)), L.BatchNormalization(), L.MaxPooling2D(2),
        L.Dropout(0.25), L.Flatten(), L.Dense(10, activation="softmax")])
    assert_refused(same_count, path, r"array w0000 \(conv2d_\d+ kernel\) has shape \(8, 1, 3, 3\), the model "
                                     r"expects \(4, 1, 3, 3\)")
    with pytest.raises(ValueError, match="lowbit-weights file"):
        lb.load_model(path)


def test_model_files_name_only_lowbit_classes(tmp_path):
    m, path = saved(tmp_path, "m.lowbit")
    bad = rewrite(path, tmp_path / "evil.lowbit", lambda h: h["model"]["sequential"][0].update(
        {"__object__": "os.system", "kwargs": {"command": "touch " + str(tmp_path / "ran")}}))
    with pytest.raises(ValueError, match="unknown class 'os.system'"):
        lb.load_model(bad)
    assert not (tmp_path / "ran").exists()
    bad = rewrite(path, tmp_path / "arg.lowbit", lambda h: h["model"]["sequential"][0]["kwargs"].update(filters=-3))
    with pytest.raises(ValueError, match="filters"):
        lb.load_model(bad)
    target = cnn(4)
    target.load_weights(path)  # a model file holds weights too
    for a, b in zip(target.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_cifar_pickle_with_a_huge_memo_index_is_refused_without_allocating(tmp_path):
    """Found by scripts/fuzz_readers.py: a 12-byte python batch whose LONG_BINPUT index
    made the C unpickler grow its memo table to gigabytes."""
    import tracemalloc
    bomb = b"\x80\x02}q\x00r" + (175399797).to_bytes(4, "little") + b"."
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="data_batch_1.*memo index 175399797"):
            lb.datasets.cifar10(root=tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20  # peak bytes
    finally:
        tracemalloc.stop()


def test_backward_before_any_forward_is_a_value_error():
    m = lb.models.lenet()
    m.compile("adam", "categorical_crossentropy")  # builds the engine graph
    g = m._graph
    with pytest.raises(ValueError, match="call forward first"):
        g.backward(np.zeros((2, 10), np.float32), [2, 1, 28, 28])
    with pytest.raises(ValueError, match="call forward_inputs first"):
        g.backward_inputs(np.zeros((2, 10), np.float32))
