"""Studies: train several (model, precision) pairs on one dataset with identical seeds and
data order, and collect a results table.

    import lowbit as lb
    res = lb.experiments.run(["lenet", "pure_cnn"], ["fp32", "fp16", "fixed8"],
                             data="fashion_mnist", epochs=2, train_limit=10_000)
    res                 # text / HTML table; res.rows are dicts, res.to_pandas() a DataFrame
    lb.plots.plot_curves(res); lb.plots.plot_bars(res)

Every pair starts from the same initial weights (the model is built with ``seed``) and
sees the same batches in the same order and the same dropout masks (``fit(seed=seed)``);
only the number formats differ.

Each row holds: final test ``accuracy`` and ``loss`` (the last epoch's validation on the
test split), the best test accuracy, last-epoch training loss and accuracy, per-epoch
curves (``history``: ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``,
``epoch_time``), mean seconds per epoch, training images per second, the growth of the
process's peak resident memory during the run, parameters, model size in bytes at that
precision (``model.summary()``'s memory: kernels at their format's bits, the rest fp32)
against its float32 size, MACs per image, and the energy **estimate** of ``lowbit.energy`` (Horowitz, ISSCC 2014, 45 nm
per-operation table): microjoules per inference image and joules for the whole training
run (per-image training energy x images x epochs). Energy is arithmetic on operation
counts, never a measurement; every view labels it "estimate".

Resuming: with ``results_dir`` each finished pair is written there at once, as
``<model>__<precision>__<key>.json`` (the row with its curves) and ``.curves.csv``, each
written to a temporary file and renamed into place. ``key`` hashes the model, its
arguments, the precision's full description, the data (a digest of the arrays) and the
settings, so a rerun with the same arguments loads finished pairs instead of training
them, and any change trains afresh. The key names a model builder, not its code: after
editing a model's definition, pass ``resume=False`` or another ``results_dir``.
"""
from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import platform
import re
import sys

import numpy as np

from . import energy as _energy
from . import optimizers as _optimizers
from . import precision as _precision
from ._atomic import atomic_write

__all__ = ["run", "Results", "Table", "pivot", "cpu_model", "cpu_name", "DISPLAY_COLUMNS"]

# columns of the text / HTML views: (row key, header, format)
DISPLAY_COLUMNS = (
    ("model", "model", "{}"),
    ("precision", "precision", "{}"),
    ("accuracy", "test acc %", "{:.2f}"),
    ("loss", "test loss", "{:.4f}"),
    ("epoch_time_s", "s/epoch", "{:.2f}"),
    ("images_per_s", "img/s", "{:,.0f}"),
    ("size_bytes", "size KiB", "{:,.1f}"),
    ("energy_inference_uJ", "uJ/img (est.)", "{:.2f}"),
    ("energy_train_J", "train J (est.)", "{:.3g}"),
)
_PERCENT = {"accuracy", "best_accuracy", "train_accuracy"}
_KIB = {"size_bytes"}


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_name():
    """The CPU's model name and the number of cores."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


# ----------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------
def _cell(v, fmt):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if fmt is not None:
        return fmt.format(v)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    return f"{v:,}" if isinstance(v, (int, np.integer)) else f"{v:.2f}"


class Table:
    """Rows of dicts shown as a text table (``print``), an HTML table (Jupyter) or a
    pandas DataFrame (``to_pandas()``). ``columns``: ``(key, header, format)`` triples
    (format a ``str.format`` pattern or None), default every key of the rows."""

    def __init__(self, rows=(), columns=None, title=None):
        self.rows = [dict(r) for r in rows]
        self.title = title
        if columns is None:
            keys = list(dict.fromkeys(k for r in self.rows for k in r))
            columns = [(k, k, None) for k in keys]
        self.columns = [tuple(c) for c in columns]

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def _cells(self):
        for r in self.rows:
            yield [_cell(self._value(r, key), fmt) for key, _, fmt in self.columns]

    def _value(self, row, key):
        return row.get(key)

    def _caption(self):
        return self.title or ""

    def __str__(self):
        headers = [h for _, h, _ in self.columns]
        body = list(self._cells())
        widths = [max(len(x) for x in col) for col in zip(headers, *body)]
        text = [not any(isinstance(self._value(r, k), (int, float)) for r in self.rows) for k, _, _ in self.columns]

        def line(cells):
            return "  ".join(c.ljust(w) if t else c.rjust(w) for c, w, t in zip(cells, widths, text)).rstrip()

        rule = "-" * max(len(line(headers)), 1)
        head = [self._caption()] if self._caption() else []
        return "\n".join(head + [rule, line(headers), rule] + [line(c) for c in body] + [rule])

    __repr__ = __str__

    def _repr_html_(self):
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in self._cells())
        return (f"<div><table><caption>{esc(self._caption())}</caption><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table></div>")

    def where(self, **match):
        """The rows whose fields equal all of ``match``."""
        return [r for r in self.rows if all(r.get(k) == v for k, v in match.items())]

    def to_dict(self):
        """Title, column keys and rows (JSON-ready when the rows are)."""
        return {"title": self.title, "columns": [k for k, _, _ in self.columns], "rows": self.rows}

    def to_pandas(self):
        """All row fields as a pandas DataFrame."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(f"{type(self).__name__}.to_pandas needs pandas (pip install pandas); "
                              "the same data is in .rows") from None
        return pd.DataFrame(self.rows)

    def join(self, other, on, prefix, keys=None):
        """A new table with the columns ``keys`` (default: all but ``on``) of ``other``'s
        rows (a Table or a list of dicts) matched on ``on`` and named ``prefix + key``,
        e.g. a seed's published figures beside ours."""
        others = list(other)
        keys = keys or [k for k in dict.fromkeys(k for r in others for k in r) if k != on]
        by = {r.get(on): r for r in others}
        rows = [dict(r, **{prefix + k: by.get(r.get(on), {}).get(k) for k in keys}) for r in self.rows]
        return Table(rows, self.columns + [(prefix + k, prefix + k, None) for k in keys], title=self.title)


def pivot(rows, value, index="model", columns="precision", baseline=None, fmt="{:.2f}", title=None):
    """Long rows -> a Table with one row per ``index`` and one column per ``columns``
    value holding ``value``; with ``baseline`` (a ``columns`` value) the difference to it."""
    rows = list(rows)
    cols = list(dict.fromkeys(r[columns] for r in rows))
    if baseline is not None and baseline not in cols:
        raise ValueError(f"pivot: baseline {baseline!r} is not one of {cols}")
    cells = {}
    for r in rows:
        k = (r[index], r[columns])
        if k in cells:
            raise ValueError(f"pivot: several rows for {index} {k[0]!r}, {columns} {k[1]!r}")
        cells[k] = r.get(value)
    out = []
    for i in dict.fromkeys(r[index] for r in rows):
        base = cells.get((i, baseline))
        row = {index: i}
        for c in cols:
            v = cells.get((i, c))
            row[c] = v if baseline is None else None if v is None or base is None else v - base
        out.append(row)
    return Table(out, [(index, index, None)] + [(c, c, fmt) for c in cols], title=title or value)


class Results(Table):
    """A study's table: ``rows`` (one dict per (model, precision) run, curves in
    ``row["history"]``). The views show ``DISPLAY_COLUMNS``; ``to_pandas()`` has all."""

    def __init__(self, rows=(), title=None, models=None):
        super().__init__(rows, DISPLAY_COLUMNS, title)
        self.models = dict(models or {})  # {(model, precision): trained model} with run(keep_models=True)

    def __add__(self, other):
        if not isinstance(other, Results):
            return NotImplemented
        return Results(self.rows + other.rows, title=self.title or other.title, models={**self.models, **other.models})

    def _value(self, row, key):
        v = row.get(key)
        if v is None:
            return None
        return 100 * v if key in _PERCENT else v / 1024 if key in _KIB else v

    def _caption(self):
        cpu = self.rows[0].get("cpu") if self.rows else None
        parts = [self.title or "results", f"CPU: {cpu}" if cpu else None, f"energy: {_energy.SOURCE}"]
        return " | ".join(p for p in parts if p)

    @property
    def model_labels(self):
        return list(dict.fromkeys(r["model"] for r in self.rows))

    @property
    def precision_labels(self):
        return list(dict.fromkeys(r["precision"] for r in self.rows))

    def get(self, model, precision, loss_fn=None):
        """The row of ``model`` at ``precision`` (and ``loss_fn``, when several)."""
        found = [r for r in self.rows if r["model"] == model and r["precision"] == precision
                 and (loss_fn is None or r["loss_fn"] == loss_fn)]
        if len(found) != 1:
            raise KeyError(f"Results.get: {len(found)} rows for model {model!r}, precision {precision!r}"
                           + (f", loss {loss_fn!r}" if loss_fn else ""))
        return found[0]

    def _select(self, loss_fn):
        rows = [r for r in self.rows if loss_fn is None or r["loss_fn"] == loss_fn]
        if not rows:
            raise ValueError(f"Results: no rows with loss {loss_fn!r}")
        return rows

    def pivot(self, value="accuracy", baseline=None, loss_fn=None, fmt="{:.2f}"):
        """One row per model, one column per precision holding ``value`` as the views show
        it (accuracy in %, size in KiB); with ``baseline`` (a precision label) each entry is
        the difference to that precision's (in points for accuracy). ``loss_fn`` picks the
        runs of one loss when the table holds several."""
        rows = self._select(loss_fn)
        if value not in rows[0]:
            raise ValueError(f"Results.pivot: no column {value!r}")
        scaled = [dict(r, **{value: self._value(r, value)}) for r in rows]
        header = dict((k, h) for k, h, _ in DISPLAY_COLUMNS).get(value, value)
        return pivot(scaled, value, index="model", columns="precision", baseline=baseline, fmt=fmt,
                     title=header + (f", difference to {baseline}" if baseline is not None else ""))

    def at_epochs(self, epochs, metrics=("val_accuracy",), loss_fn=None, fmt="{:.4f}"):
        """Per run: total training time and ``metrics`` (history keys) after each of the
        1-based ``epochs`` - the layout of seed 003's precision table."""
        rows = self._select(loss_fn)
        out = []
        for r in rows:
            h = r["history"]
            row = {"model": r["model"], "precision": r["precision"], "train_s": r["train_time_s"]}
            for e in epochs:
                for m in metrics:
                    row[f"{m} @{e}"] = h[m][e - 1] if 1 <= e <= len(h[m]) else None
            out.append(row)
        cols = [("model", "model", None), ("precision", "precision", None), ("train_s", "train s", "{:.2f}")]
        cols += [(f"{m} @{e}", f"{m} @{e}", fmt) for e in epochs for m in metrics]
        return Table(out, cols, title=self.title)

    @classmethod
    def load(cls, results_dir, title=None):
        """Every run stored in ``results_dir`` (in file-name order)."""
        if not os.path.isdir(results_dir):
            raise FileNotFoundError(f"Results.load: no folder {results_dir}")
        rows = []
        for name in sorted(os.listdir(results_dir)):
            if name.endswith(".json"):
                with open(os.path.join(results_dir, name)) as f:
                    rows.append(json.load(f))
        return cls(rows, title=title)


# ----------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------
def _labelled(spec, what, label_of):
    """A name, an object, a list of them or a {label: spec} dict -> [(label, spec)]."""
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        items = [(label_of(s), s) for s in spec]
    else:
        items = [(label_of(spec), spec)]
    if not items:
        raise ValueError(f"run: expected at least one {what}, got none")
    labels = [label for label, _ in items]
    for label in labels:
        if not isinstance(label, str) or not label:
            raise ValueError(f"run: {what} labels must be non-empty strings, got {label!r}")
    dup = sorted({label for label in labels if labels.count(label) > 1})
    if dup:
        raise ValueError(f"run: duplicate {what} labels {dup} (pass a dict to label them)")
    return items


def _model_label(m):
    if isinstance(m, str):
        return m
    if isinstance(m, functools.partial):
        return _model_label(m.func)
    if callable(m):
        return getattr(m, "__name__", type(m).__name__)
    raise ValueError(f"run: a model must be a name in lb.models or a callable returning a model, got {m!r}")


def _model_builder(label, m):
    from . import models as _models
    if isinstance(m, str):
        if m not in getattr(_models, "__all__", ()):
            raise ValueError(f"run: unknown model {m!r} (lb.models has {', '.join(_models.__all__)})")
        return getattr(_models, m), f"lowbit.models.{m}"
    if not callable(m):
        raise ValueError(f"run: model {label!r} must be a name in lb.models or a callable, got {m!r}")
    return m, _callable_id(m, label)


def _callable_id(f, label):
    """A stable name of a model builder for the resume key (functools.partial included:
    its function and arguments, not its address)."""
    if isinstance(f, functools.partial):
        return {"partial": _callable_id(f.func, label), "args": [repr(a) for a in f.args],
                "keywords": {k: repr(v) for k, v in sorted(f.keywords.items())}}
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', label)}"


def _precision_label(p):
    if isinstance(p, str):
        return p
    if isinstance(p, _precision.Precision):
        return p.name
    raise ValueError(f"run: a precision must be a preset name ({', '.join(_precision.PRESETS)}) "
                     f"or an lb.Precision, got {p!r}")


def _precision_id(p):
    """Everything that defines a precision, as a JSON-able dict (for the resume key)."""
    return {"name": p.name, "roles": {r: repr(f) for r, f in p.roles.items() if f is not None},
            "exempt": [p.exempt_first, p.exempt_last], "loss_scale": p.loss_scale, "activation": p.activation,
            "calibration_percentile": p.calibration_percentile}


def _load_data(data, data_root=None):
    from . import datasets as _datasets
    if isinstance(data, str):
        return _datasets.load(data, data_root), data
    try:
        (x, y), (xt, yt) = data
    except (TypeError, ValueError):
        raise ValueError("run: data must be a dataset name or ((x_train, y_train), (x_test, y_test))") from None
    return ((x, y), (xt, yt)), "arrays"


def _limit(n, what):
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"run: expected {what} >= 1 or None, got {n!r}")
    return int(n)


def _positive_int(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"run: expected {what} >= 1, got {v!r}")
    return int(v)


def _digest(*arrays):
    h = hashlib.blake2b(digest_size=12)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _safe(s):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "x"


# ----------------------------------------------------------------------------------
# storage
# ----------------------------------------------------------------------------------
def _curves_csv(history):
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time") if k in history]
    lines = [",".join(["epoch"] + keys)]
    for e in range(len(history.get("loss", []))):
        lines.append(",".join([str(e + 1)] + [repr(float(history[k][e])) for k in keys]))
    return "\n".join(lines) + "\n"


def _store(results_dir, stem, row):
    csv, text = _curves_csv(row["history"]), json.dumps(row, indent=1)
    atomic_write(os.path.join(results_dir, stem + ".curves.csv"), lambda f: f.write(csv), mode="w")
    atomic_write(os.path.join(results_dir, stem + ".json"), lambda f: f.write(text), mode="w")


def _load_stored(path, key):
    try:
        with open(path) as f:
            row = json.load(f)
    except (OSError, ValueError):
        return None  # missing, or cut short: train again
    return row if row.get("key") == key else None


# ----------------------------------------------------------------------------------
# peak memory of this process (Linux): reset the high-water mark, read it afterwards
# ----------------------------------------------------------------------------------
def _status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return _status_kb("VmRSS")
    except OSError:
        return None


# ----------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------
def run(models, precisions, data="fashion_mnist", epochs=1, batch_size=128, seed=0, optimizer="adam",
        learning_rate=None, loss="categorical_crossentropy", train_limit=None, test_limit=None,
        data_root=None, results_dir="results", resume=True, model_kwargs=None, keep_models=False, title=None,
        verbose=True):
    """Train every model at every precision; return a :class:`Results` table.

    ``models``: a name in ``lb.models`` (``"lenet"``), a callable returning an uncompiled
    model (called as ``f(input_shape=..., num_classes=..., seed=seed, **model_kwargs)``),
    a list of these, or a ``{label: model}`` dict.
    ``precisions``: a preset name of ``lowbit.precision`` (``"fp16"``), an
    ``lb.Precision`` (labelled by its ``name``), a list, or a ``{label: precision}`` dict.
    ``data``: a dataset name (``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``,
    ``"digits"``, read from ``data_root`` or the usual folders, see ``lowbit.datasets``)
    or ``((x_train, y_train), (x_test, y_test))``; ``train_limit`` /
    ``test_limit`` keep the first N samples of each split. The test split is the
    validation data of every epoch.
    ``optimizer``: a name (with ``learning_rate``, default the optimizer's) or an
    ``lb.optimizers`` instance (its configuration is shared; state is per run).
    ``loss``: ``"categorical_crossentropy"`` or ``"mse"``.
    ``results_dir``: where finished runs are stored and found again (None: nowhere);
    ``resume=False`` retrains and overwrites. ``keep_models``: keep the trained models in
    ``Results.models[(model, precision)]`` (with ``results_dir`` their weights are stored
    too, as ``.weights.npz``, and reloaded for stored runs). ``verbose``: progress bars
    for the sweep and each run. Energy figures are estimates (``lowbit.energy``).
    """
    from .model import LOSSES, Model, _LOSS_ALIASES
    model_items = _labelled(models, "model", _model_label)
    builders = [(label, *_model_builder(label, m)) for label, m in model_items]
    prec_items = [(label, _precision.get(p)) for label, p in _labelled(precisions, "precision", _precision_label)]
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"run: expected an integer seed, got {seed!r}")
    seed = int(seed)
    if not isinstance(loss, str) or loss.lower() not in _LOSS_ALIASES:
        raise ValueError(f"run: unknown loss {loss!r} (expected one of {', '.join(LOSSES)})")
    loss = _LOSS_ALIASES[loss.lower()]
    if isinstance(optimizer, str):
        if optimizer.lower() not in _optimizers._BY_NAME:
            raise ValueError(f"run: unknown optimizer {optimizer!r} (expected one of {', '.join(_optimizers._BY_NAME)}"
                             " or an lb.optimizers instance)")
        cls = _optimizers._BY_NAME[optimizer.lower()]
        optimizer = cls() if learning_rate is None else cls(learning_rate=learning_rate)
    elif not isinstance(optimizer, _optimizers.Optimizer):
        raise ValueError(f"run: optimizer must be a name or an lb.optimizers instance, got {optimizer!r}")
    elif learning_rate is not None:
        raise ValueError("run: give learning_rate with an optimizer name, not with an optimizer instance")
    model_kwargs = dict(model_kwargs or {})
    train_limit, test_limit = _limit(train_limit, "train_limit"), _limit(test_limit, "test_limit")

    ((x, y), (xt, yt)), data_name = _load_data(data, data_root)
    from .model import as_input, as_target
    x, xt = as_input(x, "run: x_train")[:train_limit], as_input(xt, "run: x_test")[:test_limit]
    y, yt = as_target(y, "run: y_train")[:train_limit], as_target(yt, "run: y_test")[:test_limit]
    if len(x) != len(y) or len(xt) != len(yt):
        raise ValueError(f"run: {len(x)} training images but {len(y)} labels, {len(xt)} test images but {len(yt)} labels")
    if len(x) == 0 or len(xt) == 0:
        raise ValueError("run: the training and test splits must not be empty")
    num_classes = int(y.shape[1]) if y.ndim == 2 else int(max(y.max(), yt.max())) + 1
    settings = {"data": data_name, "data_digest": _digest(x, y, xt, yt), "n_train": len(x), "n_test": len(xt),
                "epochs": epochs, "batch_size": batch_size, "seed": seed, "loss": loss,
                "optimizer": optimizer.config(), "schedule": optimizer.schedule.config(),
                "model_kwargs": {k: repr(v) for k, v in sorted(model_kwargs.items())}}
    if results_dir is not None:
        os.makedirs(results_dir, exist_ok=True)
    cpu = cpu_name()

    pairs = [(b, p) for b in builders for p in prec_items]
    sweep, tqdm, nested = None, None, False
    if verbose:
        tqdm, nested = _progress()
        if nested:
            sweep = tqdm(total=len(pairs), desc="study", unit="run")
    rows, kept = [], {}
    try:
        for i, ((mlabel, build, build_id), (plabel, prec)) in enumerate(pairs):
            key = hashlib.sha256(json.dumps({"model": build_id, "precision": _precision_id(prec), **settings},
                                            sort_keys=True, default=repr).encode()).hexdigest()[:16]
            stem = f"{_safe(mlabel)}__{_safe(plabel)}__{key}"
            path = os.path.join(results_dir, stem + ".json") if results_dir is not None else None
            row = _load_stored(path, key) if (path and resume) else None
            weights = os.path.join(results_dir, stem + ".weights.npz") if path else None
            if row is not None and keep_models and not os.path.isfile(weights):
                row = None  # stored without weights: train again to keep the model
            if sweep is not None:
                sweep.set_postfix_str(f"{mlabel} @ {plabel}" + (" (stored)" if row else ""))
            elif verbose and row is not None:
                print(f"[{i + 1}/{len(pairs)}] {mlabel} @ {plabel}: stored, not retrained", file=sys.stderr)
            model = None
            if row is None or keep_models:
                model = build(input_shape=tuple(x.shape[1:]), num_classes=num_classes, seed=seed, **model_kwargs)
                if not isinstance(model, Model):
                    raise ValueError(f"run: model {mlabel!r} must return an lb.Model, got {type(model).__name__}")
                if model._compiled is not None:
                    raise ValueError(f"run: model {mlabel!r} is already compiled; pass an uncompiled model")
            if row is None:
                bar = None
                if verbose:  # nested under the sweep's bar, or one line per run with its place in the sweep
                    bar = tqdm(total=epochs, desc=f"{'' if nested else f'[{i + 1}/{len(pairs)}] '}{mlabel} @ {plabel}",
                               unit="epoch", leave=not nested)
                row = _train_one(model, prec, optimizer, loss, x, y, xt, yt, epochs, batch_size, seed, bar)
                row.update(model=mlabel, precision=plabel, loss_fn=loss, key=key, cpu=cpu, settings=settings)
                if path is not None:
                    if keep_models:
                        model.save_weights(weights)
                    _store(results_dir, stem, row)
                row["stored"] = False
            else:
                if keep_models:
                    model.compile(optimizer, loss, metrics=["accuracy"], precision=prec)
                    model.load_weights(weights)
                row["stored"] = True
            if keep_models:
                kept[(mlabel, plabel)] = model
            rows.append(row)
            if sweep is not None:
                sweep.update(1)
    finally:
        if sweep is not None:
            sweep.close()
    return Results(rows, title=title, models=kept)


def _progress():
    """(tqdm class, nested?): a sweep bar with a bar per run nested under it where bars
    can redraw in place (a terminal, or Jupyter with ipywidgets); else plain text bars,
    one line per run (a notebook without widgets, a log file)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
        widgets = get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        widgets = False
    if widgets:
        from tqdm.auto import tqdm
        return tqdm, True
    from tqdm import tqdm
    return tqdm, sys.stderr.isatty()


def _train_one(model, prec, optimizer, loss, x, y, xt, yt, epochs, batch_size, seed, bar):
    from .callbacks import LambdaCallback
    model.compile(optimizer, loss, metrics=["accuracy"], precision=prec)
    callbacks = []
    if bar is not None:
        def tick(epoch, logs):
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", val_acc=f"{logs.get('val_accuracy', float('nan')):.4f}")
        callbacks.append(LambdaCallback(on_epoch_end=tick))
    rss0 = _reset_peak()
    try:
        h = model.fit(x, y, batch_size=batch_size, epochs=epochs, validation_data=(xt, yt), seed=seed, verbose=0,
                      callbacks=callbacks).history
    finally:
        if bar is not None:
            bar.close()
    peak = _status_kb("VmHWM")
    est = _energy.estimate(model, batch_size)
    params = model.count_params()
    epoch_time = float(np.mean(h["epoch_time"]))
    history = {k: [float(v) for v in h[k]] for k in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time")}
    return dict(
        accuracy=history["val_accuracy"][-1], loss=history["val_loss"][-1],
        best_accuracy=max(history["val_accuracy"]),
        train_accuracy=history["accuracy"][-1], train_loss=history["loss"][-1],
        epochs=len(history["loss"]), epoch_time_s=epoch_time, train_time_s=float(np.sum(h["epoch_time"])),
        images_per_s=len(x) / epoch_time,
        peak_mem_mb=(peak - rss0) / 1024 if (peak is not None and rss0 is not None) else None,
        params=params, size_bytes=est["weight_bits"] / 8, float32_bytes=4 * params, macs=est["macs"],
        energy_inference_uJ=est["inference_uJ"],
        energy_train_J=est["train_uJ"] * 1e-6 * len(x) * len(history["loss"]),
        history=history)
