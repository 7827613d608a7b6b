#!/usr/bin/env python
"""Training step time of the S0 LeNet (batch 128, Fashion-MNIST, Adam 1e-3) per precision:
lowbit at fp32, fixed8, int8 and binary (ratio to lowbit fp32; target <= 1.2x, issue 11), against the same
network quantized with Brevitas (8-bit: Int8 fixed-point weights and ReLU activations;
binary: SignedBinary weights and activations, first input and last layer full precision)
measured in the same run (target: lowbit faster).

Then fp16 with fp16 accumulators (accum and grad_accum Float16(), issue 11): the step on
the float64 simulation against the fp16 accumulation kernel this CPU uses (the same
weights after every step), in ms per image.

    python benchmarks/bench_precision.py [--batches 30] [--warmup 3] [--threads 2] [--acc16-batches 4]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import lowbit as lb

BATCH = 128


def fp16_accumulators():
    F16 = lb.formats.Float16
    return lb.Precision(F16(), F16(), F16(), F16(), loss_scale="dynamic", name="fp16+acc16", accum=F16(),
                        grad_accum=F16())


def time_lowbit(precision, x, y, batches, warmup):
    m = lb.models.lenet(seed=0)
    m.compile(lb.optimizers.Adam(1e-3), precision=precision)
    m.fit(x[:warmup * BATCH], y[:warmup * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    n = batches * BATCH
    t = time.perf_counter()
    m.fit(x[:n], y[:n], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return (time.perf_counter() - t) / batches


def brevitas_lenet(kind):
    import torch.nn as nn
    import brevitas.nn as qnn
    from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint,
                                SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst)
    if kind == "fp32":
        return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 48, 5),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1200, 256), nn.ReLU(),
                             nn.Linear(256, 84), nn.ReLU(), nn.Linear(84, 10))
    if kind == "fixed8":
        w = dict(weight_quant=Int8WeightPerTensorFixedPoint)
        a = dict(act_quant=Int8ActPerTensorFixedPoint)
        return nn.Sequential(qnn.QuantIdentity(**a), qnn.QuantConv2d(1, 32, 5, padding=2, **w), qnn.QuantReLU(**a),
                             nn.MaxPool2d(2), qnn.QuantConv2d(32, 48, 5, **w), qnn.QuantReLU(**a), nn.MaxPool2d(2),
                             nn.Flatten(), qnn.QuantLinear(1200, 256, bias=True, **w), qnn.QuantReLU(**a),
                             qnn.QuantLinear(256, 84, bias=True, **w), qnn.QuantReLU(**a),
                             qnn.QuantLinear(84, 10, bias=True, **w))
    w = dict(weight_quant=SignedBinaryWeightPerTensorConst)
    s = dict(act_quant=SignedBinaryActPerTensorConst)
    return nn.Sequential(qnn.QuantConv2d(1, 32, 5, padding=2, **w), nn.MaxPool2d(2), qnn.QuantIdentity(**s),
                         qnn.QuantConv2d(32, 48, 5, **w), nn.MaxPool2d(2), nn.Flatten(), qnn.QuantIdentity(**s),
                         qnn.QuantLinear(1200, 256, bias=True, **w), qnn.QuantIdentity(**s),
                         qnn.QuantLinear(256, 84, bias=True, **w), nn.Linear(84, 10))


def time_brevitas(kind, x, y, batches, warmup):
    import torch
    net = brevitas_lenet(kind)
    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs = [torch.from_numpy(np.array(x[i * BATCH:(i + 1) * BATCH])) for i in range(batches + warmup)]
    ys = [torch.from_numpy(np.array(y[i * BATCH:(i + 1) * BATCH])) for i in range(batches + warmup)]

    def step(i):
        opt.zero_grad()
        loss_fn(net(xs[i]), ys[i]).backward()
        opt.step()
    for i in range(warmup):
        step(i)
    t = time.perf_counter()
    for i in range(warmup, warmup + batches):
        step(i)
    return (time.perf_counter() - t) / batches


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timings per precision, interleaved; the best is kept")
    ap.add_argument("--acc16-batches", type=int, default=4,
                    help="batches timed per fp16-accumulator path (0: skip that table)")
    a = ap.parse_args()
    for name, v, least in (("--batches", a.batches, 1), ("--warmup", a.warmup, 1), ("--threads", a.threads, 1),
                           ("--rounds", a.rounds, 1),
                           ("--acc16-batches", a.acc16_batches, 0)):
        if v < least:
            ap.error(f"{name}: expected an integer >= {least}, got {v}")
    lb.set_num_threads(a.threads)
    (x, y), _ = lb.datasets.fashion_mnist()
    # rounds interleaved, best of each: the first model of a process pays one-time costs
    # (page faults, oneDNN's JIT) that its own warm-up batches do not all absorb
    lowbit = {}
    for _ in range(a.rounds):
        for p in ("fp32", "fixed8", "int8", "binary"):
            lowbit[p] = min(lowbit.get(p, np.inf), time_lowbit(p, x, y, a.batches, a.warmup))
    brev = {}
    try:
        import torch
        torch.set_num_threads(a.threads)
        import brevitas
        brev = {p: time_brevitas(p, x, y, a.batches, a.warmup) for p in ("fp32", "fixed8", "binary")}
        print(f"torch {torch.__version__}, brevitas {brevitas.__version__}")
    except ImportError as e:
        print(f"Brevitas comparison skipped ({e}); pip install brevitas")
    print(f"lowbit {lb.__version__}, {lb.build_info()}")
    print(f"{'precision':<10}{'lowbit ms/step':>16}{'vs lowbit fp32':>16}{'target':>10}"
          f"{'brevitas ms/step':>18}{'lowbit speedup':>16}")
    for p in ("fp32", "fixed8", "int8", "binary"):
        r = lowbit[p] / lowbit["fp32"]
        target = "" if p == "fp32" else ("<= 1.2 " + ("PASS" if r <= 1.2 else "BELOW"))
        b = brev.get(p)
        bs = f"{b * 1e3:18.1f}{b / lowbit[p]:15.2f}x" if b else ""
        print(f"{p:<10}{lowbit[p] * 1e3:16.1f}{r:15.2f}x{target:>10}{bs}")

    if a.acc16_batches == 0:
        return
    kernel = lb.kernels.info()["fp16_accum"]
    acc16 = {}
    for path in ("simulate", "auto"):
        was = lb.kernels.fp16_accum_path(path)
        acc16[path] = time_lowbit(fp16_accumulators(), x, y, a.acc16_batches, 1)
        lb.kernels.fp16_accum_path(was)
    from lowbit.experiments import cpu_model
    print(f"fp16 with fp16 accumulators, LeNet train step (forward + backward + Adam), {cpu_model()}")
    print(f"{'path':<22}{'ms/step':>10}{'ms/img':>10}{'speedup':>10}")
    for path, name in (("simulate", "simulation (float64)"), ("auto", f"kernel ({kernel})")):
        t = acc16[path]
        print(f"{name:<22}{t * 1e3:10.1f}{t / BATCH * 1e3:10.3f}{acc16['simulate'] / t:9.2f}x")


if __name__ == "__main__":
    main()
