"""Command line, after the seed's NeuralNetTool (S4 Code 1):

    lowbit train                    train a model (optionally at -q w:i:o), write it
    lowbit evaluate -m M            accuracy of a saved model (optionally quantized by -q)
    lowbit progressive-quantization -m M -q 8:6:6 --phase 10 --msb 98 --strategy qwt
    lowbit output-extraction -m M   kernels and convolution outputs: percentile limits, MSBs
    lowbit summary [-m M]           the layer table and the formats set on layers
    lowbit export -m M              float and integer (quantized) weights per layer, .npz
                     [--packed]     and the deployable inference file (model.export_packed)
    lowbit compare                  models at several precisions (lb.experiments.run): table, plots
    lowbit info                     engine build and CPU features

Every run prints its settings and its elapsed time, and writes ``results.json`` with
the model (``model.npz`` weights + ``model.json`` architecture and layer formats) side by
side in ``--out``. ``-m`` takes such a model.npz; its model.json supplies the model name,
input size and layer formats. Errors in options exit with status 2 and one line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .datasets import NAMES as dataset_names
from .models import __all__ as model_names

MODEL_FILE, ARCH_FILE, RESULTS_FILE = "model.npz", "model.json", "results.json"
PACKED_FILE = "model.packed.lowbit"
STRATEGY_ALIASES = {"qal": "quantize_and_lock", "qwt": "quantize_while_train", "grl": "gradual_resolution_loss"}


class UsageError(ValueError):
    """A bad option value found after parsing (exit status 2, like argparse's)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse prints the whole usage)
        self.exit(2, f"lowbit: error: {message}\n")


# ----------------------------------------------------------------------------- inputs
def _load_data(a):
    from . import datasets
    (x, y), (xt, yt) = datasets.load(a.dataset, a.data_root)
    if a.limit:
        x, y = x[:a.limit], y[:a.limit]
    if getattr(a, "val_limit", 0):
        xt, yt = xt[:a.val_limit], yt[:a.val_limit]
    size = a.size or x.shape[-1]
    if size < x.shape[-1]:
        raise UsageError(f"-s/--size: {size} is smaller than the {a.dataset} images ({x.shape[-1]})")
    if size != x.shape[-1]:  # centred zero padding (28x28 -> 32x32 as CIFAR-shaped studies)
        x, xt = datasets.pad_to(x, size), datasets.pad_to(xt, size)
    if a.channels == 3 and x.shape[1] == 1:
        x, xt = datasets.to_rgb(x), datasets.to_rgb(xt)
    return (x, y), (xt, yt)


def _arch(a):
    """The architecture saved beside -m's weights (model.json), or {}."""
    if not getattr(a, "weights", None):
        return {}
    if not os.path.isfile(a.weights):
        raise FileNotFoundError(f"-m/--weights: no file {a.weights}")
    path = os.path.splitext(a.weights)[0] + ".json"
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _settle(a):
    """Fill model, size and channels from -m's model.json unless given; check the rest."""
    arch = _arch(a)
    saved = arch.get("model")
    if a.model is None:
        a.model = saved or "lenet"
    elif saved and saved != a.model:
        raise UsageError(f"--model {a.model}: the weights in {a.weights} are of a {saved}")
    shape = arch.get("input_shape")
    if shape and not a.size:
        a.size = shape[-1]
    if shape and not a.channels:
        a.channels = shape[0]
    a.channels = a.channels or 1
    return arch


def _build(a, x, classes, arch):
    import lowbit as lb
    from . import models
    names = [n for n in getattr(models, "__all__", []) if callable(getattr(models, n, None))]
    if a.model not in names:
        raise UsageError(f"--model: unknown model {a.model!r} (expected one of {', '.join(names)})")
    model = getattr(models, a.model)(input_shape=x.shape[1:], num_classes=classes, seed=a.seed)
    opt = {"adam": lb.optimizers.Adam, "sgd": lb.optimizers.SGD, "adadelta": lb.optimizers.Adadelta,
           "rmsprop": lb.optimizers.RMSprop}[a.optimizer](learning_rate=a.lr)
    model.compile(opt, a.loss, metrics=["accuracy"])
    if arch.get("layer_formats"):
        # by position: the same model function may number its unnamed layers differently
        saved = arch.get("kernel_layers") or list(arch["layer_formats"])
        now = [k.name for k in lb.quantize.kernel_layers(model)]
        if len(saved) != len(now):
            raise UsageError(f"-m/--weights: {a.weights} has {len(saved)} layers with kernels, "
                             f"{a.model} has {len(now)}")
        lb.quantize.apply_layer_formats(model, {n: arch["layer_formats"][o] for o, n in zip(saved, now)
                                                if o in arch["layer_formats"]})
    if getattr(a, "weights", None):
        model.load_weights(a.weights)
    return model


def _resolutions(text, opt="-q"):
    from .quantize import _resolutions
    try:
        return _resolutions(text, opt)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _msb(text):
    """--msb: 'auto', a percentile (95, 98, 99.9, 99.99) or generic w:i:o MSB exponents."""
    if text == "auto":
        return "auto"
    if ":" in text:
        try:
            parts = tuple(int(v) for v in text.split(":"))
        except ValueError:
            raise UsageError(f"--msb: expected 'auto', a percentile or w:i:o integers, got {text!r}") from None
        if len(parts) != 3:
            raise UsageError(f"--msb: expected three MSB exponents w:i:o, got {text!r}")
        return parts
    try:
        p = float(text)
    except ValueError:
        raise UsageError(f"--msb: expected 'auto', a percentile or w:i:o integers, got {text!r}") from None
    if not 50 < p <= 100:
        raise UsageError(f"--msb: expected a percentile in (50, 100], got {text}")
    return p


def _need_weights(a):
    if not a.weights:
        raise UsageError(f"{a.cmd}: needs a trained model, -m/--weights model.npz")


def _quantize(a, model, x):
    """-q on evaluate/train: static on-model quantization of every kernel layer."""
    import lowbit as lb
    if not a.q:
        return None
    return lb.quantize.quantize_layers(model, _resolutions(a.q), msb=_msb(a.msb), x=x[:a.calibration_samples],
                                       scheme=a.scheme)


# ---------------------------------------------------------------------------- outputs
def _out(a, name):
    """A path in the output folder (created on first use, so a failed run leaves none)."""
    os.makedirs(a.out, exist_ok=True)
    return os.path.join(a.out, name)


def _save_model(a, model):
    import lowbit as lb
    model.save_weights(_out(a, MODEL_FILE))
    arch = {"model": a.model, "input_shape": list(model.input_shape), "num_classes": int(model.output_shape[0]),
            "kernel_layers": [k.name for k in lb.quantize.kernel_layers(model)],
            "layer_formats": lb.quantize.layer_formats(model), "dataset": a.dataset}
    with open(os.path.join(a.out, ARCH_FILE), "w") as f:
        json.dump(arch, f, indent=1)


def _finish(a, t0, results, model=None):
    import lowbit as lb
    from .experiments import cpu_name
    elapsed = time.perf_counter() - t0
    if model is not None:
        _save_model(a, model)
    doc = {"command": a.cmd, "settings": _settings(a), "elapsed_s": round(elapsed, 3), "cpu": cpu_name(),
           "lowbit": lb.__version__, "model": MODEL_FILE if model is not None else None, "results": results}
    with open(_out(a, RESULTS_FILE), "w") as f:
        json.dump(doc, f, indent=1, default=_jsonable)
    print(f"elapsed: {elapsed:.1f} s")
    print(f"results: {os.path.join(a.out, RESULTS_FILE)}" +
          (f"; model: {os.path.join(a.out, MODEL_FILE)}" if model is not None else ""))
    return 0


def _jsonable(v):
    import numpy as np
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return str(v)


def _settings(a):
    return {k: v for k, v in sorted(vars(a).items()) if k not in ("func",)}


def _start(a):
    if a.out is None:
        a.out = os.path.join("lowbit-runs", f"{a.cmd}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"lowbit {a.cmd}")
    for k, v in _settings(a).items():
        if k != "cmd":
            print(f"  {k}: {v}")
    return time.perf_counter()


def _prepare(a):
    """Settings check, data, model: the common start of the model commands."""
    import lowbit as lb
    arch = _settle(a)
    if a.threads:
        lb.set_num_threads(a.threads)
    t0 = _start(a)
    (x, y), (xt, yt) = _load_data(a)
    classes = int(max(y.max(), yt.max())) + 1
    model = _build(a, x, classes, arch)
    return t0, (x, y), (xt, yt), model


# ---------------------------------------------------------------------------- commands
def cmd_train(a):
    t0, (x, y), (xt, yt), model = _prepare(a)
    quant = _quantize(a, model, x)
    if a.verbose > 1:
        model.summary()
    h = model.fit(x, y, batch_size=a.batch_size, epochs=a.epochs, validation_data=(xt, yt), seed=a.seed,
                  verbose=1 if a.verbose else 0)
    print(f"{'epoch':>5} {'loss':>8} {'accuracy':>9} {'val_loss':>9} {'val_acc':>8} {'time_s':>7} {'img/s':>7}")
    for e in range(len(h.history["loss"])):
        hh = {k: v[e] for k, v in h.history.items()}
        print(f"{e + 1:>5} {hh['loss']:>8.4f} {hh['accuracy']:>9.4f} {hh['val_loss']:>9.4f} "
              f"{hh['val_accuracy']:>8.4f} {hh['epoch_time']:>7.1f} {len(x) / hh['epoch_time']:>7.0f}")
    final = h.history["val_accuracy"][-1] if h.history.get("val_accuracy") else None
    if final is not None:
        print(f"final test accuracy: {final * 100:.2f}%")
    if a.save:
        model.save_weights(a.save)
        print(f"weights written to {a.save}")
    return _finish(a, t0, {"history": h.history, "test_accuracy": final, "quantization": quant}, model)


def cmd_evaluate(a):
    t0, (x, _), (xt, yt), model = _prepare(a)
    quant = _quantize(a, model, x)
    r = model.evaluate(xt, yt, batch_size=a.batch_size)
    print(f"test accuracy: {r['accuracy'] * 100:.2f}%  loss: {r['loss']:.4f}  ({len(xt)} images)")
    return _finish(a, t0, {"accuracy": r["accuracy"], "loss": r["loss"], "samples": len(xt), "quantization": quant},
                   model)


def cmd_progressive(a):
    import lowbit as lb
    strategy = a.strategy
    bits, msb = _resolutions(a.q or "8:6:6"), _msb(a.msb)
    t0, train, val, model = _prepare(a)
    ckpt = a.checkpoint or os.path.join(a.out, "checkpoints")
    order = a.order if a.order in lb.quantize.ORDERS else [u.strip() for u in a.order.split(",")]
    h = lb.quantize.progressive(model, train, val, strategy=strategy, resolutions=bits, msb=msb,
                                epochs_per_layer=a.phase, order=order, relax_epochs=a.relax, scheme=a.scheme,
                                recalibrate=a.recalibrate, learning_rate="cosine" if a.cosine else None,
                                batch_size=a.batch_size, calibration_samples=a.calibration_samples,
                                checkpoint_dir=ckpt, seed=a.seed, verbose=1 if a.verbose else 0)
    print(h)
    print(f"final test accuracy: {h.final_accuracy * 100:.2f}% (float model: {h.rows[0]['val_accuracy'] * 100:.2f}%)")
    if a.plot:
        h.plot(_out(a, "progressive.png"), title=f"{a.model}: {strategy} {_bits_label(bits)}")
    return _finish(a, t0, {"history": h.to_dict(), "final_accuracy": h.final_accuracy,
                           "float_accuracy": h.rows[0]["val_accuracy"]}, model)


def _bits_label(bits):
    return "-".join("f" if b is None else str(b) for b in bits)


def cmd_output_extraction(a):
    import lowbit as lb
    t0, _, (xt, _), model = _prepare(a)
    stats = lb.quantize.extract(model, xt[:a.samples], histogram=a.histogram)
    stats.save(_out(a, "extraction.npz"))
    tables = {role: lb.quantize.percentile_limits(stats, role=role) for role in ("kernel", "output")}
    msbs = lb.quantize.msb_table(stats)
    for t in list(tables.values()) + [msbs]:
        print(t)
    if a.plot:
        for role, t in tables.items():
            lb.plots.plot_value_histogram(stats, role, path=_out(a, f"{role}_histogram.png"))
            lb.plots.plot_percentile_limits(t, path=_out(a, f"{role}_limits.png"))
    return _finish(a, t0, {"samples": int(min(a.samples, len(xt))), "extraction": "extraction.npz",
                           **{f"{r}_limits": t.to_dict() for r, t in tables.items()}, "msb": msbs.to_dict()}, model)


def cmd_summary(a):
    import lowbit as lb
    t0, _, _, model = _prepare(a)
    table = model.summary()
    formats = lb.quantize.layer_formats(model)
    for name, fm in formats.items():
        print(f"{name}: " + ", ".join(f"{r} {lb.formats.from_config(c)!r}" for r, c in fm.items()))
    results = {"params": model.count_params(), "layer_formats": formats}
    if hasattr(table, "rows"):  # lowbit.summary.Summary: per-layer rows and totals
        results["summary"] = {"rows": table.rows, "totals": table.totals}
    return _finish(a, t0, results, model)


def cmd_export(a):
    import numpy as np
    import lowbit as lb
    t0, _, _, model = _prepare(a)
    arrays, layers = {}, {}
    weights = lb.quantize._layer_params(model)
    for k in lb.quantize.kernel_layers(model):
        w = weights[k.name][0]
        arrays[f"{k.name}/kernel"] = w
        if k.use_bias:
            arrays[f"{k.name}/bias"] = weights[k.name][1]
        entry = {"kernel_shape": list(w.shape)}
        f = k.weight_format
        if isinstance(f, (lb.formats.Fixed, lb.formats.Int)):
            # integer codes k and grid steps: w_q = k * step (per output channel for Int)
            rows = w.shape[0] if w.ndim == 4 else 1
            q = f.quantize(w, rows)
            step = np.asarray(f.last_step, np.float64)
            codes = np.rint(q.reshape(len(step), -1) / np.where(step > 0, step, 1)[:, None]).reshape(w.shape)
            dtype = np.int8 if f.bits <= 8 else np.int16 if f.bits <= 16 else np.int32
            arrays[f"{k.name}/kernel_codes"] = codes.astype(dtype)
            arrays[f"{k.name}/kernel_step"] = step.astype(np.float32)
            entry.update(format=f.config(), bits=f.bits)
        layers[k.name] = entry
    path = _out(a, "export.npz")
    np.savez(path, **arrays)
    print(f"exported {len(layers)} layers ({sum('format' in e for e in layers.values())} with integer kernels) "
          f"to {path}")
    results = {"export": "export.npz", "layers": layers}
    if a.packed:  # the deployable inference file (lb.load_packed), weights in their formats
        stored = sum(model.export_packed(_out(a, PACKED_FILE)).values())
        fp32 = 4 * model.count_params()
        print(f"packed inference model: {_out(a, PACKED_FILE)}, weights {stored:,} bytes "
              f"(fp32 {fp32:,}, {fp32 / stored:.2f}x smaller)")
        results.update(packed=PACKED_FILE, packed_weight_bytes=stored, float32_bytes=fp32)
    return _finish(a, t0, results, model)


def _names(csv):
    return [v.strip() for v in csv.split(",") if v.strip()]


def cmd_compare(a):
    """Train models at several precisions with the same seed and data (lb.experiments.run):
    the results table, and optionally the curves and bar plots."""
    from . import experiments, plots
    res = experiments.run(_names(a.models), _names(a.precisions), data=a.dataset, data_root=a.data_root,
                          epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, optimizer="adam",
                          learning_rate=a.lr, loss=a.loss, train_limit=a.limit or None,
                          test_limit=a.test_limit or None, results_dir=a.results_dir or None, verbose=a.verbose,
                          title=f"{a.dataset}: {a.epochs} epoch(s), "
                                f"{'first ' + str(a.limit) if a.limit else 'all'} training images")
    print(res)
    for path, plot in ((a.plot, plots.plot_curves), (a.bars, plots.plot_bars)):
        if path:
            import matplotlib.pyplot as plt
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            plt.close(plot(res, path=path))
            print(f"plot written to {path}")
    return 0


def cmd_info(a):
    import lowbit as lb
    for k, v in lb.build_info().items():
        print(f"{k}: {v}")
    info = lb.kernels.info()
    for fam in ("binary", "int8", "bf16", "fp16"):
        why = info.get(f"{fam}_simulated_because")
        print(f"{fam} kernels: {info[fam]}" + (f" ({why})" if why else ""))
    return 0


# ----------------------------------------------------------------------------- parser
def _int_at_least(lo, what):
    def parse(v):
        try:
            n = int(v)
        except ValueError:
            n = None
        if n is None or n < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}")
        return n
    return parse


_positive = _int_at_least(1, "a positive integer")
_count = _int_at_least(0, "an integer >= 0")


def _common():
    """Options shared by the model commands (the seed's -f -d -s -c -m -e -q --msb -v)."""
    p = _Parser(add_help=False)
    p.add_argument("-d", "--dataset", choices=dataset_names, default="fashion_mnist")
    p.add_argument("-f", "--data-root", default=None, help="datasets folder (default: the standard places)")
    p.add_argument("-s", "--size", type=_positive, default=None, help="image size (zero-padded, e.g. 28 -> 32)")
    p.add_argument("-c", "--channels", type=_positive, default=None, help="1, or 3 to replicate gray images")
    p.add_argument("--model", default=None, help="model of lb.models (default: from -m's model.json, else lenet)")
    p.add_argument("-m", "--weights", default=None, help="trained model to load (a model.npz written by lowbit)")
    p.add_argument("-q", default=None, metavar="W:I:O", help="quantization resolutions: kernel:input:output bits")
    p.add_argument("--msb", default="auto", help="MSB: auto, a percentile (95, 98, 99.9, 99.99) or w:i:o exponents")
    p.add_argument("--scheme", choices=["s4", "nearest", "per_channel", "per_channel_int", "unsigned_input",
                                        "per_channel_unsigned_input", "unsigned"], default="s4",
                   help="how bits and MSBs become formats (see lowbit.quantize.SCHEMES)")
    p.add_argument("--calibration-samples", type=_positive, default=256)
    p.add_argument("--batch-size", type=_positive, default=128)
    p.add_argument("--optimizer", choices=["adam", "sgd", "adadelta", "rmsprop"], default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=["categorical_crossentropy", "mse"], default="categorical_crossentropy")
    p.add_argument("--seed", type=_count, default=0)
    p.add_argument("--limit", type=_count, default=0, help="use only the first N training images")
    p.add_argument("--val-limit", type=_count, default=0, help="use only the first N test images")
    p.add_argument("--threads", type=_count, default=0, help="engine threads (default: all)")
    p.add_argument("-o", "--out", default=None, help="folder for results.json and the model (default: lowbit-runs/)")
    p.add_argument("-v", dest="verbose", action="count", default=1, help="more output (-vv: model summary)")
    p.add_argument("--quiet", dest="verbose", action="store_const", const=0, help="no progress bars")
    return p


def parser():
    p = _Parser(prog="lowbit", description="Reduced-precision CNN training and quantization on a C++ engine.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    common = _common()
    t = sub.add_parser("train", parents=[common], help="train a model and report per-epoch loss/accuracy")
    t.add_argument("-e", "--epochs", type=_count, default=2)
    t.add_argument("--save", default=None, help="also write the trained weights (.npz) here")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", parents=[common], help="accuracy of a trained model (with -q: quantized)")
    e.set_defaults(func=cmd_evaluate)
    q = sub.add_parser("progressive-quantization", parents=[common],
                       help="quantize a trained model layer by layer while fine-tuning (S4 section 5.5)")
    q.add_argument("--phase", type=_count, default=1, help="epochs per layer (per phase)")
    q.add_argument("--strategy", default="quantize_while_train",
                   help="quantize_while_train (qwt), quantize_and_lock (qal), gradual_resolution_loss (grl)")
    q.add_argument("--order", default="input_to_output",
                   help="input_to_output, output_to_input, random, or unit names separated by commas")
    q.add_argument("-r", "--relax", type=_count, default=0, help="epochs of training after the last phase")
    q.add_argument("--recalibrate", action="store_true",
                   help="re-choose the MSBs of the units quantized before at every phase (needs --msb auto or a %%)")
    q.add_argument("--cosine", action="store_true", help="per-step cosine learning rate from --lr to 0 over the run")
    q.add_argument("--checkpoint", default=None, help="checkpoint folder (default: <out>/checkpoints); resumes")
    q.add_argument("--plot", action="store_true", help="write progressive.png (S4 Figures 22-25)")
    q.set_defaults(func=cmd_progressive)
    x = sub.add_parser("output-extraction", parents=[common],
                       help="kernel and convolution-output values: percentile limits and MSBs (S4 5.2)")
    x.add_argument("--samples", type=_positive, default=32, help="test images run through the model")
    x.add_argument("--histogram", action="store_true", help="streaming histograms instead of raw values")
    x.add_argument("--plot", action="store_true", help="write histogram and limit plots (S4 Figures 15-18)")
    x.set_defaults(func=cmd_output_extraction)
    s = sub.add_parser("summary", parents=[common], help="layer table and the number formats set on layers")
    s.set_defaults(func=cmd_summary)
    x = sub.add_parser("export", parents=[common], help="per-layer float and integer (quantized) weights, .npz")
    x.add_argument("--packed", action="store_true",
                   help=f"also write {PACKED_FILE}: the model for inference with weights in their formats "
                        "(lb.load_packed)")
    x.set_defaults(func=cmd_export)
    c = sub.add_parser("compare", help="train models at several precisions (same seed and data): results table "
                                       "(accuracy, time, size, energy estimate) and plots")
    c.add_argument("--models", "--model", dest="models", default="lenet",
                   help=f"comma-separated names in lb.models ({', '.join(model_names)})")
    c.add_argument("--precisions", default="fp32,fp16,bf16,fixed16,fixed8,binary",
                   help="comma-separated precision presets")
    c.add_argument("--plot", default=None, help="write the loss/accuracy curves here (PNG/SVG/PDF)")
    c.add_argument("--bars", default=None, help="write the accuracy/size/energy bars here")
    c.add_argument("--results-dir", default=None,
                   help="store each finished run here; a rerun skips the stored ones")
    c.add_argument("--test-limit", type=_count, default=0, help="use only the first N test images")
    c.add_argument("-d", "--dataset", choices=dataset_names, default="fashion_mnist")
    c.add_argument("-f", "--data-root", default=None)
    c.add_argument("-e", "--epochs", type=_count, default=2)
    c.add_argument("--batch-size", type=_positive, default=128)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--loss", choices=["categorical_crossentropy", "mse"], default="categorical_crossentropy")
    c.add_argument("--seed", type=_count, default=0)
    c.add_argument("--limit", type=_count, default=0)
    c.add_argument("--quiet", dest="verbose", action="store_false")
    c.set_defaults(func=cmd_compare)
    i = sub.add_parser("info", help="engine build and CPU features")
    i.set_defaults(func=cmd_info)
    return p


def _validate(a):
    """Option values argparse cannot check, before any work is done."""
    if a.cmd in ("evaluate", "progressive-quantization", "export"):
        _need_weights(a)
    if getattr(a, "q", None):
        a.q = _bits_label(_resolutions(a.q))
    if getattr(a, "msb", None) is not None:
        _msb(a.msb)
    if a.cmd == "progressive-quantization":
        from .quantize import STRATEGIES
        a.strategy = STRATEGY_ALIASES.get(a.strategy, a.strategy.replace("-", "_"))
        if a.strategy not in STRATEGIES:
            raise UsageError(f"--strategy: expected one of {', '.join(STRATEGIES)} or {', '.join(STRATEGY_ALIASES)}, "
                             f"got {a.strategy!r}")
        if a.recalibrate and isinstance(_msb(a.msb), tuple):
            raise UsageError(f"--recalibrate: chooses MSBs from data; expected --msb auto or a percentile, got {a.msb}")
    if getattr(a, "channels", None) not in (None, 1, 3):
        raise UsageError(f"-c/--channels: expected 1 or 3, got {a.channels}")


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        _validate(a)
        return a.func(a)
    except (ValueError, TypeError, FileNotFoundError) as e:
        msg = " ".join(str(e).split())  # one line
        print(f"lowbit: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
