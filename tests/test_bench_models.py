"""benchmarks/bench_models.py in quick mode on LeNet: every row printed with finite positive
times and ratios, the layers on the kernels this CPU has; the torch twin of a ResNet-20
with non-trivial batch-norm statistics matches lowbit's predict."""
import importlib.util
import math
import pathlib

import numpy as np
import pytest

import lowbit as lb

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"
_spec = importlib.util.spec_from_file_location("bench_models", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

QUICK = ["--quick", "--models", "lenet", "--threads", "1", "--repeat", "2"]


def table(out, model="lenet"):
    """Printed rows of ``model``: {row name: its columns}."""
    rows = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) == 10 and cols[0] == model and cols[6].endswith("x"):
            rows[cols[1]] = cols
    return rows


def check(rows, names):
    assert sorted(rows) == sorted(names)
    for name in names:
        cols = rows[name]
        ms, cpu_ms, per_s = (float(c) for c in cols[3:6])
        wall_x, cpu_x = float(cols[6][:-1]), float(cols[7][:-1])
        for v in (ms, cpu_ms, per_s, wall_x, cpu_x):
            assert math.isfinite(v) and v > 0, f"{name}: {cols}"
        assert 0.0 <= float(cols[8]) <= 1.0, f"{name}: agreement {cols[8]}"
        assert cols[9] == "-" or 0.0 <= float(cols[9]) <= 1.0
    # the reference against itself
    assert rows["lowbit/fp32"][6:9] == ["1.00x", "1.00x", "1.000"]


def test_lowbit_rows(capsys):
    threads = lb.build_info()["openmp_threads"]
    results = bench.main(QUICK + ["--peers", "none"])
    assert lb.build_info()["openmp_threads"] == threads  # restored after "--threads 1"
    out = capsys.readouterr().out
    rows = table(out)
    check(rows, [f"lowbit/{p}" for p in bench.PRECISIONS])
    assert [r.name for r in results[("lenet", 1)]] == [f"lowbit/{p}" for p in bench.PRECISIONS]
    info = lb.kernels.info()
    # LeNet: 2 convs and 3 dense layers; binary presets exempt the first input and the last layer
    for p in ("int8", "bf16"):
        assert rows[f"lowbit/{p}"][2] == (f"{p}:5" if info[p] != "simulated" else "sim:5")
    assert rows["lowbit/fp32"][2] == "fp32:5"
    assert rows["lowbit/binary"][2] == "sim:1+xnor:3+fp32:1"  # scaled weights on xnor, first input fp32
    assert "CPU:" in out and "binary kernel path" in out


def test_torch_rows(capsys):
    pytest.importorskip("torch")
    bench.main(QUICK + ["--peers", "torch,larq", "--precisions", "fp32,int8"])
    out = capsys.readouterr().out
    rows = table(out)
    names = ["lowbit/fp32", "lowbit/int8", "torch/fp32"]
    if "torch/int8 skipped" not in out:
        names.append("torch/int8")
    check(rows, names)
    assert "(within 0.0001)" in out  # the twin computes lowbit's network
    assert rows["torch/fp32"][8] == "1.000"
    assert "larq-compute-engine skipped" in out


def test_onnxruntime_rows(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    bench.main(QUICK + ["--peers", "onnxruntime", "--precisions", "fp32"])
    out = capsys.readouterr().out
    rows = table(out)
    names = ["lowbit/fp32", "onnxruntime/fp32"]
    if "onnxruntime/int8 skipped" not in out:
        names.append("onnxruntime/int8")
    check(rows, names)
    assert rows["onnxruntime/fp32"][8] == "1.000"


def test_torch_twin_resnet20_batch_norm():
    """Random weights and moving statistics (not the initial identity ones), TF 'same'
    padding of the stride-2 convs (one pixel at the end only), 1x1 shortcuts, Add."""
    torch = pytest.importorskip("torch")
    m = lb.models.resnet20(seed=3)
    rng = np.random.default_rng(0)
    weights = []
    for w in m.get_weights():
        if w.ndim == 1:  # biases, gamma, beta, moving mean and variance
            weights.append(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
        else:
            weights.append((w * 0.5).astype(np.float32))
    m.set_weights(weights)
    x = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
    want = m.predict(x, batch_size=4)
    assert want.max() < 0.999  # not saturated: the comparison sees the logits
    with torch.no_grad():
        got = bench.torch_twin(m)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=bench.TWIN_TOL)


def test_torch_twin_names_unsupported_layer():
    pytest.importorskip("torch")
    m = lb.Sequential([lb.layers.Conv2D(4, 3, input_shape=(1, 8, 8)), lb.layers.LRN()], seed=0)
    m.build()
    with pytest.raises(ValueError, match="LRN"):
        bench.torch_twin(m)


@pytest.mark.parametrize("argv, message", [
    (["--models", "vgg"], "--models: unknown 'vgg'"),
    (["--precisions", "int8"], "fp32 is needed"),
    (["--threads", "two"], "--threads: expected integers"),
    (["--batch", "0"], "--batch: expected >= 1"),
    (["--peers", "tflite"], "--peers: unknown 'tflite'"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err
