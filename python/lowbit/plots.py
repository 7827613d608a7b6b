"""Plots of training runs and studies (matplotlib, imported lazily: ``pip install
lowbit[plot]``). Each function returns the Figure and, with ``path``, also saves it
(PNG, SVG, PDF); every title names the CPU the figures were measured on.

- :func:`plot_histories` - loss and accuracy per epoch for several runs of one model.
- :func:`plot_curves` - a study's curves (``lb.experiments.Results``): one column per
  model, loss and accuracy rows, one colour per precision, training dashed and
  validation solid.
- :func:`plot_bars` - accuracy, model size and energy estimate per precision, grouped
  by model.
- :func:`plot_weight_histograms` - the latent (fp32 master) weights of a layer beside
  their values in the layer's weight format, one panel per model / precision.
- :func:`plot_value_histogram`, :func:`plot_percentile_limits`, :func:`plot_progressive`
  - S4's quantization study (``lb.quantize``): all kernel or convolution-output values
  with percentile limits, the limits per layer, progressive-quantization histories.
"""
from __future__ import annotations

import numpy as np

__all__ = ["plot_histories", "plot_curves", "plot_bars", "plot_weight_histograms", "plot_value_histogram",
           "plot_percentile_limits", "plot_progressive"]

# bar metrics: row key -> (axis label, scale)
BAR_METRICS = {
    "accuracy": ("test accuracy (%)", 100.0),
    "best_accuracy": ("best test accuracy (%)", 100.0),
    "size_bytes": ("model size (KiB)", 1 / 1024),
    "energy_inference_uJ": ("energy per image, estimate (uJ)", 1.0),
    "energy_train_J": ("training energy, estimate (J)", 1.0),
    "epoch_time_s": ("time per epoch (s)", 1.0),
    "images_per_s": ("training images / s", 1.0),
    "peak_mem_mb": ("peak memory growth (MiB)", 1.0),
}


def _pyplot():
    # no matplotlib.use(): Jupyter's inline backend must stay; without a display
    # matplotlib falls back to Agg by itself
    import matplotlib.pyplot as plt
    return plt


def _finish(fig, title, path, cpu=None):
    from .experiments import cpu_name
    fig.suptitle(f"{title + chr(10) if title else ''}CPU: {cpu or cpu_name()}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _integer_epochs(ax):
    from matplotlib.ticker import MaxNLocator
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_histories(runs, metrics=("loss", "val_loss", "accuracy", "val_accuracy"), path=None, title=None):
    """``runs``: {label: History or its ``.history`` dict}. One panel per metric, one line
    per run."""
    if not runs:
        raise ValueError("plot_histories: no runs to plot")
    hists = {k: getattr(v, "history", v) for k, v in runs.items()}
    metrics = [m for m in metrics if any(m in h for h in hists.values())]
    if not metrics:
        raise ValueError("plot_histories: none of the metrics is in the histories")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, h in hists.items():
            if metric in h:
                ys = h[metric]
                ax.plot(range(1, len(ys) + 1), ys, marker="o", label=label)
        ax.set_title(metric.replace("_", " "))
        _integer_epochs(ax)
    axes[0][0].legend()
    return _finish(fig, title, path)


def _check_results(results, what):
    from .experiments import Results
    if not isinstance(results, Results):
        raise TypeError(f"{what}: expected lb.experiments.Results, got {type(results).__name__}")
    if not len(results):
        raise ValueError(f"{what}: the results table is empty")
    return results


def _run_labels(results):
    """Line / bar label per row: the precision, plus the loss when a study used several."""
    several = len({r["loss_fn"] for r in results.rows}) > 1
    return [r["precision"] + (f" ({r['loss_fn'].replace('categorical_crossentropy', 'CE')})" if several else "")
            for r in results.rows]


def _cpu(results):
    return results.rows[0].get("cpu")


def plot_curves(results, path=None, title=None):
    """Loss (top) and accuracy (bottom) per epoch, one column per model, one colour per
    precision; training dashed, validation (test split) solid."""
    _check_results(results, "plot_curves")
    plt = _pyplot()
    models = results.model_labels
    labels = _run_labels(results)
    colour = {lab: f"C{i % 10}" for i, lab in enumerate(dict.fromkeys(labels))}
    fig, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 6.4), squeeze=False)
    for col, m in enumerate(models):
        for row, label in zip(results.rows, labels):
            if row["model"] != m:
                continue
            h = row["history"]
            ep = range(1, len(h["loss"]) + 1)
            for r, (train, val) in enumerate((("loss", "val_loss"), ("accuracy", "val_accuracy"))):
                ax = axes[r][col]
                ax.plot(ep, h[train], ls="--", color=colour[label], alpha=0.8)
                ax.plot(ep, h[val], ls="-", marker="o", ms=3, color=colour[label], label=label)
        axes[0][col].set_title(m)
        n = max(len(r["history"]["loss"]) for r in results.rows if r["model"] == m)
        for r, name in enumerate(("loss", "accuracy")):
            axes[r][col].set_ylabel(name)
            axes[r][col].set_xlim(0.5, n + 0.5)
            _integer_epochs(axes[r][col])
    axes[0][0].legend(fontsize=8, title="solid: test, dashed: train", title_fontsize=7)
    return _finish(fig, title or results.title, path, _cpu(results))


def plot_bars(results, metrics=("accuracy", "size_bytes", "energy_inference_uJ"), path=None, title=None,
              log=("size_bytes", "energy_inference_uJ", "energy_train_J")):
    """One panel per metric (keys of ``BAR_METRICS``), models along x, one bar per
    precision; metrics in ``log`` on a log axis. Energy is labelled an estimate."""
    _check_results(results, "plot_bars")
    unknown = [m for m in metrics if m not in BAR_METRICS]
    if unknown or not metrics:
        raise ValueError(f"plot_bars: unknown metrics {unknown} (expected some of {', '.join(BAR_METRICS)})")
    plt = _pyplot()
    models = results.model_labels
    labels = _run_labels(results)
    runs = list(dict.fromkeys(labels))
    width = 0.8 / len(runs)
    # one panel's width from its number of bars; panels side by side while they fit, else stacked
    w = min(max(1.5 + 0.3 * len(models) * len(runs), 4.2), 11.0)
    side = w * len(metrics) <= 14
    fig, axes = plt.subplots(1 if side else len(metrics), len(metrics) if side else 1,
                             figsize=(w * len(metrics), 3.8) if side else (w, 3.2 * len(metrics)), squeeze=False)
    axes = [axes.ravel()]
    for ax, metric in zip(axes[0], metrics):
        name, scale = BAR_METRICS[metric]
        for j, run in enumerate(runs):
            xs, ys = [], []
            for i, m in enumerate(models):
                for row, label in zip(results.rows, labels):
                    if row["model"] == m and label == run and row.get(metric) is not None:
                        xs.append(i - 0.4 + width * (j + 0.5))
                        ys.append(row[metric] * scale)
            ax.bar(xs, ys, width=width, color=f"C{j % 10}", label=run)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20 if len(models) > 3 else 0)
        ax.set_title(name)
        if metric in log:
            ax.set_yscale("log")
        elif metric in ("accuracy", "best_accuracy"):
            lo = min(r[metric] for r in results.rows) * 100
            ax.set_ylim(max(0.0, lo - 5), 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _finish(fig, title or results.title, path, _cpu(results))


def _kernel_layer(model, layer):
    ks = model._kernel_layers()
    if not ks:
        raise ValueError(f"plot_weight_histograms: {model.name} has no Conv2D / Dense layer")
    if layer is None:  # the first hidden layer: the first one a precision quantizes fully
        return ks[1] if len(ks) > 2 else ks[0]
    if isinstance(layer, int) and not isinstance(layer, bool):
        if not -len(ks) <= layer < len(ks):
            raise ValueError(f"plot_weight_histograms: layer index {layer} out of range for {len(ks)} kernel layers")
        return ks[layer]
    for k in ks:
        if k.name == layer:
            return k
    raise ValueError(f"plot_weight_histograms: no Conv2D / Dense layer named {layer!r} "
                     f"(have {', '.join(k.name for k in ks)})")


def latent_and_quantized(model, layer=None):
    """(layer, latent kernel, kernel as the forward pass sees it, weight format or None).
    The format quantizes with the layer's own state (calibrated MSB; per output channel
    scales of a conv kernel, OIHW)."""
    model._require_built()
    k = _kernel_layer(model, layer)
    nodes = dict((id(lay), n) for lay, n in model._layers)[id(k)]
    latent = model._graph.get_param(nodes[0], 0)
    fmt = getattr(k, "weight_format", None) or getattr(k, "_precision_formats", {}).get("weight")
    if fmt is None:
        return k, latent, latent, None
    channels = latent.shape[0] if latent.ndim == 4 else 1
    return k, latent, fmt.quantize(latent, channels=channels), fmt


def _format_label(fmt):
    """Fixed(8, msb -2) / Binary (1 bit) / Float16 (16 bit) / fp32."""
    from . import formats as F
    if fmt is None:
        return "fp32"
    if isinstance(fmt, F.Fixed):
        return f"Fixed({fmt.bits}, msb {fmt.msb})"
    return f"{type(fmt).__name__} ({fmt.bits} bit)"


def plot_weight_histograms(models, layer=None, bins=80, path=None, title=None):
    """``models``: a model or {label: model} (e.g. ``Results.models``). One panel per
    model: histogram of a kernel layer's latent fp32 weights and of the same weights on
    the layer's weight-format grid (log counts). ``layer``: a name or kernel-layer index
    (default: the second Conv2D / Dense, which every precision quantizes)."""
    from .model import Model
    if isinstance(models, Model):
        models = {models.name: models}
    if not isinstance(models, dict) or not models:
        raise ValueError("plot_weight_histograms: expected a model or a non-empty {label: model} dict")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, (label, model) in zip(axes[0], models.items()):
        if not isinstance(model, Model):
            raise TypeError(f"plot_weight_histograms: {label!r} is not a model, got {type(model).__name__}")
        if isinstance(label, tuple):
            label = " @ ".join(map(str, label))
        k, latent, quant, fmt = latent_and_quantized(model, layer)
        lo, hi = float(min(latent.min(), quant.min())), float(max(latent.max(), quant.max()))
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        ax.hist(latent.ravel(), bins=edges, alpha=0.55, label="latent (fp32)", color="C0")
        ax.hist(quant.ravel(), bins=edges, alpha=0.55, label="quantized", color="C3")
        ax.set_yscale("log")
        ax.set_title(f"{label}\n{k.name}: {_format_label(fmt)}, {np.unique(quant).size} values", fontsize=9)
        ax.set_xlabel("weight")
        ax.legend(fontsize=7, loc="lower center")
    return _finish(fig, title or "weights: latent vs quantized", path)


# ------------------------------------------------------------------ S4 (lb.quantize)
def plot_value_histogram(stats, role="kernel", percentiles=(95, 98, 99.9, 99.99), layers=None, bins=200,
                         path=None, title=None):
    """S4 Figures 15 and 17: histogram of all values of ``role`` (an ``lb.quantize.extract``
    result) with the limits of each percentile as vertical lines; log counts."""
    from .quantize import Histogram, percentile_limits
    plt = _pyplot()
    v = stats.values(role, layers)
    limits = percentile_limits({"all": v}, percentiles, role)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if isinstance(v, Histogram):
        ax.stairs(v.counts, v.edges, fill=True, alpha=0.6)
        ax.set_xlim(v.min, v.max)
    else:
        ax.hist(np.ravel(v), bins=bins, alpha=0.6)
    ax.set_yscale("log")
    for i, r in enumerate(limits):
        for edge in (r["low"], r["high"]):
            ax.axvline(edge, color=f"C{i + 1}", ls="--", lw=1, label=f"{r['percentile']:g}%" if edge == r["low"] else None)
    ax.set_xlabel(f"{role} value")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    return _finish(fig, title or f"all {role} values with percentile limits", path)


def plot_percentile_limits(limits, path=None, title=None):
    """S4 Figures 16 and 18: per layer (or unit), the max |limit| of each percentile on a
    log axis, from ``lb.quantize.percentile_limits``."""
    rows = [r for r in limits if r["layer"] != "all"]
    if not rows:
        raise ValueError("plot_percentile_limits: no per-layer rows")
    plt = _pyplot()
    names = list(dict.fromkeys(r["layer"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.5 * len(names)), 3.8))
    for p in dict.fromkeys(r["percentile"] for r in rows):
        got = {r["layer"]: r["limit"] for r in rows if r["percentile"] == p}
        ax.plot(range(len(names)), [got.get(n, np.nan) for n in names], marker="o", label=f"{p:g}%")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log", base=2)
    ax.set_ylabel("max |limit|")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, title or limits.title, path)


def plot_progressive(runs, metric="val_accuracy", path=None, title=None):
    """S4 Figures 22-25: ``metric`` per epoch of progressive-quantization runs
    ({label: ProgressiveHistory}); for validation accuracy also the value right after
    each unit is quantized (the drop before fine-tuning), and a dotted line where each
    phase starts, labelled with the unit quantized there (from the first run)."""
    if not runs:
        raise ValueError("plot_progressive: no runs to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for label, h in runs.items():
        pts = [(r["epoch"], r[metric]) for r in h.rows if r.get(metric) is not None]
        if metric == "val_accuracy":
            pts += [(ph["start_epoch"] - 0.5, ph["val_accuracy_quantized"]) for ph in h.phases
                    if ph.get("val_accuracy_quantized") is not None]
        pts.sort()
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker=".", label=label)
    for ph in next(iter(runs.values())).phases:
        ax.axvline(ph["start_epoch"] - 0.5, color="0.7", ls=":", lw=1)
        ax.text(ph["start_epoch"] - 0.4, 0.02, ph["unit"], transform=ax.get_xaxis_transform(), rotation=90,
                fontsize=7, color="0.4", va="bottom")
    ax.set_ylabel(metric.replace("_", " "))
    _integer_epochs(ax)
    ax.legend(fontsize=8)
    return _finish(fig, title, path)
