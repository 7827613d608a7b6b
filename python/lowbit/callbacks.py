"""Callbacks, called from ``fit`` once per epoch (never inside the C++ batch loop)."""
from __future__ import annotations

import os

__all__ = ["Callback", "LambdaCallback", "EarlyStopping", "ModelCheckpoint", "History"]


def _sign(monitor, mode, who):
    """+1 when smaller values of ``monitor`` are better, -1 when larger are."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{who}: unknown mode {mode!r} (expected 'auto', 'min' or 'max')")
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    return 1.0 if mode == "min" else -1.0


class Callback:
    model = None

    def on_train_begin(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_end(self, logs=None): ...


class LambdaCallback(Callback):
    def __init__(self, on_epoch_end=None, on_train_begin=None, on_train_end=None):
        self._end, self._begin, self._train_end = on_epoch_end, on_train_begin, on_train_end

    def on_epoch_end(self, epoch, logs=None):
        if self._end:
            self._end(epoch, logs)

    def on_train_begin(self, logs=None):
        if self._begin:
            self._begin(logs)

    def on_train_end(self, logs=None):
        if self._train_end:
            self._train_end(logs)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto"):
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.sign = _sign(monitor, mode, "EarlyStopping")
        self.best, self.wait = float("inf"), 0

    def on_train_begin(self, logs=None):
        self.best, self.wait = float("inf"), 0

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if self.sign * value < self.best - self.min_delta:
            self.best, self.wait = self.sign * value, 0
        else:
            self.wait += 1
            if self.wait > self.patience:
                self.model.stop_training = True


class ModelCheckpoint(Callback):
    """Save the whole model (``model.save``, or only the weights with
    ``save_weights_only=True``) at the end of each epoch; with ``save_best_only`` only
    when ``monitor`` improved on the best value so far. ``filepath`` may name the epoch
    (counted from 1) and log values: ``"ckpt-{epoch:03d}-{val_loss:.3f}.lowbit"``. Files
    are written atomically, so an interrupted run leaves the previous checkpoint intact;
    continue with ``lb.load_model(path).fit(...)``."""

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, save_weights_only=False, mode="auto"):
        self.filepath, self.monitor = os.fspath(filepath), monitor
        self.save_best_only, self.save_weights_only = bool(save_best_only), bool(save_weights_only)
        self.sign = _sign(monitor, mode, "ModelCheckpoint")
        self.best = float("inf")
        self.saved = []  # paths written, in order

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                raise ValueError(f"ModelCheckpoint: {self.monitor!r} is not among the epoch's logs "
                                 f"({', '.join(sorted(logs))}); val_* values need validation_data")
            if not self.sign * value < self.best:
                return
            self.best = self.sign * value
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint: cannot fill in {self.filepath!r} ({type(e).__name__}: {e}); "
                             f"it may use epoch and {', '.join(sorted(logs))}") from None
        (self.model.save_weights if self.save_weights_only else self.model.save)(path)
        self.saved.append(path)


class History(Callback):
    """``history``: per-epoch lists of loss, accuracy, val_loss, val_accuracy, epoch_time, lr."""

    def __init__(self):
        self.history, self.epoch = {}, []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
