"""Both sides of the run-time ISA dispatch: oneDNN's portable SSE4.1 kernels (forced with
ONEDNN_MAX_CPU_ISA=SSE41 in a subprocess; oneDNN 3.x names: SSE41, AVX2, AVX512_CORE,
AVX512_CORE_BF16, ...) must agree with the AVX-512/AVX2 kernels picked on this machine,
for a whole LeNet training step (forward, backward, update). build_info() and
model.kernels() must show which side ran."""
import json
import os
import subprocess
import sys

import numpy as np

import lowbit as lb

SCRIPT = r"""
import json, sys, numpy as np, lowbit as lb
rng = np.random.default_rng(0)
x = rng.uniform(size=(16, 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, 16)
m = lb.models.lenet(seed=1)
m.compile(lb.optimizers.SGD(0.05), precision=sys.argv[1])
loss, grads = m.compute_gradients(x, y)
m.fit(x, y, batch_size=16, epochs=1, verbose=0)
print(json.dumps({"loss": loss, "g": [float(np.abs(g).sum()) for g in grads],
                  "p": m.predict(x).tolist(), "isa": lb.build_info()["onednn_cpu_isa"],
                  "impls": m.kernels().impls()}))
"""


def run(isa, precision):
    env = dict(os.environ)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", SCRIPT, precision], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_portable_and_native_kernels_agree():
    for precision in ("fp32", "fixed8"):
        native, portable = run(None, precision), run("SSE41", precision)
        assert portable["isa"] == "sse41" and not any("avx" in k for k in portable["impls"]), portable["impls"]
        if lb.build_info().get("avx2"):
            assert native["isa"] != "sse41" and any("avx" in k for k in native["impls"]), native["impls"]
        assert abs(native["loss"] - portable["loss"]) <= 1e-5 * abs(native["loss"])
        np.testing.assert_allclose(native["g"], portable["g"], rtol=1e-4)
        np.testing.assert_allclose(native["p"], portable["p"], rtol=1e-3, atol=1e-5)
