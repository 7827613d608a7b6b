"""The foundation's acceptance run: the S0 LeNet, Adam(1e-3), batch 128, two epochs on
all 60k Fashion-MNIST images reaches >= 87% test accuracy (PyTorch, same recipe: 87.9%)."""
import numpy as np
import pytest

import lowbit as lb


@pytest.mark.slow
def test_lenet_fashion_mnist_two_epochs():
    (x, y), (xt, yt) = lb.datasets.fashion_mnist()
    m = lb.models.lenet(seed=0)
    m.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x, y, batch_size=128, epochs=2, validation_data=(xt, yt), seed=0, verbose=0)
    acc = h.history["val_accuracy"]
    print(f"LeNet Fashion-MNIST: val accuracy per epoch {acc}, epoch times {h.history['epoch_time']}")
    assert h.history["loss"][1] < h.history["loss"][0]
    assert acc[-1] >= 0.87
    assert m.evaluate(xt, yt)["accuracy"] == pytest.approx(acc[-1])
    p = m.predict(xt[:100])
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
