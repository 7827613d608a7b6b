"""Coverage-guided fuzzing (atheris, libFuzzer) of lowbit's file readers.

    pip install atheris
    python scripts/fuzz_readers.py -runs=100000 [corpus_dir ...] [libFuzzer flags]
    python scripts/fuzz_readers.py -max_total_time=600

Each input is written to a file and handed to one reader, chosen by its first byte:
``load_weights`` and ``lb.load_model`` (lowbit files), the IDX reader of MNIST /
Fashion-MNIST (plain and gzip) and the CIFAR-10 batch readers (binary records, and the
python version's allow-list unpickler). A reader may return or raise ValueError; any
other exception, a crash or a hang is a finding (libFuzzer saves the input). After a
refused ``load_weights`` the model must be unchanged. Without a corpus directory the
run starts from valid files of each kind, written to a temporary folder.
"""
import os
import pickle
import sys
import tempfile

import atheris
import numpy as np

with atheris.instrument_imports(include=["lowbit"]):
    import lowbit as lb
    from lowbit import datasets

L = lb.layers
WORK = tempfile.mkdtemp(prefix="lowbit-fuzz-")


def tiny_model():
    m = lb.Sequential([L.Conv2D(2, 3, input_shape=(1, 5, 5), name="c"), L.Flatten(name="f"),
                       L.Dense(3, activation="softmax", name="d")], name="fuzz", seed=1)
    m.compile("adam", precision="fixed8")
    return m


MODEL = tiny_model()
MODEL.fit(np.random.default_rng(0).uniform(size=(4, 1, 5, 5)).astype(np.float32), [0, 1, 2, 0], verbose=0)
WEIGHTS = MODEL.get_weights()


def idx(dims, magic):
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + bytes(int(np.prod(dims)))


def seeds():
    """One valid input per reader (first byte = reader)."""
    out = []
    for k, name in ((0, "save_weights"), (1, "save")):
        path = os.path.join(WORK, f"seed{k}")
        getattr(MODEL, name)(path)
        out.append(bytes([k]) + open(path, "rb").read())
    out.append(bytes([2]) + idx((2, 3, 3), datasets.IDX_IMAGES_MAGIC))
    out.append(bytes([3]) + idx((4,), datasets.IDX_LABELS_MAGIC))
    import gzip
    out.append(bytes([4]) + gzip.compress(idx((1, 2, 2), datasets.IDX_IMAGES_MAGIC)))
    out.append(bytes([5]) + bytes(3073 * 2))
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}
    out.append(bytes([6]) + pickle.dumps(batch, protocol=2))
    return out


def read(kind, path):
    if kind == 0:
        before = MODEL.get_weights()
        try:
            MODEL.load_weights(path)
        except ValueError:
            for a, b in zip(MODEL.get_weights(), before):
                if not np.array_equal(a, b):
                    raise AssertionError("a refused file changed the model")
            raise
        MODEL.set_weights(WEIGHTS)
    elif kind == 1:
        lb.load_model(path)
    elif kind in (2, 3, 4):
        magic = datasets.IDX_LABELS_MAGIC if kind == 3 else datasets.IDX_IMAGES_MAGIC
        if kind == 4:
            os.replace(path, path + ".gz")
            path += ".gz"
        datasets._read_idx(datasets.Path(path), magic)
    elif kind == 5:
        os.replace(path, path + ".bin")
        datasets._cifar_batch(datasets.Path(path + ".bin"))
    else:
        datasets._cifar_batch(datasets.Path(path))


def test_one_input(data):
    if not data:
        return
    kind, payload = data[0] % 7, data[1:]
    path = os.path.join(WORK, "input")
    for p in (path, path + ".gz", path + ".bin"):
        if os.path.exists(p):
            os.unlink(p)
    with open(path, "wb") as f:
        f.write(payload)
    try:
        read(kind, path)
    except ValueError:
        pass


def main():
    args = list(sys.argv)
    if not any(os.path.isdir(a) for a in args[1:]):
        corpus = os.path.join(WORK, "corpus")
        os.makedirs(corpus)
        for i, s in enumerate(seeds()):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(s)
        args.append(corpus)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
