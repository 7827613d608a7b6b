"""lowbit: train and evaluate convolutional networks at reduced precision, on a C++ engine.

    import lowbit as lb
    (x, y), (xt, yt) = lb.datasets.fashion_mnist()
    model = lb.models.lenet()
    model.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=128, epochs=2, validation_data=(xt, yt))
"""
from ._loader import load_core

_core = load_core(__name__)  # finds libdnnl.so.3 / libgomp.so.1 in any install layout (see _loader)
from . import (  # one submodule per line
    callbacks,
    constraints,
    datasets,
    energy,
    experiments,
    formats,
    kernels,
    layers,
    models,
    netadapt,
    optimizers,
    packed,
    plots,
    precision,
    quantize,
    seeds,
    serial,
    summary,
)
from .layers import Input
from .model import Model, Sequential, load_model
from .packed import load_packed
from .precision import Precision

__version__ = "0.1.0"
__all__ = ["Diverged", "Input", "Model", "Sequential", "load_model", "load_packed", "Precision", "build_info", "set_num_threads",
           "callbacks",
           "constraints",
           "datasets",
           "energy",
           "experiments",
           "formats",
           "kernels",
           "layers",
           "models",
           "netadapt",
           "optimizers",
           "packed",
           "plots",
           "precision",
           "quantize",
           "seeds",
           "serial",
           "summary",
           ]

Diverged = _core.Diverged
build_info = _core.build_info
set_num_threads = _core.set_num_threads
