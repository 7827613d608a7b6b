"""Reference networks of the studies (see shared EXPERIMENTS.md), NCHW."""
from __future__ import annotations

from . import layers as L
from .model import Sequential

__all__ = ["lenet", "simple_cnn"]


def lenet(input_shape=(1, 28, 28), num_classes=10, seed=None):
    """S0 LeNet: Conv32 5x5 same relu, MaxPool 2, Conv48 5x5 valid relu, MaxPool 2,
    Dense256 relu, Dense84 relu, Dense10 softmax - 369,174 parameters on 28x28x1."""
    return Sequential([
        L.Conv2D(32, 5, padding="same", activation="relu", input_shape=input_shape),
        L.MaxPooling2D(2),
        L.Conv2D(48, 5, padding="valid", activation="relu"),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(256, activation="relu"),
        L.Dense(84, activation="relu"),
        L.Dense(num_classes, activation="softmax"),
    ], name="lenet", seed=seed)


def simple_cnn(input_shape=(1, 28, 28), num_classes=10, seed=None):
    """S3 NumPy CNN: Conv 12 3x3 (He init) + ReLU -> MaxPool 2 -> Flatten (12*13*13 =
    2028 on 28x28) -> Dense 10 softmax."""
    return Sequential([
        L.Conv2D(12, 3, activation="relu", kernel_initializer="he_normal", input_shape=input_shape),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(num_classes, activation="softmax"),
    ], name="simple_cnn", seed=seed)
