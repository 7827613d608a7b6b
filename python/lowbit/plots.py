"""Plots: loss and accuracy per epoch for several runs (e.g. one per precision), and the
views of S4's quantization study (value histograms with percentile limits, limits per
layer, progressive-quantization histories). matplotlib is imported lazily
(``pip install lowbit[plot]``); every figure names the CPU in a corner."""
from __future__ import annotations

import numpy as np

__all__ = ["plot_histories", "plot_value_histogram", "plot_percentile_limits", "plot_progressive", "cpu_name"]


def plot_histories(runs, metrics=("loss", "val_loss", "accuracy", "val_accuracy"), path=None, title=None):
    """``runs``: {label: History or its ``.history`` dict}. One panel per metric, one line
    per run. Returns the matplotlib Figure; with ``path`` also saves it (PNG, SVG, PDF)."""
    import matplotlib
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    if not runs:
        raise ValueError("plot_histories: no runs to plot")
    hists = {k: getattr(v, "history", v) for k, v in runs.items()}
    metrics = [m for m in metrics if any(m in h for h in hists.values())]
    if not metrics:
        raise ValueError("plot_histories: none of the metrics is in the histories")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, h in hists.items():
            if metric in h:
                ys = h[metric]
                ax.plot(range(1, len(ys) + 1), ys, marker="o", label=label)
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo; else platform.processor())."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _figure(ncols=1, width=6.0, height=3.6):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def _finish(fig, path, title):
    if title:
        fig.suptitle(title)
    fig.text(0.99, 0.005, cpu_name(), ha="right", va="bottom", fontsize=6, color="0.5")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _agg(path):
    import matplotlib
    if path is not None:
        matplotlib.use("Agg", force=False)


def plot_value_histogram(stats, role="kernel", percentiles=(95, 98, 99.9, 99.99), layers=None, bins=200,
                         path=None, title=None):
    """S4 Figures 15 and 17: histogram of all values of ``role`` (an ``lb.quantize.extract``
    result) with the limits of each percentile as vertical lines; log counts."""
    _agg(path)
    from .quantize import Histogram, percentile_limits
    v = stats.values(role, layers)
    limits = percentile_limits({"all": v}, percentiles, role)
    fig, (ax,) = _figure()
    if isinstance(v, Histogram):
        ax.stairs(v.counts, v.edges, fill=True, alpha=0.6)
        ax.set_xlim(v.min, v.max)
    else:
        ax.hist(np.ravel(v), bins=bins, alpha=0.6)
    ax.set_yscale("log")
    for r, c in zip(limits, ("C1", "C2", "C3", "C4", "C5", "C6")):
        for edge in (r["low"], r["high"]):
            ax.axvline(edge, color=c, ls="--", lw=1, label=f"{r['percentile']:g}%" if edge == r["low"] else None)
    ax.set_xlabel(f"{role} value")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    return _finish(fig, path, title or f"all {role} values with percentile limits")


def plot_percentile_limits(limits, path=None, title=None):
    """S4 Figures 16 and 18: per layer, the max |limit| of each percentile (log scale),
    from ``lb.quantize.percentile_limits``."""
    _agg(path)
    rows = [r for r in limits if r["layer"] != "all"]
    if not rows:
        raise ValueError("plot_percentile_limits: no per-layer rows")
    names = list(dict.fromkeys(r["layer"] for r in rows))
    fig, (ax,) = _figure(width=max(6.0, 0.5 * len(names)))
    for p in dict.fromkeys(r["percentile"] for r in rows):
        got = {r["layer"]: r["limit"] for r in rows if r["percentile"] == p}
        ax.plot(range(len(names)), [got.get(n, np.nan) for n in names], marker="o", label=f"{p:g}%")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log", base=2)
    ax.set_ylabel("max |limit|")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path, title or limits.title)


def plot_progressive(runs, metric="val_accuracy", path=None, title=None):
    """S4 Figures 22-25: ``metric`` per epoch of progressive-quantization runs
    ({label: ProgressiveHistory}); a dotted line where each phase starts, labelled with
    the unit quantized there (from the first run)."""
    _agg(path)
    if not runs:
        raise ValueError("plot_progressive: no runs to plot")
    fig, (ax,) = _figure(width=8.0, height=4.0)
    for label, h in runs.items():
        pts = [(r["epoch"], r[metric]) for r in h.rows if r.get(metric) is not None]
        if metric == "val_accuracy":  # the drop right after each quantization, before training
            pts += [(ph["start_epoch"] - 0.5, ph["val_accuracy_quantized"]) for ph in h.phases
                    if ph.get("val_accuracy_quantized") is not None]
        pts.sort()
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker=".", label=label)
    first = next(iter(runs.values()))
    for ph in first.phases:
        ax.axvline(ph["start_epoch"] - 0.5, color="0.7", ls=":", lw=1)
        ax.text(ph["start_epoch"] - 0.4, 0.02, ph["unit"], transform=ax.get_xaxis_transform(), rotation=90,
                fontsize=7, color="0.4", va="bottom")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path, title)
