"""Command line: ``lowbit train ...``, ``lowbit compare ...``, ``lowbit info``."""
from __future__ import annotations

import argparse
import sys


def cmd_train(a):
    import lowbit as lb
    (x, y), (xt, yt) = lb.datasets.load(a.dataset, a.data_root)
    if a.limit:
        x, y = x[:a.limit], y[:a.limit]
    build = getattr(lb.models, a.model)
    model = build(input_shape=x.shape[1:], num_classes=int(max(y.max(), yt.max())) + 1, seed=a.seed)
    opt = {"adam": lb.optimizers.Adam, "sgd": lb.optimizers.SGD, "adadelta": lb.optimizers.Adadelta,
           "rmsprop": lb.optimizers.RMSprop}[a.optimizer](learning_rate=a.lr)
    model.compile(opt, a.loss, metrics=["accuracy"])
    if a.verbose:
        model.summary()
    h = model.fit(x, y, batch_size=a.batch_size, epochs=a.epochs, validation_data=(xt, yt), seed=a.seed,
                  verbose=1 if a.verbose else 0)
    print(f"{'epoch':>5} {'loss':>8} {'accuracy':>9} {'val_loss':>9} {'val_acc':>8} {'time_s':>7} {'img/s':>7}")
    for e in range(len(h.history["loss"])):
        hh = {k: v[e] for k, v in h.history.items()}
        print(f"{e + 1:>5} {hh['loss']:>8.4f} {hh['accuracy']:>9.4f} {hh['val_loss']:>9.4f} "
              f"{hh['val_accuracy']:>8.4f} {hh['epoch_time']:>7.1f} {len(x) / hh['epoch_time']:>7.0f}")
    print(f"final test accuracy: {h.history['val_accuracy'][-1] * 100:.2f}%")
    if a.save:
        model.save_weights(a.save)
        print(f"weights written to {a.save}")
    return 0


def _names(csv):
    return [v.strip() for v in csv.split(",") if v.strip()]


def cmd_compare(a):
    """Train models at several precisions with the same seed and data (lb.experiments.run):
    the results table, and optionally the curves and bar plots."""
    from . import experiments, plots
    res = experiments.run(_names(a.models), _names(a.precisions), data=a.dataset, data_root=a.data_root,
                          epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, optimizer="adam",
                          learning_rate=a.lr, loss=a.loss, train_limit=a.limit or None,
                          test_limit=a.test_limit or None, results_dir=a.results_dir or None, verbose=a.verbose,
                          title=f"{a.dataset}: {a.epochs} epoch(s), "
                                f"{'first ' + str(a.limit) if a.limit else 'all'} training images")
    print(res)
    for path, plot in ((a.plot, plots.plot_curves), (a.bars, plots.plot_bars)):
        if path:
            import os
            import matplotlib.pyplot as plt
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            plt.close(plot(res, path=path))
            print(f"plot written to {path}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="lowbit", description="Reduced-precision CNN training on a C++ engine.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a reference model and report per-epoch loss/accuracy")
    from .models import __all__ as model_names
    from .datasets import NAMES as dataset_names
    t.add_argument("--model", choices=model_names, default="lenet")
    t.add_argument("--dataset", choices=dataset_names, default="fashion_mnist")
    t.add_argument("--data-root", default=None)
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--optimizer", choices=["adam", "sgd", "adadelta", "rmsprop"], default="adam")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--loss", choices=["categorical_crossentropy", "mse"], default="categorical_crossentropy")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=0, help="use only the first N training images")
    t.add_argument("--save", default=None, help="write the trained weights (.npz) here")
    t.add_argument("--quiet", dest="verbose", action="store_false")
    c = sub.add_parser("compare", help="train models at several precisions (same seed and data): results table "
                                       "(accuracy, time, size, energy estimate) and plots")
    c.add_argument("--models", "--model", dest="models", default="lenet",
                   help=f"comma-separated names in lb.models ({', '.join(model_names)})")
    c.add_argument("--precisions", default="fp32,fp16,bf16,fixed16,fixed8,binary",
                   help="comma-separated precision presets")
    c.add_argument("--plot", default=None, help="write the loss/accuracy curves here (PNG/SVG/PDF)")
    c.add_argument("--bars", default=None, help="write the accuracy/size/energy bars here")
    c.add_argument("--results-dir", default=None,
                   help="store each finished run here; a rerun skips the stored ones")
    c.add_argument("--test-limit", type=int, default=0, help="use only the first N test images")
    for arg, kw in [("--dataset", dict(choices=dataset_names, default="fashion_mnist")),
                    ("--data-root", dict(default=None)), ("--epochs", dict(type=int, default=2)),
                    ("--batch-size", dict(type=int, default=128)), ("--lr", dict(type=float, default=1e-3)),
                    ("--loss", dict(choices=["categorical_crossentropy", "mse"], default="categorical_crossentropy")),
                    ("--seed", dict(type=int, default=0)), ("--limit", dict(type=int, default=0))]:
        c.add_argument(arg, **kw)
    c.add_argument("--quiet", dest="verbose", action="store_false")
    sub.add_parser("info", help="engine build and CPU features")
    a = p.parse_args(argv)
    try:
        if a.cmd == "train":
            return cmd_train(a)
        if a.cmd == "compare":
            return cmd_compare(a)
        import lowbit as lb
        for k, v in lb.build_info().items():
            print(f"{k}: {v}")
        print(f"binary kernels: {lb.kernels.info()['binary']}")
        return 0
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
