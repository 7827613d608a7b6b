#!/usr/bin/env python
"""Quantization cost of one tensor of 1M float32 values (a 1024 x 1024 dense kernel,
blocks along its 1024 inputs as in a layer; and the same values as a flat row) per format,
as a ratio to Fixed(8). Target (issue 12): MXFP4 <= 3x Fixed(8).

    python benchmarks/bench_formats.py [--n 1048576] [--repeats 50] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time


def best_time(fn, repeats):
    fn()  # first touch
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), sorted(ts)[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # before the engine loads
    import numpy as np

    import lowbit as lb
    from lowbit.experiments import cpu_model as cpu_name
    F = lb.formats

    rows = 1024 if a.n % 1024 == 0 else 1
    x = np.random.default_rng(0).normal(size=(rows, a.n // rows)).astype(np.float32)
    cases = [("Fixed(8, msb=2)", F.Fixed(8, msb=2), None), ("BFloat16", F.BFloat16(), None),
             ("FP8E4M3FN", F.FP8E4M3FN(), None), ("FP4E2M1", F.FP4E2M1(), None),
             ("BFloat16 stochastic", F.BFloat16(rounding="stochastic"), None),
             ("MXFP8 (rows)", F.MXFP8(), -1), ("MXFP4 (rows)", F.MXFP4(), -1),
             ("MXFP4 (columns, K of (K, M))", F.MXFP4(), 0), ("MXINT8 (rows)", F.MXINT8(), -1),
             ("NVFP4 (rows)", F.NVFP4(), -1), ("MXFP4 stochastic", F.MXFP4(rounding="stochastic"), -1)]
    print(f"# {cpu_name()}, {a.threads} thread(s), {x.size:,} values, best / median of {a.repeats}")
    print(f"{'format':32s} {'best ms':>9s} {'median ms':>10s} {'x Fixed(8)':>10s}")
    base = None
    for name, f, axis in cases:
        fn = (lambda f=f: f.quantize(x)) if axis is None else (lambda f=f, ax=axis: f.quantize(x, axis=ax))
        best, med = best_time(fn, a.repeats)
        base = base or best
        print(f"{name:32s} {best * 1e3:9.3f} {med * 1e3:10.3f} {best / base:10.2f}")
    ratio = best_time(lambda: F.MXFP4().quantize(x), a.repeats)[0] / best_time(lambda: F.Fixed(8, msb=2).quantize(x),
                                                                              a.repeats)[0]
    print(f"MXFP4 / Fixed(8) = {ratio:.2f} (target <= 3): {'PASS' if ratio <= 3 else 'ABOVE'}")


if __name__ == "__main__":
    main()
