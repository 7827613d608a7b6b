"""Model.profile: per-layer inference time measured inside whole predict calls."""
import numpy as np
import pytest

import lowbit as lb
from lowbit import layers as L


@pytest.fixture(scope="module")
def cnn():
    m = lb.Sequential([L.Conv2D(64, 3, padding="same", activation="relu", input_shape=(64, 32, 32)),
                       L.Activation("relu"), L.Flatten(), L.Dense(10)], seed=0)
    m.build()
    return m


def test_profile_times_every_layer_inside_one_predict_call(cnn):
    x = np.random.default_rng(1).standard_normal((8, 64, 32, 32)).astype(np.float32)
    before = cnn.predict(x)
    p = cnn.profile(x, repeat=5)
    assert [r["layer"] for r in p] == [layer.name for layer in cnn.layers]
    assert [r["kind"] for r in p] == ["Conv2D", "Activation", "Flatten", "Dense"]
    assert p[0]["ops"][0] == "conv2d" and p[0]["output_shape"] == (64, 32, 32) and p[3]["output_shape"] == (10,)
    assert all(r["ms"] >= 0 for r in p) and p.batch == 8 and p.repeat == 5
    # in every call each layer's time is part of the call's: so are their medians
    assert all(r["ms"] <= p.call_ms for r in p) and p.overhead_ms >= 0
    # the time goes to the layer that spends it: a 3x3 conv 64->64 is 576 MACs per output
    # value (~30x a ReLU here), the ReLU after it one compare. One thread: on a shared
    # machine an OpenMP barrier in any op can wait for a descheduled thread
    threads = lb._core.build_info()["openmp_threads"]
    lb._core.set_num_threads(1)
    try:
        q = cnn.profile(x, repeat=9).by_layer()
    finally:
        lb._core.set_num_threads(threads)
    assert q[cnn.layers[0].name] > 5 * q[cnn.layers[1].name], q
    np.testing.assert_array_equal(cnn.predict(x), before)  # the timing leaves no trace
    out, seconds = cnn._graph.predict_timed(x, 8)
    np.testing.assert_array_equal(out, before)
    nodes = [n for _, ns in cnn._layers for n in ns]
    assert len(seconds) == max(nodes) + 1 and all(s >= 0 for s in seconds)
    assert sum(seconds[n] for n in nodes) == pytest.approx(sum(seconds))  # the input node takes no time


def test_profile_table_and_plot(cnn, tmp_path):
    p = cnn.profile(batch_size=4, repeat=2)  # a random batch of 4
    s = str(p)
    assert all(layer.name in s for layer in cnn.layers)
    assert "per-call overhead" in s and "predict" in s and p.cpu in s and "batch 4" in s
    ax = p.plot(top=2, path=tmp_path / "profile.png")
    assert len(ax.patches) == 2 and (tmp_path / "profile.png").stat().st_size > 0


def test_profile_of_a_dag_covers_every_node():
    m = lb.models.resnet20((1, 8, 8), seed=0, precision="int8")
    p = m.profile(batch_size=2, repeat=1)
    g = m._graph
    assert [r["layer"] for r in p] == [layer.name for layer in m.layers]
    assert [r["ops"] for r in p] == [[g.node_kind(n) for n in nodes] for _, nodes in m._layers]
    kinds = {op for r in p for op in r["ops"]}
    assert {"add", "conv2d"} <= kinds, kinds
    assert all(r["ms"] >= 0 for r in p) and p.overhead_ms >= 0


def test_profile_rejects_bad_arguments(cnn):
    with pytest.raises(ValueError, match="repeat"):
        cnn.profile(repeat=0)
    with pytest.raises(ValueError, match="flush_mb"):
        cnn.profile(flush_mb=-1)
    with pytest.raises(ValueError, match="batch_size"):
        cnn.profile(batch_size=0)
    with pytest.raises(ValueError):
        cnn.profile(np.zeros((2, 3, 32, 32), np.float32))  # 3 channels, the model takes 64
    with pytest.raises(ValueError, match="not built"):
        lb.Sequential([L.Dense(3)]).profile()
