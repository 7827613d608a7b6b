"""NetAdapt (S1 Algorithm 1): filter pruning surgery, resources, latency table, adapt, resume."""
import json

import numpy as np
import pytest

import lowbit as lb
from lowbit import netadapt as na


@pytest.fixture(scope="module")
def data():
    (x, y), (xt, yt) = lb.datasets.fashion_mnist()
    return (x[:1200], y[:1200]), (xt[:300], yt[:300])


@pytest.fixture(scope="module")
def lenet(data):
    (x, y), _ = data
    m = lb.models.lenet(seed=0)
    m.compile(lb.optimizers.Adam(1e-3), metrics=["accuracy"])
    m.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return m


def _zeroed(model, j, keep):
    """The same network with the filters outside ``keep`` of kernel layer j silenced:
    kernel and bias (and a following batch norm's gamma and beta) set to zero, so after
    the ReLU they contribute exactly nothing - what the pruned network computes."""
    w = na._weights_by_layer(model)
    ks = na._kernel_positions(model)
    p, q = ks[j], ks[j + 1]
    drop = np.setdiff1d(np.arange(na.filters_of(model)[j]), keep)
    k = w[p][0]
    if k.ndim == 4:
        k[drop] = 0
    else:
        k[:, drop] = 0
    w[p][1][drop] = 0
    for between in range(p + 1, q):
        if w[between]:
            w[between][0][drop] = 0  # gamma
            w[between][1][drop] = 0  # beta
    z = na.with_filters(model, na.filters_of(model))
    z.set_weights([a for arrays in w for a in arrays])
    return z


@pytest.mark.parametrize("j", [0, 1, 2, 3])  # conv->conv, conv->flatten->dense, dense->dense, dense->classifier
def test_pruned_network_computes_the_kept_filters(lenet, data, j):
    _, (xt, _) = data
    width = na.filters_of(lenet)[j]
    keep = np.random.default_rng(j).choice(width, size=width // 2, replace=False)
    small = na.prune(lenet, j, keep)
    assert na.filters_of(small)[j] == width // 2
    assert small.count_params() < lenet.count_params()
    np.testing.assert_allclose(small.predict(xt[:20]), _zeroed(lenet, j, keep).predict(xt[:20]), rtol=1e-4, atol=1e-6)
    assert not np.allclose(small.predict(xt[:20]), lenet.predict(xt[:20]), atol=1e-4)


def test_pruning_copies_batch_norm_entries():
    m = lb.Sequential([lb.layers.Conv2D(6, 3, padding="same"), lb.layers.BatchNormalization(), lb.layers.ReLU(),
                       lb.layers.Conv2D(5, 3), lb.layers.Flatten(), lb.layers.Dense(3, activation="softmax")], seed=1)
    m.build((2, 6, 6))
    rng = np.random.default_rng(0)
    w = m.get_weights()
    w[2:6] = [rng.uniform(0.5, 2, 6).astype(np.float32) for _ in range(4)]  # gamma, beta, mean, var
    m.set_weights(w)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    keep = [0, 2, 3]
    small = na.prune(m, 0, keep)
    np.testing.assert_array_equal(small.get_weights()[2], w[2][keep])
    np.testing.assert_allclose(small.predict(x), _zeroed(m, 0, keep).predict(x), rtol=1e-4, atol=1e-6)


def test_macs_match_the_summary_of_the_pruned_network(lenet):
    small = na.prune(lenet, 1, range(20))
    assert na.resource_of(small) == small.summary(print_fn=None).totals["macs"]
    assert na.resource_of(lenet) == lenet.summary(print_fn=None).totals["macs"] == 4_796_744


def test_l2_norm_is_per_filter(lenet):
    w = lenet.get_weights()
    np.testing.assert_allclose(na._filter_norms(lenet, 0), np.linalg.norm(w[0].reshape(32, -1), axis=1), rtol=1e-6)
    np.testing.assert_allclose(na._filter_norms(lenet, 2), np.linalg.norm(w[4], axis=0), rtol=1e-6)


def test_latency_table_json_roundtrip(lenet, tmp_path):
    path = tmp_path / "lut.json"
    t = na.build_latency_table(lenet, steps=2, repeat=2, path=path, flush_mb=1, verbose=0)
    d = json.loads(path.read_text())
    assert d["format"] == "lowbit-latency-table/2" and d["repeat"] == 2 and d["statistic"] == "median"
    assert d["flush_mb"] == 1 and d["unit"] == "ms" and d["batch"] == 1
    assert d["timing"] == "in-network" and d["overhead_ms"] == t.overhead_ms >= 0
    assert [e["out_channels"] for e in d["layers"]] == [[16, 32], [24, 48], [128, 256], [42, 84], [10]]
    assert d["layers"][0]["in_channels"] == [1] and d["layers"][2]["in_channels"] == [24, 48]
    assert d["layers"][2]["segment"] == [layer.name for layer in lenet.layers[3:6]]  # pool, flatten, dense
    u = na.LatencyTable.load(path)
    assert u == t
    e = t.layers[1]
    env = np.maximum.accumulate(np.maximum.accumulate(np.asarray(e["ms"]), axis=0), axis=1)
    assert t.lookup(1, 16, 24) == pytest.approx(env[0][0])
    assert t.lookup(1, 24, 36) == pytest.approx(np.mean(env[:2, :2]))  # bilinear midway
    assert all(v > 0 for row in e["ms"] for v in row)
    # the envelope's top plus the per-call term
    assert t.predict(na.filters_of(lenet)) == pytest.approx(sum(np.max(x["ms"]) for x in t.layers) + t.overhead_ms)
    # a format-1 table (segments timed alone as whole calls) still loads, with no per-call term
    d.update(format="lowbit-latency-table/1")
    del d["timing"], d["overhead_ms"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = na.LatencyTable.load(tmp_path / "old.json")
    assert old.timing == "alone" and old.overhead_ms == 0 and old.layers == t.layers
    assert old.predict(na.filters_of(lenet)) == pytest.approx(sum(np.max(x["ms"]) for x in t.layers))


def test_latency_table_times_each_segment_inside_the_network(lenet, monkeypatch):
    # every entry is a slice of one profiled predict of the whole network at the entry's
    # widths: record the networks profiled and what the table took from them
    seen = []
    real = lb.Sequential.profile

    def spy(self, *a, **k):
        p = real(self, *a, **k)
        seen.append((na.filters_of(self), p))
        return p
    monkeypatch.setattr(lb.Sequential, "profile", spy)
    t = na.build_latency_table(lenet, steps=[1, 2, 1, 1, 1], repeat=1, verbose=0)
    full = na.filters_of(lenet)
    narrow = [32, 24, 256, 84, 10]
    # per layer its (cin, cout) grid, the last profile for the per-call term
    assert [f for f, _ in seen] == [full, narrow, full, narrow, full, full, full, full]
    spans = [[0], [1, 2], [3, 4, 5], [6], [7]]  # conv | pool, conv | pool, flatten, dense | dense | dense
    assert [e["segment"] for e in t.layers] == [[lenet.layers[i].name for i in sp] for sp in spans]

    def part(k, j):
        return sum(seen[k][1][i]["ms"] for i in spans[j])
    assert t.layers[0]["ms"] == [[part(0, 0)]]
    assert t.layers[1]["ms"] == [[part(1, 1), part(2, 1)]]  # cin 32; cout 24, 48
    assert t.layers[2]["ms"] == [[part(3, 2)], [part(4, 2)]]  # cin 24, 48; cout 256
    assert t.overhead_ms == seen[-1][1].overhead_ms


def test_latency_table_errors(lenet, tmp_path):
    with pytest.raises(FileNotFoundError):
        na.LatencyTable.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="lowbit-latency-table"):
        na.LatencyTable.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="flush_mb"):
        na.measure_latency(lenet, flush_mb=-1)
    with pytest.raises(ValueError, match="repeat"):
        na.measure_latency(lenet, repeat=0)
    with pytest.raises(ValueError, match="steps"):
        na.build_latency_table(lenet, steps=0, verbose=0)
    with pytest.raises(TypeError, match="Sequential"):
        na.build_latency_table(lb.models.resnet20((1, 8, 8), seed=0), verbose=0)


def _adapt(lenet, data, budget=None, **kw):
    train, val = data
    args = dict(reduction_schedule=0.12, short_term_steps=3, long_term_epochs=1, batch_size=64, verbose=0)
    args.update(kw)
    return na.adapt(lenet, train, val, budget or 0.6 * na.resource_of(lenet), **args)


@pytest.fixture(scope="module")
def adapted(lenet, data):
    return _adapt(lenet, data)


def test_adapt_meets_a_mac_budget(lenet, adapted):
    small, history = adapted
    budget = 0.6 * na.resource_of(lenet)
    assert na.resource_of(small) <= budget
    assert history[0]["filters"] == [32, 48, 256, 84, 10] and history[-1]["block"] == "long-term"
    f = na.filters_of(small)
    assert f[-1] == 10 and all(a <= b for a, b in zip(f, history[0]["filters"])) and f != history[0]["filters"]
    assert [r["iteration"] for r in history] == list(range(len(history)))
    assert all(b["resource"] < a["resource"] for a, b in zip(history[:-2], history[1:-1]))
    assert small.summary(print_fn=None).totals["macs"] == history[-1]["resource"]
    assert history[-1]["accuracy"] > 0.5  # a Fashion-MNIST LeNet after one epoch of 1200 images: ~0.7
    text = str(history)
    assert "MACs" in text and "long-term" in text and "[32, 48, 256, 84, 10]" in text


def test_adapt_resumes_from_its_last_finished_iteration(lenet, data, adapted, tmp_path, monkeypatch):
    full, h_full = adapted
    state = tmp_path / "state.json"
    real = na._atomic_write

    def killed_after_iteration_2(path, write):  # the run dies right after saving iteration 2
        real(path, write)
        if json.loads(state.read_text())["iteration"] == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(na, "_atomic_write", killed_after_iteration_2)
    with pytest.raises(KeyboardInterrupt):
        _adapt(lenet, data, state_path=state)
    saved = json.loads(state.read_text())
    assert saved["iteration"] == 2 and not saved["done"] and len(saved["history"]) == 3
    monkeypatch.setattr(na, "_atomic_write", real)
    resumed, h = _adapt(lenet, data, state_path=state)
    assert [r["filters"] for r in h] == [r["filters"] for r in h_full]
    assert h[:3] == saved["history"]
    np.testing.assert_allclose([r["accuracy"] for r in h], [r["accuracy"] for r in h_full], atol=0.02)
    again, h2 = _adapt(lenet, data, state_path=state)  # finished: nothing left to do
    assert h2 == h and na.filters_of(again) == na.filters_of(resumed)
    with pytest.raises(ValueError, match="other settings"):
        _adapt(lenet, data, state_path=state, short_term_steps=4)


def test_adapt_errors(lenet, data):
    with pytest.raises(ValueError, match="resource"):
        _adapt(lenet, data, resource="energy")
    with pytest.raises(ValueError, match="LatencyTable"):
        _adapt(lenet, data, resource="latency")
    with pytest.raises(ValueError, match="reduction_schedule"):
        _adapt(lenet, data, reduction_schedule=1.5)
    with pytest.raises(ValueError, match="filter_choice"):
        _adapt(lenet, data, filter_choice="random")
    with pytest.raises(ValueError, match="prunable"):
        na.prune(lenet, 4, [0])
    with pytest.raises(ValueError, match="classifier"):
        na.with_filters(lenet, [32, 48, 256, 84, 9])


def test_adapt_meets_a_latency_budget(lenet, data):
    t = na.build_latency_table(lenet, steps=2, repeat=1, verbose=0)
    # the grid as measured, its latencies replaced by a cost that grows with both widths:
    # timings taken on a loaded machine are not monotone, and this tests the algorithm
    for e in t.layers:
        e["ms"] = (1e-3 * np.outer(e["in_channels"], e["out_channels"])).tolist()
    budget = 0.8 * t.predict(na.filters_of(lenet))
    small, history = _adapt(lenet, data, budget, resource="latency", table=t, reduction_schedule=0.1,
                            short_term_steps=1, long_term_epochs=0)
    assert t.predict(na.filters_of(small)) <= budget == pytest.approx(0.8 * history[0]["resource"])
    assert na.filters_of(small) != na.filters_of(lenet)
    assert history.resource_name == "latency (ms)" and history[-1]["resource"] == t.predict(na.filters_of(small))


def test_latency_lookup_uses_the_monotone_envelope():
    # a measured dip (2.0 at 4 -> 8 channels) is timing noise: more channels never cost less
    t = na.LatencyTable([{"name": "c", "in_channels": [1, 2], "out_channels": [4, 8, 16],
                          "ms": [[3.0, 2.0, 5.0], [1.0, 4.0, 6.0]]}])
    assert t.lookup(0, 1, 8) == 3.0 and t.lookup(0, 2, 4) == 3.0 and t.lookup(0, 2, 16) == 6.0
    assert t.lookup(0, 1, 6) == 3.0 and t.lookup(0, 1, 12) == 4.0
    assert t.to_dict()["layers"][0]["ms"][0][1] == 2.0  # the file keeps what was measured


def test_adapt_stops_with_a_warning_when_no_layer_can_meet_the_budget(lenet, data):
    with pytest.warns(RuntimeWarning, match="no layer can lose filters"):
        small, history = _adapt(lenet, data, budget=1.0, reduction_schedule=0.5, short_term_steps=0,
                                long_term_epochs=0)
    assert history[-1]["block"] == "long-term" and na.resource_of(small) > 1.0
    assert history[-1]["resource"] < history[0]["resource"]  # it went as far as Algorithm 1 could
