#!/usr/bin/env python
"""Whole-model inference per precision against lowbit fp32, peers in the same table: LeNet,
ResNet-20 and AlexNet (CIFAR) from lb.models, batch 64, lowbit predict at fp32, bf16, int8,
binary (the preset: XNOR-Net's per-channel scaled weights, on the xnor-popcount kernels
with the scale in their epilogue), next to PyTorch fp32 and
int8 (FX static post-training quantization, x86/fbgemm) and ONNX Runtime fp32 and int8
(quantize_static, QDQ, u8 activations / s8 per-channel weights) of the same network with
the same weights (issue 11).

    python benchmarks/bench_models.py [--models lenet,resnet20,alexnet_cifar] [--threads 2] [--batch 64]
        [--repeat 15] [--precisions fp32,bf16,int8,binary] [--peers torch,onnxruntime,larq]
        [--fit-batches 40] [--agree-samples 1024] [--kernels] [--quick]

Each model is first trained by lowbit at fp32 for --fit-batches batches of 128 on
Fashion-MNIST (padded to 32x32 and repeated to 3 channels for the CIFAR-shaped models),
so that its predictions are not those of a random network; every row then starts from
these weights (post-training quantization, no fine-tuning: the binary rows are expected to
lose accuracy). Without the data set the inputs are random normal and the weights random.

The torch twin is built layer by layer from the lowbit model (its weights copied, TF 'same'
padding reproduced) and must agree with lowbit fp32 predict within 1e-4; ONNX models are
exported from it. All rows run the same batch with the same thread count; calls are
interleaved round-robin (each timed call after an untimed one of the same row) and each
figure is the median of --repeat calls, by wall clock and by the process's CPU time (which
includes OpenMP / thread-pool spin-waits). 'x fp32' is
lowbit fp32's time over the row's (above 1: faster). 'agree' is the fraction of
--agree-samples inputs whose argmax matches lowbit fp32's, 'acc' the accuracy on the
Fashion-MNIST test labels.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import functools
import os
import sys
import tempfile
import warnings

import numpy as np
from tqdm import tqdm

import lowbit as lb
from lowbit.experiments import cpu_model as cpu_name

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import cpu_flags, timed  # noqa: E402

# resnet20 with BN momentum 0.9: after a short fit, 0.99 leaves the moving statistics near their
# initial values and the network near chance (see lb.models.resnet20); inference is the same
MODELS = {"lenet": lb.models.lenet, "resnet20": functools.partial(lb.models.resnet20, bn_momentum=0.9),
          "alexnet_cifar": lb.models.alexnet_cifar}
PEERS = ("torch", "onnxruntime", "larq")
FIT_BATCH = 128
TWIN_TOL = 1e-4  # max |p_torch - p_lowbit| of the fp32 twin's probabilities


PRECISIONS = {"fp32": "fp32", "bf16": "bf16", "int8": "int8", "binary": "binary"}


# ----------------------------------------------------------------------------- data
def load_data(shape, n_eval, n_fit, rng):
    """(x_eval, y_eval or None, x_fit, y_fit or None, source): Fashion-MNIST test images to
    time and compare on, training images to fit and calibrate with; random normal inputs
    when the data set is missing or does not fit the model's input."""
    try:
        (xtr, ytr), (xte, yte) = lb.datasets.fashion_mnist()
    except FileNotFoundError:
        xtr = None
    if xtr is not None and shape == (3, 32, 32):
        pick = lambda x: lb.datasets.to_rgb(lb.datasets.pad_to(x, 32))  # noqa: E731 - new writable arrays
        source = "Fashion-MNIST padded to 3x32x32"
    elif xtr is not None and shape == tuple(xtr.shape[1:]):
        pick = lambda x: np.array(x, np.float32)  # noqa: E731 - writable: torch.from_numpy warns on the cache's
        source = "Fashion-MNIST"
    else:
        x = rng.normal(size=(n_eval + n_fit, *shape)).astype(np.float32)
        return x[:n_eval], None, x[n_eval:], None, "random normal inputs (no Fashion-MNIST of this shape)"
    return pick(xte[:n_eval]), np.asarray(yte[:n_eval]), pick(xtr[:n_fit]), np.asarray(ytr[:n_fit]), source


# ----------------------------------------------------------------------------- lowbit rows
def lowbit_path(model):
    """Where the conv/dense layers ran in the last predict: 'int8:5' (five on the int8
    kernels), 'sim:3' (quantized, simulated on fp32 oneDNN), 'fp32:2' (unquantized)."""
    impl = {r["layer"]: r["impl"] for r in model.kernels() if r["pass"] == "forward" and r["op"] in ("conv2d", "dense")}
    kinds = collections.Counter()
    for layer in model.layers:
        if layer.name not in impl:
            continue
        family = impl[layer.name].split(":", 1)[0]
        if family in ("int8", "bf16", "fp16"):
            kinds[family] += 1
        elif family == "binary":
            kinds["xnor"] += 1
        else:
            kinds["sim" if getattr(layer, "_precision_formats", None) else "fp32"] += 1
    return "+".join(f"{k}:{n}" for k, n in kinds.items())


def lowbit_model(fn, weights, precision):
    m = fn(seed=0)
    m.set_weights(weights)
    m.compile(precision=precision)
    return m


def fit_fp32(m, x, y, batches):
    """A short fp32 training run, so that the rows classify rather than agree on noise."""
    m.compile(lb.optimizers.Adam(1e-3))
    n = min(batches * FIT_BATCH, len(x))
    m.fit(x[:n], y[:n], batch_size=FIT_BATCH, epochs=1, shuffle=False, verbose=1)


# ----------------------------------------------------------------------------- torch twin
def torch_twin(model):
    """A torch.nn.Module computing ``model`` (a lowbit model of Conv2D, Dense, pooling,
    BatchNormalization, activations, Dropout, Flatten and Add layers) with its weights;
    ValueError names a layer it cannot express."""
    import torch
    import torch.nn as nn

    acts = {"relu": nn.ReLU, "softmax": lambda: nn.Softmax(dim=1), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}

    def activation(layer):
        a = getattr(layer, "activation", None) or "linear"
        if a == "linear":
            return []
        if a not in acts:
            raise ValueError(f"torch twin: activation {a!r} of {layer.name} has no torch module here")
        return [acts[a]()]

    def module(layer, x):
        """Torch module(s) for ``layer`` whose input is like ``x`` (a zero sample: TF 'same'
        padding depends on the input size); 'add' and 'flatten' run inline in forward."""
        L, w = lb.layers, layer.get_weights()
        kind = type(layer)
        if kind is L.Conv2D:
            t, b, left, right = lb.kernels.conv_padding(layer.padding, x.shape[2:], layer.kernel_size,
                                                        layer.strides, layer.dilation_rate)
            symmetric = t == b and left == right
            conv = nn.Conv2d(x.shape[1], layer.filters, layer.kernel_size, layer.strides,
                             (t, left) if symmetric else 0, layer.dilation_rate, layer.groups, layer.use_bias)
            conv.weight.data = torch.from_numpy(w[0].copy())
            if layer.use_bias:
                conv.bias.data = torch.from_numpy(w[1].copy())
            pad = [] if symmetric else [nn.ZeroPad2d((left, right, t, b))]  # TF: the extra pixel at the end
            return nn.Sequential(*pad, conv, *activation(layer))
        if kind is L.Dense:
            fc = nn.Linear(w[0].shape[0], layer.units, layer.use_bias)
            fc.weight.data = torch.from_numpy(np.ascontiguousarray(w[0].T))  # lowbit (in, units), torch (out, in)
            if layer.use_bias:
                fc.bias.data = torch.from_numpy(w[1].copy())
            return nn.Sequential(fc, *activation(layer))
        if kind in (L.MaxPooling2D, L.AveragePooling2D):
            if layer.padding != "valid":
                raise ValueError(f"torch twin: {layer.name}: only 'valid' pooling is expressed")
            return (nn.MaxPool2d if kind is L.MaxPooling2D else nn.AvgPool2d)(layer.pool_size, layer.strides)
        if kind is L.GlobalAveragePooling2D:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if kind is L.BatchNormalization:
            bn = (nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d)(x.shape[1], eps=layer.epsilon)
            for p, v in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), w):
                p.data = torch.from_numpy(v.copy())
            return bn
        if kind is L.Dropout:
            return nn.Identity()
        if kind is L.Flatten:
            return "flatten"
        if kind is L.Add:
            return "add"
        if isinstance(layer, L.Activation):
            return nn.Sequential(*activation(layer))
        raise ValueError(f"torch twin: no torch equivalent for {kind.__name__} ({layer.name})")

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = nn.ModuleList()
            self.steps = []  # (module index, 'add' or 'flatten', input positions) per layer
            nodes, self.out = model.topology()  # every layer after its inputs, the input first
            dummy = [torch.zeros(1, *model.input_shape)]
            with torch.no_grad():
                for layer, ins in nodes[1:]:
                    m = module(layer, dummy[ins[0]])
                    if isinstance(m, str):
                        self.steps.append((-1, m, ins))
                    else:
                        self.steps.append((len(self.mods), "", ins))
                        self.mods.append(m.eval())  # the dummy pass must not move BN statistics
                    dummy.append(self._step(self.steps[-1], [dummy[i] for i in ins]))

        def _step(self, step, args):
            index, inline, _ = step
            if inline == "add":
                return args[0] + args[1]
            if inline == "flatten":
                return torch.flatten(args[0], 1)  # NCHW order, as lowbit's Flatten
            return self.mods[index](args[0])

        def forward(self, x):
            vals = [x]
            for step in self.steps:
                vals.append(self._step(step, [vals[i] for i in step[2]]))
            return vals[self.out]

    return Twin().eval()


@contextlib.contextmanager
def quiet():
    """torch.ao.quantization and the TorchScript ONNX exporter warn about their deprecation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def torch_int8(twin, calib):
    """FX static post-training quantization (x86 backend, else fbgemm): per-channel s8
    weights, u8 activations, observers calibrated on ``calib`` batches; the final softmax
    stays fp32 (a u8 softmax's 1/256 steps would tie argmaxes)."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    engines = torch.backends.quantized.supported_engines
    engine = "x86" if "x86" in engines else "fbgemm"
    if engine not in engines:
        raise RuntimeError(f"no x86/fbgemm quantized engine in this build (has {engines})")
    torch.backends.quantized.engine = engine
    with quiet(), torch.no_grad():
        qmap = get_default_qconfig_mapping(engine).set_object_type(torch.nn.Softmax, None)
        prepared = prepare_fx(copy.deepcopy(twin), qmap, example_inputs=(torch.from_numpy(calib[0]),))
        for b in calib:
            prepared(torch.from_numpy(b))
        return convert_fx(prepared), engine


def onnx_models(twin, shape, calib, folder):
    """(fp32 path, int8 path or the reason it failed): the twin exported with a dynamic
    batch axis, and ORT quantize_static of it (QDQ, u8 activations, s8 per-channel
    weights, MinMax calibration on ``calib``, softmax left fp32)."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    fp32 = os.path.join(folder, "model.onnx")
    with quiet():
        torch.onnx.export(twin, (torch.zeros(1, *shape),), fp32, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib)

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"x": b}

    src = fp32
    try:  # ORT's recommended pre-processing (shape inference, graph optimisation)
        from onnxruntime.quantization.shape_inference import quant_pre_process
        src = os.path.join(folder, "model.pre.onnx")
        with quiet():
            quant_pre_process(fp32, src)
    except Exception:  # noqa: BLE001 - optional; quantize the exported model as it is
        src = fp32
    softmax = [n.name for n in onnx.load(src).graph.node if n.op_type == "Softmax"]
    int8 = os.path.join(folder, "model.int8.onnx")
    try:
        with quiet():
            quantize_static(src, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=softmax)
    except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
        return fp32, f"quantize_static failed: {type(e).__name__}: {e}"
    return fp32, int8


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x})[0]


# ----------------------------------------------------------------------------- rows
class Row:
    """A table row: ``run(x)`` -> class probabilities (N, classes) for a float32 batch."""

    def __init__(self, name, path, run, model=None):
        self.name, self.path, self.run, self.model = name, path, run, model
        self.wall = self.cpu = self.agree = self.acc = None


def torch_run(net):
    """Probabilities of a torch module for a numpy batch."""
    import torch

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()
    return run


def peer_rows(a, ref, x_eval, calib, folder, notes):
    """Torch and ONNX Runtime rows of the lowbit fp32 model ``ref``: (name, path, make)
    with ``make(threads)`` -> run; a peer that is missing or fails adds a skip line to
    ``notes`` instead."""
    rows = []
    if "torch" not in a.peers and "onnxruntime" not in a.peers:
        return rows
    try:
        import torch  # noqa: F401
    except ImportError as e:
        notes.append(f"torch and onnxruntime rows skipped: torch not importable ({e}); pip install torch")
        return rows
    twin = torch_twin(ref)
    xb = x_eval[:a.batch]
    diff = float(np.abs(torch_run(twin)(xb) - ref.predict(xb, batch_size=a.batch)).max())
    ok = diff <= TWIN_TOL
    notes.append(f"torch twin vs lowbit fp32 predict: max |p_torch - p_lowbit| = {diff:.2e} "
                 f"({'within' if ok else 'ABOVE'} {TWIN_TOL:g}{'' if ok else ': peer rows not comparable'})")
    if "torch" in a.peers:
        rows.append(("torch/fp32", "aten", lambda threads, run=torch_run(twin): run))
        try:
            qnet, engine = torch_int8(twin, calib)
            rows.append(("torch/int8", f"fx-{engine}", lambda threads, run=torch_run(qnet): run))
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            notes.append(f"torch/int8 skipped: {type(e).__name__}: {e}")
    if "onnxruntime" in a.peers:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            notes.append(f"onnxruntime rows skipped: {e}; pip install onnxruntime onnx")
            return rows
        try:
            fp32, int8 = onnx_models(twin, ref.input_shape, calib, folder)
        except Exception as e:  # noqa: BLE001
            notes.append(f"onnxruntime rows skipped: export failed: {type(e).__name__}: {e}")
            return rows
        rows.append(("onnxruntime/fp32", "ort-cpu", lambda threads: ort_session(fp32, threads)))
        if int8.endswith(".onnx"):
            rows.append(("onnxruntime/int8", "ort-qdq-u8s8", lambda threads: ort_session(int8, threads)))
        else:
            notes.append(f"onnxruntime/int8 skipped: {int8}")
    return rows


def set_threads(n):
    lb.set_num_threads(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def larq_note():
    try:
        import larq_compute_engine  # noqa: F401
    except ImportError:
        return ("larq-compute-engine skipped: not installed (its converter needs TensorFlow and its "
                "benchmark binary is built with Bazel: neither is on this machine)")
    return "larq-compute-engine skipped: importable, but converting a lowbit model to a Keras model is not implemented"


def measure(rows, x, repeat, progress):
    """Round-robin: every row once per round; median wall and CPU seconds per row. Each
    timed call follows an untimed one of the same row: the previous row's idle workers
    (OpenMP, ONNX Runtime's pool) spin a while before they sleep, and would take the
    cores of a timed call that came right after them."""
    for r in rows:
        r.run(x)  # warm-up: graph build, weight preparation, first-touch allocations
    wall, cpu = collections.defaultdict(list), collections.defaultdict(list)
    for _ in tqdm(range(repeat), desc=progress, leave=False, file=sys.stderr):
        for r in rows:
            r.run(x)
            w, c = timed(lambda: r.run(x))
            wall[r.name].append(w)
            cpu[r.name].append(c)
    for r in rows:
        r.wall, r.cpu = float(np.median(wall[r.name])), float(np.median(cpu[r.name]))


def score(rows, x, y, batch):
    """Fraction of argmaxes agreeing with the first row (lowbit fp32), accuracy on ``y``."""
    preds = {r.name: np.concatenate([r.run(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])
             .argmax(1) for r in rows}
    ref = preds[rows[0].name]
    for r in rows:
        r.agree = float((preds[r.name] == ref).mean())
        r.acc = float((preds[r.name] == y).mean()) if y is not None else None


HEAD = (f"{'model':<14}{'row':<20}{'path':<22}{'ms/batch':>10}{'cpu ms':>9}{'img/s':>9}"
        f"{'x fp32 wall':>12}{'x fp32 cpu':>11}{'agree':>7}{'acc':>7}")


def format_row(model, r, base, batch):
    acc = f"{r.acc:7.3f}" if r.acc is not None else f"{'-':>7}"
    return (f"{model:<14}{r.name:<20}{r.path:<22}{r.wall * 1e3:10.2f}{r.cpu * 1e3:9.2f}{batch / r.wall:9.0f}"
            f"{base.wall / r.wall:11.2f}x{base.cpu / r.cpu:10.2f}x{r.agree:7.3f}{acc}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", default="2", help="thread counts, comma-separated (each a table)")
    ap.add_argument("--batch", type=int, default=None, help="images per predict call (default 64; quick 16)")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per row (default 15; quick 3)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--peers", default=",".join(PEERS), help="peers to add (comma-separated; 'none': none)")
    ap.add_argument("--fit-batches", type=int, default=None,
                    help="batches of 128 lowbit fp32 trains on before the rows (default 40; quick 0)")
    ap.add_argument("--agree-samples", type=int, default=None, help="inputs to compare argmaxes on (default 1024; quick 64)")
    ap.add_argument("--calib-batches", type=int, default=4, help="batches calibrating the peers' int8 observers")
    ap.add_argument("--kernels", action="store_true", help="print every lowbit row's kernel table")
    ap.add_argument("--quick", action="store_true", help="tiny settings: a smoke test in seconds")
    a = ap.parse_args(argv)
    for key, full, small in (("batch", 64, 16), ("repeat", 15, 3), ("fit_batches", 40, 0), ("agree_samples", 1024, 64)):
        if getattr(a, key) is None:
            setattr(a, key, small if a.quick else full)
    a.models = [m for m in a.models.split(",") if m]
    a.precisions = [p for p in a.precisions.split(",") if p]
    a.peers = [] if a.peers == "none" else [p for p in a.peers.split(",") if p]
    for what, got, known in (("--models", a.models, MODELS), ("--precisions", a.precisions, PRECISIONS),
                             ("--peers", a.peers, PEERS)):
        bad = [g for g in got if g not in known]
        if bad:
            ap.error(f"{what}: unknown {', '.join(map(repr, bad))} (expected some of {', '.join(known)})")
    if "fp32" not in a.precisions:
        ap.error("--precisions: fp32 is needed (the ratios' reference)")
    try:
        a.threads = [int(t) for t in a.threads.split(",")]
    except ValueError:
        ap.error(f"--threads: expected integers, got {a.threads!r}")
    for key, low in (("batch", 1), ("repeat", 1), ("agree_samples", 1), ("calib_batches", 1), ("fit_batches", 0)):
        if getattr(a, key) < low:
            ap.error(f"--{key.replace('_', '-')}: expected >= {low}, got {getattr(a, key)}")
    if not a.threads or min(a.threads) < 1:
        ap.error(f"--threads: expected integers >= 1, got {a.threads}")
    a.precisions.sort(key=lambda p: p != "fp32")  # the reference first
    return a


def header(a):
    info = lb.kernels.info()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs); ISA: {' '.join(cpu_flags())}")
    print(f"lowbit {lb.__version__}, oneDNN {lb.build_info()['onednn']} (dispatching to "
          f"{lb.build_info()['onednn_cpu_isa']}); binary kernel path: {info['binary']}")
    for f in ("int8", "bf16"):
        why = info.get(f"{f}_simulated_because")
        print(f"{f} layers: {info[f]}" + (f" ({why})" if why else ""))
    if "torch" in a.peers or "onnxruntime" in a.peers:
        try:
            import torch
            print(f"torch {torch.__version__}, quantized engines {torch.backends.quantized.supported_engines}")
        except ImportError:
            pass
    if "onnxruntime" in a.peers:
        try:
            import onnxruntime
            print(f"onnxruntime {onnxruntime.__version__}, CPU execution provider")
        except ImportError:
            pass
    if "larq" in a.peers:
        print(larq_note())
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs: the machine is shared; "
              "wall-clock times include other processes' slices")


def main(argv=None):
    """Runs the benchmark and prints its tables; returns {(model, threads): [Row]}. The
    caller's thread counts (lowbit's, torch's) are restored afterwards: a process that
    trains after a benchmark would otherwise fit at another thread count, which changes
    oneDNN's summation order and so the bits of the result."""
    torch = sys.modules.get("torch")
    before = lb.build_info()["openmp_threads"], (torch.get_num_threads() if torch is not None else None)
    try:
        return _main(argv)
    finally:
        lb.set_num_threads(before[0])
        torch = sys.modules.get("torch")
        if torch is not None and before[1] is not None:
            torch.set_num_threads(before[1])


def _main(argv):
    a = parse_args(argv)
    header(a)
    rng = np.random.default_rng(0)
    n_calib = a.calib_batches * a.batch
    results = {}
    for name in a.models:
        fn = MODELS[name]
        set_threads(a.threads[-1])
        m0 = fn(seed=0)
        shape = tuple(m0.input_shape)
        x_eval, y_eval, x_fit, y_fit, source = load_data(shape, max(a.agree_samples, a.batch),
                                                         max(a.fit_batches * FIT_BATCH, n_calib), rng)
        trained = y_fit is not None and a.fit_batches > 0
        if trained:
            fit_fp32(m0, x_fit, y_fit, a.fit_batches)
        weights = m0.get_weights()
        print(f"\n{name} {shape}, batch {a.batch}, {source}, "
              f"{f'trained on {a.fit_batches} x {FIT_BATCH} images at fp32' if trained else 'initial weights'}")
        models = {p: lowbit_model(fn, weights, PRECISIONS[p]() if callable(PRECISIONS[p]) else PRECISIONS[p])
                  for p in a.precisions}
        calib = [np.ascontiguousarray(x_fit[i * a.batch:(i + 1) * a.batch]) for i in range(a.calib_batches)]
        xb = np.ascontiguousarray(x_eval[:a.batch])
        notes, scores = [], None
        with tempfile.TemporaryDirectory() as folder:
            peers = peer_rows(a, models["fp32"], x_eval, calib, folder, notes)
            for threads in a.threads:
                set_threads(threads)
                rows = [Row(f"lowbit/{p}", "", lambda x, m=m: m.predict(x, batch_size=len(x)), m)
                        for p, m in models.items()]
                rows += [Row(n, path, make(threads)) for n, path, make in peers]
                measure(rows, xb, a.repeat, f"{name}, {threads} thread(s)")
                for r in rows:
                    if r.model is not None:
                        r.path = lowbit_path(r.model)
                        if a.kernels:
                            print(f"{r.name}:\n{r.model.kernels()}")
                if scores is None:  # thread counts change the timing, not the argmaxes
                    score(rows, x_eval[:a.agree_samples], None if y_eval is None else y_eval[:a.agree_samples],
                          a.batch)
                    scores = {r.name: (r.agree, r.acc) for r in rows}
                for r in rows:
                    r.agree, r.acc = scores[r.name]
                print(f"{threads} thread(s)\n{HEAD}")
                for r in rows:
                    print(format_row(name, r, rows[0], a.batch))
                results[(name, threads)] = rows
        for n in notes:
            print(f"  {n}")
    return results


if __name__ == "__main__":
    main()
