"""Command line: ``lowbit train ...``, ``lowbit info``."""
from __future__ import annotations

import argparse
import sys


def _load(name, root):
    from . import datasets
    if name == "fashion_mnist":
        return datasets.fashion_mnist(root)
    if name == "mnist":
        return datasets.mnist(root)
    if name == "cifar10":
        return datasets.cifar10(root)
    if name == "digits":
        return datasets.digits()
    raise ValueError(f"unknown dataset {name!r}")


def cmd_train(a):
    import lowbit as lb
    (x, y), (xt, yt) = _load(a.dataset, a.data_root)
    if a.limit:
        x, y = x[:a.limit], y[:a.limit]
    build = {"lenet": lb.models.lenet, "simple_cnn": lb.models.simple_cnn}[a.model]
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


def cmd_compare(a):
    """Train the same model, seed and data at several precisions: a table and a plot."""
    import lowbit as lb
    (x, y), (xt, yt) = _load(a.dataset, a.data_root)
    if a.limit:
        x, y = x[:a.limit], y[:a.limit]
    build = {"lenet": lb.models.lenet, "simple_cnn": lb.models.simple_cnn}[a.model]
    runs, rows = {}, []
    for p in a.precisions.split(","):
        model = build(input_shape=x.shape[1:], num_classes=int(max(y.max(), yt.max())) + 1, seed=a.seed)
        model.compile(lb.optimizers.Adam(a.lr), a.loss, metrics=["accuracy"], precision=p)
        h = model.fit(x, y, batch_size=a.batch_size, epochs=a.epochs, validation_data=(xt, yt), seed=a.seed,
                      verbose=1 if a.verbose else 0)
        runs[p] = h
        t = sum(h.history["epoch_time"]) / len(h.history["epoch_time"])
        rows.append((p, h.history["val_accuracy"][-1], h.history["val_loss"][-1], t, len(x) / t))
    print(f"{'precision':<10} {'test_acc':>8} {'test_loss':>9} {'s/epoch':>8} {'img/s':>7}")
    for p, acc, loss, t, ips in rows:
        print(f"{p:<10} {acc * 100:>7.2f}% {loss:>9.4f} {t:>8.1f} {ips:>7.0f}")
    if a.plot:
        from .plots import plot_histories
        plot_histories(runs, path=a.plot, title=f"{a.model} on {a.dataset}: loss and accuracy per precision")
        print(f"plot written to {a.plot}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="lowbit", description="Reduced-precision CNN training on a C++ engine.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a reference model and report per-epoch loss/accuracy")
    t.add_argument("--model", choices=["lenet", "simple_cnn"], default="lenet")
    t.add_argument("--dataset", choices=["fashion_mnist", "mnist", "cifar10", "digits"], default="fashion_mnist")
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
    c = sub.add_parser("compare", help="train one model at several precisions: table and loss/accuracy plot")
    c.add_argument("--precisions", default="fp32,fp16,bf16,fixed16,fixed8,binary")
    c.add_argument("--plot", default=None, help="write the loss/accuracy plot here (PNG/SVG/PDF)")
    for arg, kw in [("--model", dict(choices=["lenet", "simple_cnn"], default="lenet")),
                    ("--dataset", dict(choices=["fashion_mnist", "mnist", "cifar10", "digits"], default="fashion_mnist")),
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
