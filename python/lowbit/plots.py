"""Plots of training runs: loss and accuracy per epoch for several runs (e.g. one per
precision), side by side. matplotlib is imported lazily (``pip install lowbit[plot]``)."""
from __future__ import annotations

__all__ = ["plot_histories"]


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
