"""Callbacks, called from ``fit`` once per epoch (never inside the C++ batch loop)."""
from __future__ import annotations

__all__ = ["Callback", "LambdaCallback", "EarlyStopping", "History"]


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
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.sign = 1.0 if mode == "min" else -1.0
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


class History(Callback):
    """``history``: per-epoch lists of loss, accuracy, val_loss, val_accuracy, epoch_time, lr."""

    def __init__(self):
        self.history, self.epoch = {}, []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)
