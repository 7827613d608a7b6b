#!/usr/bin/env python
"""Real low-precision kernels against lowbit's own fp32 (oneDNN) layer of the same shape,
measured in one run: binary xnor-popcount conv/dense (lb.kernels) vs Conv2D/Dense fp32,
and the engine's int8 / bf16 / fp16 layers (predict of a one-layer model whose input and
weight formats are Int(8) / BFloat16 / Float16, on the kernels and simulated) vs the
same predict of the fp32 layer.

Shapes (issue 11): 3x3 conv 256->256 at 14x14 and 64->64 at 56x56 ('same', batch 16),
dense 4096->4096 at batch 64. Prints the CPU, its ISA, the kernel path, GMAC/s, the
ratio to fp32 and the fraction of the measured popcount peak (one popcounted bit per
binary multiply-accumulate; peak = VPOPCNTQ throughput x threads).

    python benchmarks/bench_kernels.py [--threads 1,2] [--reps 7] [--portable] [--engine]
                                       [--families int8,bf16,fp16]

Timing: fp32 and binary calls are interleaved; each figure is the best of --reps runs,
by wall clock and by the process's CPU time (on a shared machine the wall clock of a
long call includes time the scheduler gave to others; CPU time does not, but counts
OpenMP threads' spin-waits). GMAC/s and the fraction of peak use the CPU time with one
thread, the wall clock with more.
Weights are packed once, as for inference; the packing
time is printed apart. Activations are packed inside every binary call.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import lowbit as lb
from lowbit.experiments import cpu_model as cpu_name

CASES = [  # name, kind, input shape (with batch), filters/units
    ("conv3x3 256->256 14x14 b16", "conv", (16, 256, 14, 14), 256),
    ("conv3x3 64->64 56x56 b16", "conv", (16, 64, 56, 56), 64),
    ("dense 4096->4096 b64", "dense", (64, 4096), 4096),
]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = set(line.split(":", 1)[1].split())
                    keep = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                            "avx512_bf16", "avx512_fp16", "avx512_vpopcntdq", "amx_tile", "amx_int8", "amx_bf16"]
                    return [k for k in keep if k in fl]
    except OSError:
        pass
    return []


def timed(f):
    t, c = time.perf_counter(), time.process_time()
    f()
    return time.perf_counter() - t, time.process_time() - c


def measure(calls, reps):
    """calls: {name: fn}; interleaved, best wall and best CPU time of each."""
    best = {k: [np.inf, np.inf] for k in calls}
    for f in calls.values():
        f()  # warm-up: graph build, first-touch allocations
    for _ in range(reps):
        for k, f in calls.items():
            w, c = timed(f)
            best[k][0], best[k][1] = min(best[k][0], w), min(best[k][1], c)
    return best


def one_layer(kind, shape, out, **formats):
    if kind == "conv":
        layer = lb.layers.Conv2D(out, 3, padding="same", input_shape=shape[1:], **formats)
    else:
        layer = lb.layers.Dense(out, input_shape=shape[1:], **formats)
    m = lb.Sequential([layer], seed=0)
    m.build()
    return m


def engine_layer(m, on):
    """predict of a quantized layer with the engine's kernels on or off (simulated)."""
    def run():
        was = lb.kernels.use_in_engine(on)
        try:
            m.predict(x_of[id(m)], batch_size=len(x_of[id(m)]))
        finally:
            lb.kernels.use_in_engine(was)
    return run


x_of = {}
# per-channel weight scales for convolutions (per output channel), per tensor for dense
FAMILY_FORMATS = {
    "int8": lambda kind: dict(weight_format=lb.formats.Int(8, per_channel=kind == "conv"),
                              input_format=lb.formats.Int(8)),
    "bf16": lambda kind: dict(weight_format=lb.formats.BFloat16(), input_format=lb.formats.BFloat16()),
    "fp16": lambda kind: dict(weight_format=lb.formats.Float16(), input_format=lb.formats.Float16()),
}


def build_case(kind, shape, out, rng):
    x = rng.normal(size=shape).astype(np.float32)
    fp32 = one_layer(kind, shape, out)
    w, b = fp32.get_weights()
    t = time.perf_counter()
    packed = lb.kernels.pack_conv_weights(w) if kind == "conv" else lb.kernels.pack_dense_weights(w)
    pack_s = time.perf_counter() - t
    macs = x.shape[0] * int(np.prod(fp32.output_shape)) * (w.size // out)

    def binary(path):
        if kind == "conv":
            return lambda: lb.kernels.binary_conv2d(x, packed, 1, "same", bias=b, path=path)
        return lambda: lb.kernels.binary_dense(x, packed, bias=b, path=path)
    return x, fp32, binary, macs, pack_s, packed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--portable", action="store_true", help="also time the portable path")
    ap.add_argument("--engine", action="store_true",
                    help="also time predict of a Binary() layer in the engine, simulated and on the kernels")
    ap.add_argument("--families", default="int8,bf16,fp16",
                    help="engine layers to time besides binary (comma-separated; empty: none)")
    a = ap.parse_args()
    families = [f for f in a.families.split(",") if f]
    for f in families:
        if f not in FAMILY_FORMATS:
            ap.error(f"--families: unknown family {f!r} (expected {', '.join(FAMILY_FORMATS)})")
    info = lb.kernels.info()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs); ISA: {' '.join(cpu_flags())}")
    print(f"lowbit {lb.__version__}, oneDNN {lb.build_info()['onednn']} (dispatching to "
          f"{lb.build_info()['onednn_cpu_isa']}); binary kernel path: {info['binary']}")
    for f in families:
        why = info.get(f"{f}_simulated_because")
        print(f"{f} layers: {info[f]}" + (f" ({why})" if why else ""))
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs: the machine is shared; "
              "trust the CPU-time columns and ratios more than wall-clock GMAC/s")
    native = info["binary"] != "portable"
    peak = lb.kernels.popcount_peak(0.3) if native else None
    if peak:
        print(f"popcount peak (VPOPCNTQ, 1 thread, best 1 ms window): {peak / 1e9:.0f} Gbit/s "
              f"= {peak / 1e9:.0f} G binary-MAC/s")
    rng = np.random.default_rng(0)
    head = (f"{'layer':<28}{'thr':>4}{'path':>18}{'wall ms':>10}{'cpu ms':>9}{'GMAC/s':>9}"
            f"{'x fp32 wall':>12}{'x fp32 cpu':>11}{'of peak':>9}")
    for threads in [int(t) for t in a.threads.split(",")]:
        lb.set_num_threads(threads)
        print(f"\n{threads} thread(s)\n{head}")
        for name, kind, shape, out in CASES:
            x, fp32, binary, macs, pack_s, packed = build_case(kind, shape, out, rng)
            calls = {"fp32 oneDNN": lambda: fp32.predict(x, batch_size=x.shape[0])}
            calls[info["binary"]] = binary("auto")
            if a.portable and native:
                calls["portable"] = binary("portable")
            if a.engine:
                b1 = lb.formats.Binary()
                layer = one_layer(kind, shape, out, weight_format=b1, input_format=b1)
                x_of[id(layer)] = x
                calls["engine Binary sim"] = engine_layer(layer, False)
                calls["engine Binary krn"] = engine_layer(layer, True)
            for fam in families:
                layer = one_layer(kind, shape, out, **FAMILY_FORMATS[fam](kind))
                # one training-mode call, as a trained layer has had: Int's running range
                # (inference then skips the batch's max pass)
                layer.layers[0](x, training=True)
                x_of[id(layer)] = x
                calls[f"{fam} sim"] = engine_layer(layer, False)
                if info[fam] != "simulated":
                    calls[f"{fam} kernel"] = engine_layer(layer, True)
            best = measure(calls, a.reps)
            fw, fc = best["fp32 oneDNN"]
            for k, (w, c) in best.items():
                # one thread: CPU time is the running time (wall less time descheduled); with
                # more, a descheduled worker leaves CPU/threads below it, so the wall clock counts
                busy = min(w, c) if threads == 1 else w
                per = macs / busy / 1e9
                popcounts = k in (info["binary"], "portable", "engine Binary krn")  # of the popcount peak
                frac = f"{macs / busy / (peak * threads):8.0%}" if peak and popcounts else ""
                ratio = "" if k == "fp32 oneDNN" else f"{fw / w:11.1f}x{fc / c:10.1f}x"
                print(f"{name:<28}{threads:>4}{k:>18}{w * 1e3:10.2f}{c * 1e3:9.2f}{per:9.0f}{ratio:>23}{frac:>9}")
            print(f"{'':<32}(weights packed once in {pack_s * 1e3:.1f} ms: {packed.memory_bytes / 1024:.0f} KiB "
                  f"vs {packed.memory_bytes * 32 / 1024:.0f} KiB fp32)")


if __name__ == "__main__":
    main()
