"""Reliability: diverging runs stop with FloatingPointError and the weights from before
the step; a model used from several threads is serialised; bad weights files raise
ValueError naming the file and the problem and leave the model untouched."""
import os
import threading
import zipfile

import numpy as np
import pytest

import lowbit as lb

L = lb.layers
F = lb.formats


def dense(seed=0):
    return lb.Sequential([L.Dense(3, input_shape=(4,))], seed=seed)


def trained_on(batches, x, y, opt, seed=0):
    """The weights after training on the first `batches` batches of 2 samples, in order."""
    m = dense(seed)
    m.compile(opt(), "mse")
    if batches:
        m.fit(x[:2 * batches], y[:2 * batches], batch_size=2, shuffle=False, verbose=0)
    return m.get_weights()


# ---------------------------------------------------------------- divergence
@pytest.mark.parametrize("case", ["loss", "gradients", "update"])
def test_divergence_stops_with_the_weights_from_before_the_step(case, rng):
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    opt = lambda: lb.optimizers.Adam(0.01)  # noqa: E731
    if case == "loss":          # batch 3: the outputs overflow float32, the loss is inf
        x[4:6] = 3e38
        bad, match = 3, "the loss became inf"
    elif case == "gradients":   # batch 2: finite loss (fp64), weight gradients of 1e60 overflow
        x[2:4] = 1e30
        bad, match = 2, "gradients became NaN or infinite"
    else:                       # batch 1: lr * gradient overflows float32 in the update
        y[:] = 100.0
        opt = lambda: lb.optimizers.SGD(3e38, momentum=0.5)  # noqa: E731
        bad, match = 1, "update made weights NaN or infinite"
    m = dense()
    m.compile(opt(), "mse")
    with pytest.raises(FloatingPointError, match=rf"{match} in epoch 1, batch {bad} of 4"):
        m.fit(x, y, batch_size=2, shuffle=False, verbose=0)
    expect = trained_on(bad - 1, x, y, opt)
    for a, b in zip(m.get_weights(), expect):
        np.testing.assert_array_equal(a, b)
    assert m._graph.step == bad - 1


def test_divergence_names_later_epochs_and_keeps_training_possible(rng):
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = rng.normal(size=(6, 3)).astype(np.float32)
    m = dense()
    m.compile(lb.optimizers.SGD(0.01), "mse")
    m.fit(x, y, batch_size=3, epochs=2, verbose=0)
    w = m.get_weights()
    bad = x.copy()
    bad[3:] = 3e38
    with pytest.raises(FloatingPointError, match=r"epoch 3, batch 2 of 2") as e:
        m.fit(bad, y, batch_size=3, shuffle=False, verbose=0)
    assert isinstance(e.value, lb.Diverged) and "diverged" in str(e.value)
    assert not np.array_equal(m.get_weights()[0], w[0])  # batch 1 of epoch 3 was applied
    assert all(np.isfinite(a).all() for a in m.get_weights())
    m.fit(x, y, batch_size=3, verbose=0)  # the model is still usable


def test_fp16_loss_scaling_still_skips_and_halves(rng):
    m = lb.Sequential([L.Dense(10, activation="softmax", input_shape=(4,))], seed=0)
    m.compile(lb.optimizers.SGD(0.1), precision="fp16")
    m._graph.set_loss_scaling(True, 2.0 ** 24, growth_interval=1000)
    x = (rng.normal(size=(64, 4)) * 100).astype(np.float32)
    w0 = m.get_weights()[0]
    m.fit(x, rng.integers(0, 10, 64), batch_size=64, epochs=1, verbose=0)  # no exception
    assert m._graph.skipped_steps >= 1 and m._graph.loss_scale < 2.0 ** 24
    np.testing.assert_array_equal(m.get_weights()[0], w0)
