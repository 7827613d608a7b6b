"""The engine's run-time foundation: oneDNN 3 from the onednn-cpu-gomp wheel, one GNU
OpenMP runtime per process, the loader's fallbacks and errors, and model.kernels()."""
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import lowbit as lb

ISAS = {"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni", "avx512_core_bf16",
        "avx512_core_fp16", "avx512_core_amx", "avx512_core_amx_fp16"}


def run_python(code, *args, python=sys.executable, flags=()):
    return subprocess.run([python, *flags, "-c", code, *args], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})


def test_build_info_names_onednn3_and_its_isa():
    info = lb.build_info()
    assert info["onednn"].startswith("3."), info["onednn"]
    assert info["onednn_cpu_isa"] in ISAS
    assert os.path.basename(info["onednn_library"]) == "libdnnl.so.3"
    assert os.path.basename(info["openmp_library"]) == "libgomp.so.1"
    # the ISA follows the CPU: AVX-512 machines get an avx512_core* one, AVX2 ones avx2*
    if info.get("avx512bw"):
        assert info["onednn_cpu_isa"].startswith("avx512_core")
    elif info.get("avx2"):
        assert info["onednn_cpu_isa"].startswith("avx2")


def test_onednn_is_the_wheels_library():
    try:
        recorded = [f for f in md.distribution("onednn-cpu-gomp").files if f.name == "libdnnl.so.3"]
    except md.PackageNotFoundError:
        pytest.skip("onednn-cpu-gomp is not installed (a build with LOWBIT_SYSTEM_DEPS=ON)")
    assert os.path.realpath(lb.build_info()["onednn_library"]) == os.path.realpath(recorded[0].locate())


OPENMP_MAPS = r"""
import json, os, re, sys
import numpy as np, lowbit as lb
rng = np.random.default_rng(0)
m = lb.models.lenet(seed=0)
m.compile(lb.optimizers.Adam(1e-3))
m.fit(rng.uniform(size=(64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64), batch_size=32, verbose=0)
files = {line.split()[-1] for line in open("/proc/self/maps") if len(line.split()) >= 6}
omp = {os.path.realpath(f) for f in files if re.search(r"/lib(g|i|i5|)omp[^/]*\.so", f)}
dnnl = {os.path.realpath(f) for f in files if "/libdnnl.so" in f}
print(json.dumps({"omp": sorted(omp), "dnnl": sorted(dnnl), "torch": "torch" in sys.modules,
                  "info": lb.build_info()}))
"""


def test_one_gnu_openmp_runtime_per_process():
    out = run_python(OPENMP_MAPS)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert not r["torch"]
    assert len(r["omp"]) == 1, f"OpenMP runtimes mapped: {r['omp']}"
    assert os.path.basename(r["omp"][0]).startswith("libgomp")
    assert r["omp"][0] == os.path.realpath(r["info"]["openmp_library"])
    assert len(r["dnnl"]) == 1 and ".so.3" in r["dnnl"][0], f"oneDNN libraries mapped: {r['dnnl']}"


def copy_package(tmp_path):
    """The installed package copied to a folder the extension's rpath does not reach."""
    dst = tmp_path / "elsewhere" / "lowbit"
    shutil.copytree(os.path.dirname(lb.__file__), dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst.parent


def test_loader_finds_onednn_outside_the_rpath(tmp_path):
    # -S: no site-packages on sys.path but the ones we list; the copy's rpath misses
    # <prefix>/lib, so the loader's fallback (the wheel's RECORD, sys.prefix/lib) finds it
    here = copy_package(tmp_path)
    site_dirs = [p for p in sys.path if p.endswith("-packages")]
    code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); import lowbit as lb; "
            "print(lb.__file__); print(lb.build_info()['onednn_library'])")
    out = run_python(code, json.dumps([str(here)] + site_dirs), flags=("-S",))
    assert out.returncode == 0, out.stderr
    file, lib = out.stdout.strip().splitlines()[-2:]
    assert file.startswith(str(here))
    assert os.path.realpath(lib) == os.path.realpath(lb.build_info()["onednn_library"])


def test_loader_error_names_the_library_and_its_package(tmp_path):
    base = getattr(sys, "_base_executable", sys.executable)
    probe = run_python("import sys, site; print(sys.prefix); print(site.getuserbase())", python=base, flags=("-S",))
    prefixes = probe.stdout.split()
    if any(os.path.exists(os.path.join(p, "lib", "libdnnl.so.3")) for p in prefixes):
        pytest.skip("the base interpreter's prefix has a libdnnl.so.3 of its own")
    here = copy_package(tmp_path)
    # the base interpreter without site: no onednn-cpu-gomp wheel anywhere in sight
    out = run_python("import sys; sys.path.insert(0, sys.argv[1]); import lowbit", str(here), python=base,
                     flags=("-S", "-I"))
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert "libdnnl.so.3" in out.stderr and "pip install onednn-cpu-gomp==2023.2.0" in out.stderr


def test_missing_library_is_recognised():
    from lowbit import _loader

    assert _loader.missing_library(ImportError("libdnnl.so.3: cannot open shared object file")) == "libdnnl.so.3"
    assert _loader.missing_library(ImportError("libgomp.so.1: file too short")) == "libgomp.so.1"
    assert _loader.missing_library(ImportError("No module named 'lowbit._core'")) is None
    assert _loader.candidates("libgomp.so.1")[-1].endswith(os.path.join("lowbit", "_libs", "libgomp.so.1"))


def test_kernels_name_each_primitive_of_a_lenet():
    m = lb.models.lenet(seed=0)
    table = m.kernels(batch_size=8)
    ops = {r["op"] for r in table}
    assert ops == {"conv2d", "max_pool2d", "dense"}
    layers = {r["layer"] for r in table}
    assert len(layers) == 7  # 2 conv, 2 pool, 3 dense
    for r in table:
        assert r["impl"] and r["pass"] in {"forward", "forward_inference", "backward", "backward_data",
                                           "backward_weights"}
    by = {(r["layer"], r["pass"]) for r in table}
    conv = next(r["layer"] for r in table if r["op"] == "conv2d")
    assert {(conv, p) for p in ("forward", "backward_data", "backward_weights")} <= by
    text = str(table)
    assert "Implementation" in text and table.cpu_isa in text and table[0]["impl"] in text
    # after a fit the table reports what ran, without another forward
    m.compile(lb.optimizers.SGD(0.1))
    rng = np.random.default_rng(0)
    m.fit(rng.uniform(size=(16, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 16), batch_size=16, verbose=0)
    assert [r["impl"] for r in m.kernels()] == [r["impl"] for r in m.kernels(batch_size=16)]


def test_kernels_show_lowbit_loops_and_check_arguments():
    L, F = lb.layers, lb.formats
    m = lb.Sequential([L.Conv2D(4, 3, input_shape=(2, 6, 6), accum_format=F.Float16()), L.Flatten(), L.Dense(3)])
    t = m.kernels()
    conv = [r for r in t if r["op"] == "conv2d"]
    path = lb.kernels.info()["fp16_accum"]
    assert conv[0]["pass"] == "forward" and conv[0]["impl"] == (
        "lowbit:accumulator_simulation:Float16()" if path == "simulate" else f"lowbit:fp16_accumulation:{path}")
    m2 = lb.Sequential([L.Conv2D(4, 3, input_shape=(2, 6, 6), accum_format=F.Int(24)), L.Flatten(), L.Dense(3)])
    assert m2.kernels()[0]["impl"] == "lowbit:accumulator_simulation:Int(24)"
    assert any(r["op"] == "dense" and r["pass"] == "forward" for r in t)
    with pytest.raises(ValueError, match="batch_size"):
        m.kernels(batch_size=0)
