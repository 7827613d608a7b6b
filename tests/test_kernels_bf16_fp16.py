"""bf16 / fp16 layers in evaluate/predict (oneDNN bf16/f16 convolution and matmul, fp32
accumulation) against the simulated BFloat16 / Float16 layers, and the dispatch's
fallbacks: a family oneDNN cannot run natively on this CPU (f16 without AVX512-FP16),
LOWBIT_PORTABLE_KERNELS=1, and a CPU capped below VNNI / BF16 (ONEDNN_MAX_CPU_ISA) all run
the simulated layers, bit for bit, and lb.kernels.info() says so.

The bound: products of two bf16 (fp16) values are exact in fp32 (8 + 8, resp. 11 + 11
significant bits), so kernel and simulation add the same exact products in fp32, in
different orders: each within (K - 1) 2^-24 sum|x_q w_q| of the exact sum, hence
|z - z_sim| <= 2 K 2^-24 sum|x_q w_q|."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit as lb
from conftest import CONV_CASES, conv_case_geometry, conv_case_id, model_with_random_weights, np_conv2d, predict_kernels_on_off

K, L, F = lb.kernels, lb.layers, lb.formats
U = 2.0 ** -24
FORMATS = {"bf16": F.BFloat16, "fp16": F.Float16}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def native(family):
    return K.info()[family] != "simulated"


def check(m, x, family, xq, wq, ref, K_len):
    fast, sim, used = predict_kernels_on_off(m, x, family, batch_size=len(x))
    if not native(family):  # the fallback: the simulated layer itself
        assert used == 0
        np.testing.assert_array_equal(fast, sim)
        return
    assert used == 1
    exact, absref = ref(xq, wq), ref(np.abs(xq), np.abs(wq))
    assert np.all(np.abs(fast.astype(np.float64) - sim) <= 2 * K_len * U * absref + 1e-30)
    assert np.all(np.abs(fast.astype(np.float64) - exact) <= K_len * U * absref + 1e-30)
    assert m.kernels(batch_size=2).impls()[0].startswith(f"{family}:onednn:")


@pytest.mark.parametrize("family", FORMATS)
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_case_id)
def test_conv2d_equals_simulated_layer(case, family, rng):
    shape, filters, k, s, pad, d = case
    f = FORMATS[family]()
    layer = L.Conv2D(filters, k, strides=s, padding=pad, dilation_rate=d, use_bias=False, weight_format=f,
                     input_format=f)
    m, w, _ = model_with_random_weights(layer, shape[1:], rng)
    x = rng.normal(size=shape).astype(np.float32)
    geo = conv_case_geometry(case)
    check(m, x, family, f.quantize(x), f.quantize(w), lambda a, b: np_conv2d(a, b, None, *geo), w[0].size)


@pytest.mark.parametrize("family", FORMATS)
@pytest.mark.parametrize("n,fan_in,units", [(5, 130, 45), (1, 1, 1), (9, 577, 70), (3, 64, 64)])
def test_dense_equals_simulated_layer(n, fan_in, units, family, rng):
    f = FORMATS[family]()
    m, w, _ = model_with_random_weights(L.Dense(units, use_bias=False, weight_format=f, input_format=f),
                                        (fan_in,), rng)
    x = rng.normal(size=(n, fan_in)).astype(np.float32)
    check(m, x, family, f.quantize(x), f.quantize(w), lambda a, b: a.astype(np.float64) @ b, fan_in)


def test_info_names_each_family_path():
    info, flags = K.info(), cpu_flags()
    for family in ("int8", "bf16", "fp16"):
        path = info[family]
        assert path == "simulated" or path.startswith("onednn:"), path
        assert (path == "simulated") == (f"{family}_simulated_because" in info)
    if info["portable_forced"]:
        return
    # oneDNN's direct convolutions are preferred over its brgemm ones of the same ISA (AMX's
    # brgemm stays): the same sums, faster on small layers, and bf16's keeps nChw16c
    if "avx512_bf16" in flags:
        assert "bf16" in info["bf16"], info["bf16"]
        assert "amx" in info["bf16"] or info["bf16"].startswith("onednn:jit_bf16"), info["bf16"]
    if "avx512_vnni" in flags:
        assert "vnni" in info["int8"] or "amx" in info["int8"], info["int8"]
        assert "amx" in info["int8"] or info["int8"].startswith("onednn:jit_int8"), info["int8"]
    if "avx512_fp16" in flags:
        assert info["fp16"].startswith("onednn:")
    elif "avx_ne_convert" not in flags:  # no f16 arithmetic oneDNN 3.2 uses (AVX512-FP16, AVX2-VNNI-2)
        assert info["fp16"] == "simulated" and "oneDNN" in info["fp16_simulated_because"]


def half_net(f):
    q = dict(weight_format=f, input_format=f)
    return lb.Sequential([
        L.Conv2D(16, 3, padding="same", input_shape=(3, 11, 11)),
        L.BatchNormalization(),
        L.Conv2D(32, 3, padding="same", **q),  # blocked (nChw16c) input and output
        L.BatchNormalization(),
        L.Conv2D(33, 3, strides=2, padding="same", **q),
        L.Flatten(),
        L.Dense(45, **q),
        L.Dense(10, activation="softmax"),
    ], seed=0)


@pytest.mark.parametrize("family", FORMATS)
def test_engine_predict_after_training(family, rng):
    m = half_net(FORMATS[family]())
    m.compile(lb.optimizers.Adam(1e-2), "categorical_crossentropy")
    x = rng.normal(size=(21, 3, 11, 11)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 21)]
    calls = K.info()[f"engine_{family}_calls"]
    m.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert K.info()[f"engine_{family}_calls"] == calls, "the training forward ran the kernels"
    prep = K.info()["engine_weight_preparations"]
    fast, sim, used = predict_kernels_on_off(m, x, family)
    if not native(family):
        assert used == 0 and K.info()["engine_weight_preparations"] == prep
        np.testing.assert_array_equal(fast, sim)
        return
    assert used == 3 * 3 and K.info()["engine_weight_preparations"] - prep == 3
    np.testing.assert_allclose(fast, sim, rtol=1e-4, atol=1e-6)


FALLBACK = r"""
import json, sys, numpy as np, lowbit as lb
L, F, K = lb.layers, lb.formats, lb.kernels
rng = np.random.default_rng(0)
m = lb.Sequential([
    L.Conv2D(20, 3, padding="same", input_shape=(5, 9, 9), weight_format=F.Int(8), input_format=F.Int(8)),
    L.Conv2D(16, 3, strides=2, weight_format=F.BFloat16(), input_format=F.BFloat16()),
    L.Flatten(), L.Dense(12, weight_format=F.Float16(), input_format=F.Float16())], seed=0)
m.build()
m.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in m.get_weights()])
x = rng.normal(size=(6, 5, 9, 9)).astype(np.float32)
before = K.info()
on = m.predict(x)
K.use_in_engine(False)
off = m.predict(x)
info = K.info()
calls = {f: info[f"engine_{f}_calls"] - before[f"engine_{f}_calls"] for f in ("int8", "bf16", "fp16")}
print(json.dumps({"info": info, "calls": calls, "equal": bool(np.array_equal(on, off)),
                  "isa": lb.build_info()["onednn_cpu_isa"], "y": on.tolist(), "y_sim": off.tolist()}))
"""


def run_fallback(**env):
    out = subprocess.run([sys.executable, "-c", FALLBACK], env=dict(os.environ, OMP_NUM_THREADS="1", **env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_portable_switch_falls_back_to_the_simulated_layers():
    r = run_fallback(LOWBIT_PORTABLE_KERNELS="1")
    for family in ("int8", "bf16", "fp16"):
        assert r["info"][family] == "simulated"
        assert r["info"][f"{family}_simulated_because"] == "LOWBIT_PORTABLE_KERNELS=1"
        assert r["calls"][family] == 0
    assert r["equal"]
    # and the native paths of this process agree with it within the kernels' bounds
    native_run = run_fallback()
    if native_run["info"]["int8"] != "simulated":
        assert native_run["calls"]["int8"] == 1
    np.testing.assert_allclose(native_run["y"], r["y"], rtol=1e-3, atol=1e-4)


def test_cpu_without_vnni_or_bf16_falls_back():
    """oneDNN capped at AVX2: its int8 kernels would saturate 16-bit pair sums (no VNNI),
    and it has no bf16/f16 primitives there: every family runs simulated."""
    r = run_fallback(ONEDNN_MAX_CPU_ISA="AVX2")
    assert r["isa"] in ("avx2", "avx", "sse41")
    assert r["info"]["int8"] == "simulated" and "VNNI" in r["info"]["int8_simulated_because"]
    for family in ("bf16", "fp16"):
        assert r["info"][family] == "simulated" and "oneDNN" in r["info"][f"{family}_simulated_because"]
    assert r["calls"] == {"int8": 0, "bf16": 0, "fp16": 0} and r["equal"]


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="no AVX-512")
def test_bf16_emulated_on_avx512_core():
    """Capped at AVX512_CORE (no BF16 instructions) oneDNN still has a bf16 kernel that
    widens to fp32: it runs, within the summation bound of the simulation; int8 (no VNNI)
    and fp16 stay simulated."""
    r = run_fallback(ONEDNN_MAX_CPU_ISA="AVX512_CORE")
    assert r["info"]["bf16"].startswith("onednn:") and r["calls"]["bf16"] == 1
    assert r["info"]["int8"] == "simulated" and r["calls"]["int8"] == 0 and r["calls"]["fp16"] == 0
    np.testing.assert_allclose(r["y"], r["y_sim"], rtol=1e-4, atol=1e-5)
