#!/usr/bin/env python
"""Training-throughput benchmark: lowbit vs PyTorch (CPU), same architecture, same run.

Measures images/s of a full training step (forward, backward, optimizer update) at
batch 128 with the same number of threads for both frameworks, and prints the ratio
lowbit/torch per model next to the targets from the issue:

    LeNet      (S0 LeNet, Fashion-MNIST 1x28x28, Adam 1e-3)               ratio >= 1.5
    ResNet-20  (He et al. CIFAR version, Fashion-MNIST padded to 3x32x32,
                SGD lr 0.1 momentum 0.9)                                   ratio >= 1.0

lowbit is timed with ``Model.fit`` (verbose=0) over exactly N batches after a separate
warm-up ``fit`` over W batches; the wall-clock time of the timed ``fit`` call is used.
PyTorch is timed with a plain ``model.train()`` loop over the same N batches (data
pre-converted to tensors), after W warm-up steps. A target that is missed is reported
as BELOW; the script always exits 0.

Usage (development tree):
    cd /tmp && PYTHONPATH=/work/main/python /work/main/.venv/bin/python \
        /work/main/benchmarks/bench_train.py [--batches 40] [--warmup 3] [--threads 2] \
        [--models lenet,resnet20]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback

import numpy as np

import lowbit as lb

try:
    import torch
    import torch.nn as nn
except ImportError:  # lowbit numbers only
    torch = None

BATCH = 128
TARGETS = {"lenet": 1.5, "resnet20": 1.0}
TITLES = {"lenet": "LeNet", "resnet20": "ResNet-20"}


# --------------------------------------------------------------------------
# lowbit models
# --------------------------------------------------------------------------

def resnet20(input_shape=(3, 32, 32), num_classes=10, seed=0):
    """ResNet-20 (He et al. 2016, CIFAR version) with the functional API: conv3x3 16 +
    BN + ReLU, 3 stages x 3 BasicBlocks (16/32/64 channels), stride 2 and a 1x1 conv +
    BN projection shortcut at the first block of stages 2 and 3, global average pool,
    Dense softmax. Convolutions have no bias."""
    L = lb.layers

    def conv_bn(h, filters, kernel, strides=1):
        h = L.Conv2D(filters, kernel, strides=strides, padding="same" if kernel > 1 else "valid",
                     use_bias=False, kernel_initializer="he_normal")(h)
        return L.BatchNormalization()(h)

    def basic_block(h, filters, strides):
        y = L.ReLU()(conv_bn(h, filters, 3, strides))
        y = conv_bn(y, filters, 3, 1)
        shortcut = conv_bn(h, filters, 1, strides) if strides != 1 else h
        return L.ReLU()(L.Add()([y, shortcut]))

    inp = lb.Input(input_shape)
    h = L.ReLU()(conv_bn(inp, 16, 3))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            h = basic_block(h, filters, 2 if (stage > 0 and block == 0) else 1)
    h = L.GlobalAveragePooling2D()(h)
    out = L.Dense(num_classes, activation="softmax")(h)
    return lb.Model(inp, out, name="resnet20", seed=seed)


def lowbit_model(name):
    if name == "lenet":
        m = lb.models.lenet(input_shape=(1, 28, 28), num_classes=10, seed=0)
        m.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    else:
        m = resnet20(seed=0)
        m.compile(lb.optimizers.SGD(0.1, momentum=0.9), "categorical_crossentropy", metrics=["accuracy"])
    return m


# --------------------------------------------------------------------------
# PyTorch twins
# --------------------------------------------------------------------------

def torch_lenet():
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 48, 5), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1200, 256), nn.ReLU(),
        nn.Linear(256, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


if torch is not None:
    class _BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                              nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + self.shortcut(x))

    class _ResNet20(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(16, eps=1e-3, momentum=0.01), nn.ReLU())
            blocks, cin = [], 16
            for stage, cout in enumerate((16, 32, 64)):
                for b in range(3):
                    blocks.append(_BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, num_classes)
            for mod in self.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def torch_model(name):
    torch.manual_seed(0)
    if name == "lenet":
        m = torch_lenet()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    else:
        m = _ResNet20()
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    return m, opt


# --------------------------------------------------------------------------
# Data and timing
# --------------------------------------------------------------------------

def load_data(name, n_images):
    (x, y), _ = lb.datasets.fashion_mnist()
    if name == "resnet20":
        x = lb.datasets.to_rgb(lb.datasets.pad_to(x, 32))
    if n_images > len(x):  # more batches than one epoch: repeat the data
        reps = -(-n_images // len(x))
        x, y = np.concatenate([x] * reps), np.concatenate([y] * reps)
    return np.ascontiguousarray(x[:n_images], dtype=np.float32), np.ascontiguousarray(y[:n_images], dtype=np.int64)


def bench_lowbit(name, x, y, warmup, batches):
    m = lowbit_model(name)
    w = warmup * BATCH
    if warmup > 0:
        m.fit(x[:w], y[:w], batch_size=BATCH, epochs=1, verbose=0, seed=0)
    xs, ys = x[w:w + batches * BATCH], y[w:w + batches * BATCH]
    t0 = time.perf_counter()
    h = m.fit(xs, ys, batch_size=BATCH, epochs=1, verbose=0, seed=0)
    dt = time.perf_counter() - t0
    return dict(seconds=dt, img_s=batches * BATCH / dt, loss=float(h.history["loss"][-1]),
                params=int(m.count_params()))


def bench_torch(name, x, y, warmup, batches):
    m, opt = torch_model(name)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    xb = [xt[i * BATCH:(i + 1) * BATCH] for i in range(warmup + batches)]
    yb = [yt[i * BATCH:(i + 1) * BATCH] for i in range(warmup + batches)]
    m.train()

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(m(xb[i]), yb[i])
        loss.backward()
        opt.step()
        return loss

    for i in range(warmup):
        step(i)
    total = 0.0
    t0 = time.perf_counter()
    for i in range(warmup, warmup + batches):
        total += step(i).item()
    dt = time.perf_counter() - t0
    # count like Keras/lowbit: parameters plus BatchNorm moving mean/variance
    params = sum(p.numel() for p in m.parameters())
    params += sum(b.numel() for n, b in m.named_buffers() if n.endswith(("running_mean", "running_var")))
    return dict(seconds=dt, img_s=batches * BATCH / dt, loss=total / batches, params=params)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=40, help="timed batches of 128 per model (default 40)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up batches per model (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both frameworks (default 2)")
    ap.add_argument("--models", default="lenet,resnet20", help="comma-separated: lenet,resnet20")
    args = ap.parse_args(argv)
    if args.batches < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("need --batches >= 1, --warmup >= 0, --threads >= 1")
    models = [s.strip().lower().replace("-", "") for s in args.models.split(",") if s.strip()]
    for s in models:
        if s not in TARGETS:
            ap.error(f"unknown model {s!r} (choose from {', '.join(TARGETS)})")

    lb.set_num_threads(args.threads)
    print(f"python {platform.python_version()}  numpy {np.__version__}  lowbit {lb.__version__}")
    print(f"lowbit.build_info(): {lb.build_info()}")
    if torch is not None:
        torch.set_num_threads(args.threads)
        print(f"torch {torch.__version__}  (threads {torch.get_num_threads()})")
    else:
        print("torch: NOT INSTALLED - reporting lowbit numbers only (no ratios)")
    print(f"batch {BATCH}, warmup {args.warmup} batches, timed {args.batches} batches, threads {args.threads}")
    print()

    rows, other_load = [], []
    for name in models:
        x, y = load_data(name, (args.warmup + args.batches) * BATCH)
        res = {}
        for fw, fn in (("lowbit", bench_lowbit), ("torch", bench_torch if torch is not None else None)):
            if fn is None:
                continue
            try:
                snap = _cpu_snapshot()
                r = fn(name, x, y, args.warmup, args.batches)
                other = _other_cores(snap, _cpu_snapshot())
                if other is not None:
                    other_load.append(other)
                res[fw] = r
                print(f"  {TITLES[name]:<9} {fw:<6}: {r['seconds']:7.2f} s, {1e3 * r['seconds'] / args.batches:8.1f} ms/batch, "
                      f"{r['img_s']:8.1f} img/s, mean loss {r['loss']:.4f}, {r['params']:,} params"
                      + (f", other procs {other:.2f} cores" if other is not None else ""), flush=True)
            except Exception:  # report and continue; the benchmark never fails
                print(f"  {TITLES[name]:<9} {fw:<6}: FAILED")
                traceback.print_exc(file=sys.stdout)
        rows.append((name, res))

    print()
    hdr = f"{'model':<10} | {'lowbit img/s':>12} | {'torch img/s':>11} | {'ratio':>6} | {'target':>7} | status"
    print(hdr)
    print("-" * len(hdr))
    for name, res in rows:
        lbv = res.get("lowbit", {}).get("img_s")
        tv = res.get("torch", {}).get("img_s")
        ratio = lbv / tv if (lbv and tv) else None
        status = "n/a" if ratio is None else ("PASS" if ratio >= TARGETS[name] else "BELOW")
        fmt = lambda v, w, p: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"
        print(f"{TITLES[name]:<10} | {fmt(lbv, 12, 1)} | {fmt(tv, 11, 1)} | {fmt(ratio, 6, 2)} | "
              f"{'>= ' + format(TARGETS[name], '.1f'):>7} | {status}")
    if max(other_load, default=0.0) > 0.25:
        print()
        print(f"WARNING: other processes used up to {max(other_load):.2f} cores during the run; with "
              f"{os.cpu_count()} cores the timings are unreliable (threads contend) - rerun on an idle machine.")
    return 0


def _cpu_snapshot():
    """(wall s, busy CPU s of the whole machine or None, CPU s of this process)."""
    busy = None
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def _other_cores(a, b):
    """Average number of cores used by other processes between two snapshots."""
    if a[1] is None or b[1] is None or b[0] <= a[0]:
        return None
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]))


if __name__ == "__main__":
    sys.exit(main())
