"""Tests for lowbit.datasets (IDX / CIFAR parsing, search paths, helpers)."""

import gzip
import importlib.util
import os
import pickle
import re
import shlex
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

try:
    from lowbit import datasets
except ImportError:  # package not built yet: load the source file directly
    _src = Path(__file__).resolve().parents[1] / "python" / "lowbit" / "datasets.py"
    _spec = importlib.util.spec_from_file_location("_lowbit_datasets_src", _src)
    datasets = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(datasets)


IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    datasets.clear_cache()
    yield
    datasets.clear_cache()


# ---------------------------------------------------------------- helpers

def idx_images(imgs):
    n, h, w = imgs.shape
    return struct.pack(">IIII", 0x803, n, h, w) + imgs.astype(np.uint8).tobytes()


def idx_labels(lbls):
    return struct.pack(">II", 0x801, len(lbls)) + lbls.astype(np.uint8).tobytes()


def write(path, payload, gz=False):
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_idx_dir(folder, n_train=7, n_test=3, gz=(False, False, False, False), seed=1):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tr_x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    tr_x[0, 0, 0], tr_x[0, 0, 1] = 0, 255
    tr_y = rng.integers(0, 10, n_train).astype(np.uint8)
    te_x = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    te_y = rng.integers(0, 10, n_test).astype(np.uint8)
    payloads = (idx_images(tr_x), idx_labels(tr_y), idx_images(te_x), idx_labels(te_y))
    for name, payload, z in zip(IDX_NAMES, payloads, gz):
        write(folder / name, payload, z)
    return tr_x, tr_y, te_x, te_y


def check_split(x, y, n, shape):
    assert x.shape == (n,) + shape
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (n,) and y.dtype == np.int64
    assert not x.flags.writeable and not y.flags.writeable


@pytest.fixture
def no_defaults(tmp_path, monkeypatch):
    """Point LOWBIT_DATA and HOME at empty folders."""
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path / "envdata"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# ---------------------------------------------------------------- real data

def test_real_fashion_mnist():
    try:
        (xtr, ytr), (xte, yte) = datasets.fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    check_split(xtr, ytr, 60000, (1, 28, 28))
    check_split(xte, yte, 10000, (1, 28, 28))
    for x in (xtr, xte):
        assert x.min() == 0.0 and x.max() == 1.0
    assert ytr.min() == 0 and ytr.max() == 9
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yte, minlength=10), [1000] * 10)
    # cached: same read-only objects on the second call
    (xtr2, _), _ = datasets.fashion_mnist()
    assert xtr2 is xtr
    with pytest.raises(ValueError):
        xtr[0, 0, 0, 0] = 1.0


# ---------------------------------------------------------------- IDX parsing

@pytest.mark.parametrize("gz", [(False,) * 4, (True,) * 4, (True, False, False, True)])
def test_mnist_roundtrip(tmp_path, gz):
    tr_x, tr_y, te_x, te_y = make_idx_dir(tmp_path, gz=gz)
    (xtr, ytr), (xte, yte) = datasets.mnist(root=tmp_path)
    check_split(xtr, ytr, 7, (1, 28, 28))
    check_split(xte, yte, 3, (1, 28, 28))
    np.testing.assert_array_equal(xtr[:, 0], tr_x.astype(np.float32) / 255)
    np.testing.assert_array_equal(xte[:, 0], te_x.astype(np.float32) / 255)
    np.testing.assert_array_equal(ytr, tr_y)
    np.testing.assert_array_equal(yte, te_y)
    assert xtr[0, 0, 0, 0] == 0.0 and xtr[0, 0, 0, 1] == 1.0


def test_mnist_root_as_str_and_cache(tmp_path):
    make_idx_dir(tmp_path)
    a = datasets.mnist(str(tmp_path))
    b = datasets.mnist(tmp_path)
    assert a[0][0] is b[0][0]


def test_bad_magic(tmp_path):
    make_idx_dir(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(struct.pack(">II", 0x803, 7) + bytes(7))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte") as e:
        datasets.mnist(tmp_path)
    assert "magic" in str(e.value)


def test_bad_magic_gz(tmp_path):
    make_idx_dir(tmp_path, gz=(False, False, True, False))
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">IIII", 0x801, 3, 28, 28) + bytes(3 * 784))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        datasets.mnist(tmp_path)


def test_truncated(tmp_path):
    make_idx_dir(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        datasets.mnist(tmp_path)


def test_truncated_gz(tmp_path):
    make_idx_dir(tmp_path, gz=(True,) * 4)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        datasets.mnist(tmp_path)


def test_count_mismatch(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(np.zeros(2)))
    with pytest.raises(ValueError, match="t10k"):
        datasets.mnist(tmp_path)


# ---------------------------------------------------------------- search paths

def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        datasets.mnist(missing)
    assert str(missing) in str(e.value)


def test_missing_one_file(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        datasets.fashion_mnist(tmp_path)


def test_mnist_default_search_lists_all_places(no_defaults):
    with pytest.raises(FileNotFoundError) as e:
        datasets.mnist()
    msg = str(e.value)
    assert str(no_defaults / "envdata" / "mnist") in msg
    assert str(no_defaults / "home" / ".cache" / "lowbit" / "mnist") in msg
    assert "LOWBIT_DATA" in msg


def test_fashion_default_search_message(no_defaults, monkeypatch):
    # hide the system folder so the search fails everywhere
    real_default = datasets._default_dirs
    monkeypatch.setattr(
        datasets, "_default_dirs",
        lambda name, system_dirs=(): real_default(
            name, [no_defaults / "sys" / Path(d).name for d in system_dirs]))
    with pytest.raises(FileNotFoundError) as e:
        datasets.fashion_mnist()
    msg = str(e.value)
    assert str(no_defaults / "envdata" / "fashion-mnist") in msg
    assert str(no_defaults / "sys" / "fashion-mnist") in msg
    assert str(no_defaults / "home" / ".cache" / "lowbit" / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_fashion_env_var_first(no_defaults):
    make_idx_dir(no_defaults / "envdata" / "fashion-mnist", n_train=4, n_test=2)
    (xtr, _), (xte, _) = datasets.fashion_mnist()
    assert xtr.shape == (4, 1, 28, 28) and xte.shape == (2, 1, 28, 28)


def test_mnist_user_cache(no_defaults, monkeypatch):
    monkeypatch.delenv("LOWBIT_DATA")
    make_idx_dir(no_defaults / "home" / ".cache" / "lowbit" / "mnist",
                 n_train=5, n_test=2, gz=(True,) * 4)
    (xtr, _), _ = datasets.mnist()
    assert xtr.shape == (5, 1, 28, 28)


# ---------------------------------------------------------------- CIFAR-10

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def py2_pickle(d):
    """A batch dict serialised as Python 2's cPickle (protocol 2) wrote the
    official python-version files: byte strings as SHORT_BINSTRING/BINSTRING
    (no _codecs.encode), numpy globals under ``numpy.core``, written opcode by
    opcode so the test does not depend on this Python's pickler."""
    def string(b):
        if len(b) < 256:
            return b"U" + bytes([len(b)]) + b
        return b"T" + struct.pack("<i", len(b)) + b

    def value(v):
        if isinstance(v, bytes):
            return string(v)
        if isinstance(v, int):
            return b"J" + struct.pack("<i", v)
        if isinstance(v, list):  # EMPTY_LIST MARK items APPENDS
            return b"](" + b"".join(value(x) for x in v) + b"e"
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8
        shape = b"(" + b"".join(value(n) for n in v.shape) + b"t"
        return (
            # _reconstruct(ndarray, (0,), 'b')
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
            + string(b"b") + b"\x87R"
            # BUILD with (1, shape, dtype('u1', 0, 1) BUILT with its state, False, raw)
            + b"(K\x01" + shape + b"cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R"
            + b"(K\x03" + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            + b"\x89" + string(v.tobytes()) + b"tb")

    items = b"".join(string(k) + value(v) for k, v in d.items())
    return b"\x80\x02}(" + items + b"u."  # PROTO 2, EMPTY_DICT, MARK ... SETITEMS, STOP


def make_cifar(folder, per_batch=2, str_keys=False, layout="py", seed=3, protocol=2):
    """Write the 6 CIFAR-10 batches into ``folder``; layout "py" (pickled by
    this Python, protocol 2 like the official files), "py2" (as Python 2
    wrote the official files) or "bin" (the binary version's 3073-byte
    records)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in CIFAR_NAMES:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[0, :2] = 0, 255  # extremes
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        labels[0], labels[-1] = 0, 9  # first and last class
        batches[name] = (data, labels)
        if layout == "bin":
            records = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
            (folder / (name + ".bin")).write_bytes(records.tobytes())
            continue
        d = {"data": data, "labels": labels, "batch_label": name,
             "filenames": [f"img_{name}_{i}.png" for i in range(per_batch)]}
        if not str_keys:
            d = {k.encode(): v for k, v in d.items()}
            d[b"batch_label"] = name.encode()
            d[b"filenames"] = [f.encode() for f in d[b"filenames"]]
        with open(folder / name, "wb") as f:
            if layout == "py2":
                f.write(py2_pickle(d))
            else:
                pickle.dump(d, f, protocol=protocol)
    return batches


def cifar_reference(batches):
    """Expected (x_train, y_train), (x_test, y_test) from the raw bytes."""
    def split(names):
        data = np.concatenate([batches[n][0] for n in names])
        x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255)
        return x, np.array(sum((batches[n][1] for n in names), []), np.int64)
    return split(CIFAR_NAMES[:5]), split(CIFAR_NAMES[5:])


def assert_cifar_equal(got, want):
    for (x, y), (xw, yw) in zip(got, want):
        np.testing.assert_array_equal(x, xw)
        np.testing.assert_array_equal(y, yw)


@pytest.mark.parametrize("layout", ["py", "py2", "bin"])
@pytest.mark.parametrize("point_at_parent", [True, False])
def test_cifar_roundtrip(tmp_path, point_at_parent, layout):
    folder = tmp_path / ("cifar-10-batches-bin" if layout == "bin" else "cifar-10-batches-py")
    batches = make_cifar(folder, layout=layout)
    (xtr, ytr), (xte, yte) = got = datasets.cifar10(tmp_path if point_at_parent else folder)
    check_split(xtr, ytr, 10, (3, 32, 32))
    check_split(xte, yte, 2, (3, 32, 32))
    assert_cifar_equal(got, cifar_reference(batches))
    # row layout: 1024 R, 1024 G, 1024 B, each row-major
    i, c, h, w = 7, 2, 5, 30
    data = np.concatenate([batches[n][0] for n in CIFAR_NAMES[:5]])
    assert xtr[i, c, h, w] == np.float32(data[i, c * 1024 + h * 32 + w]) / np.float32(255)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_cifar_later_pickle_protocols(tmp_path, protocol):
    batches = make_cifar(tmp_path, layout="py", protocol=protocol)
    assert_cifar_equal(datasets.cifar10(tmp_path), cifar_reference(batches))


def test_cifar_py2_writer_matches_pickle(tmp_path):
    # The hand-written Python 2 stream is what numpy's own unpickling reads back.
    batches = make_cifar(tmp_path, layout="py2")
    with open(tmp_path / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(d[b"data"], batches["test_batch"][0])
    assert d[b"labels"] == batches["test_batch"][1]
    assert d[b"batch_label"] == b"test_batch"


def test_cifar_binary_and_python_identical(tmp_path):
    make_cifar(tmp_path / "py", per_batch=3, layout="py", seed=9)
    make_cifar(tmp_path / "bin", per_batch=3, layout="bin", seed=9)
    a = datasets.cifar10(tmp_path / "py")
    b = datasets.cifar10(tmp_path / "bin")
    assert a[0][0] is not b[0][0]
    assert_cifar_equal(a, b)


def test_cifar_prefers_binary(tmp_path):
    py = make_cifar(tmp_path / "cifar-10-batches-py", layout="py", seed=1)
    binary = make_cifar(tmp_path / "cifar-10-batches-bin", layout="bin", seed=2)
    assert_cifar_equal(datasets.cifar10(tmp_path), cifar_reference(binary))
    assert_cifar_equal(datasets.cifar10(tmp_path / "cifar-10-batches-py"), cifar_reference(py))
    # both versions in one folder: binary again
    make_cifar(tmp_path / "cifar-10-batches-py", layout="bin", seed=2)
    assert_cifar_equal(datasets.cifar10(tmp_path / "cifar-10-batches-py"),
                       cifar_reference(binary))


def test_cifar_str_keys_and_env(no_defaults):
    make_cifar(no_defaults / "envdata" / "cifar10", str_keys=True)
    (xtr, _), _ = datasets.cifar10()
    assert xtr.shape == (10, 3, 32, 32)


def test_cifar_missing(no_defaults):
    with pytest.raises(FileNotFoundError) as e:
        datasets.cifar10()
    msg = str(e.value)
    assert str(no_defaults / "envdata" / "cifar10") in msg
    assert str(no_defaults / "home" / ".cache" / "lowbit" / "cifar10") in msg
    assert "test_batch.bin" in msg and "cifar-10-binary.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match="nope"):
        datasets.cifar10(no_defaults / "nope")


def test_cifar_missing_one_binary_file(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-bin", layout="bin")
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-bin  \(missing: data_batch_4\.bin\)"):
        datasets.cifar10(tmp_path)


class _Payload:
    """Pickles as a call of ``func(*args)``: what a hostile batch file holds."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _open_payload(marker):
    return _Payload(open, str(marker), "w")


def _system_payload(marker):
    return _Payload(os.system, f"echo pwned > {shlex.quote(str(marker))}")


@pytest.mark.parametrize("payload, victim, name", [
    (_open_payload, "data_batch_1", "open"),
    (_system_payload, "test_batch", "system"),
])
def test_cifar_refuses_code_in_pickle(tmp_path, payload, victim, name):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    marker = tmp_path / "marker"
    d = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1],
         b"batch_label": payload(marker)}
    with open(folder / victim, "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(ValueError, match=rf"cifar10: .*{victim}: refused to load global '\w+\.{name}'"):
        datasets.cifar10(tmp_path)
    assert not marker.exists()
    # The file is live: plain pickle.load runs the payload.
    with open(folder / victim, "rb") as f:
        pickle.load(f, encoding="bytes")
    assert marker.exists()


def _tamper_dtype_flags(raw):
    # dtype state (3, '|', None, None, None, -1, -1, flags): flags 0 -> 63,
    # which tells numpy a plain uint8 holds Python objects.
    tail = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
    assert raw.count(tail) == 1
    return raw.replace(tail, tail[:-2] + b"\x3ft")


@pytest.mark.parametrize("content, what", [
    (lambda raw: pickle.dumps({b"data": np.array([[1, "x"]] * 2, dtype=object),
                               b"labels": [0, 1]}, protocol=2), "dtype"),
    (_tamper_dtype_flags, "has flags 0x3f"),
    (lambda raw: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                               b"labels": {0, 1}}, protocol=2), "'__builtin__.set'"),
    (lambda raw: os.urandom(500), "not a CIFAR-10 python batch"),  # may even unpickle, to a non-dict
    (lambda raw: pickle.dumps(7, protocol=2), "not a CIFAR-10 python batch (expected a dict, got int)"),
    (lambda raw: raw[: len(raw) // 2], "not a CIFAR-10 python batch"),
    (lambda raw: b"", "not a CIFAR-10 python batch"),
])
@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_foreign_pickle(tmp_path, content, what, protocol):
    make_cifar(tmp_path, layout="py2" if protocol == 2 else "py", protocol=protocol)
    p = tmp_path / "data_batch_2"
    p.write_bytes(content(p.read_bytes()))
    with pytest.raises(ValueError, match="data_batch_2") as e:
        datasets.cifar10(tmp_path)
    assert what in str(e.value)


@pytest.mark.parametrize("d, what", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
    ({b"data": np.zeros(3072, np.uint8), b"labels": [0]}, r"shape \(N, 3072\)"),
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "N > 0"),
    ({b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]}, "uint8 array, got int64"),
    ({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, "uint8 array, got list"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "expected 2 ints"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"a", b"b"]}, "expected 2 ints"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9, got 10"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, "0..9, got -1"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "missing key 'labels'"),
    ([1, 2], "expected a dict, got list"),
])
def test_cifar_bad_python_batch(tmp_path, d, what):
    make_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(ValueError, match="test_batch") as e:
        datasets.cifar10(tmp_path)
    assert re.search(what, str(e.value)), str(e.value)


@pytest.mark.parametrize("change, what", [
    (lambda raw: raw[:-1000], "got 5146 bytes"),           # truncated mid-record
    (lambda raw: raw + bytes(7), "got 6153 bytes"),        # trailing junk
    (lambda raw: b"", "got 0 bytes"),
    (lambda raw: bytes([10]) + raw[1:], "0..9, got 10"),   # label byte of record 0
    (lambda raw: raw[:3073] + bytes([255]) + raw[3074:], "0..9, got 255 (record 1"),
])
def test_cifar_bad_binary_batch(tmp_path, change, what):
    make_cifar(tmp_path, layout="bin")
    p = tmp_path / "data_batch_3.bin"
    p.write_bytes(change(p.read_bytes()))
    with pytest.raises(ValueError, match=r"data_batch_3\.bin") as e:
        datasets.cifar10(tmp_path)
    assert what in str(e.value)


# ---------------------------------------------------------------- digits

def test_digits_sklearn():
    pytest.importorskip("sklearn")
    (xtr, ytr), (xte, yte) = datasets.digits()
    check_split(xtr, ytr, 1437, (1, 8, 8))
    check_split(xte, yte, 360, (1, 8, 8))
    assert xtr.min() == 0.0 and xtr.max() == 1.0
    assert set(np.unique(ytr)) == set(range(10))
    datasets.clear_cache()
    (xtr2, _), _ = datasets.digits()
    np.testing.assert_array_equal(xtr, xtr2)  # deterministic split


def test_digits_split_with_fake_sklearn(monkeypatch):
    n = 50
    data = (np.arange(n * 64) % 17).reshape(n, 64).astype(np.float64)
    target = np.arange(n) % 10
    sk = types.ModuleType("sklearn")
    skd = types.ModuleType("sklearn.datasets")
    skd.load_digits = lambda return_X_y=False: (data, target)
    sk.datasets = skd
    monkeypatch.setitem(sys.modules, "sklearn", sk)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", skd)
    (xtr, ytr), (xte, yte) = datasets.digits()
    check_split(xtr, ytr, 40, (1, 8, 8))
    check_split(xte, yte, 10, (1, 8, 8))
    perm = np.random.default_rng(0).permutation(n)
    np.testing.assert_array_equal(ytr, target[perm[:40]])
    np.testing.assert_array_equal(yte, target[perm[40:]])
    np.testing.assert_array_equal(
        xte, (data[perm[40:]] / 16).reshape(10, 1, 8, 8).astype(np.float32))
    assert xtr.max() == 1.0


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        datasets.digits()


# ---------------------------------------------------------------- helpers

def test_pad_to():
    x = np.arange(2 * 1 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28)
    x.flags.writeable = False
    y = datasets.pad_to(x, 32)
    assert y.shape == (2, 1, 32, 32) and y.dtype == np.float32
    assert y.flags.c_contiguous and y.flags.writeable
    np.testing.assert_array_equal(y[:, :, 2:30, 2:30], x)
    assert y[:, :, :2].sum() == 0 and y[:, :, 30:].sum() == 0
    assert y[:, :, :, :2].sum() == 0 and y[:, :, :, 30:].sum() == 0
    # odd padding: extra row/column at the bottom/right
    z = datasets.pad_to(np.ones((1, 1, 2, 3)), 5)
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z[0, 0].sum(axis=1), [0, 3, 3, 0, 0])
    np.testing.assert_array_equal(z[0, 0].sum(axis=0), [0, 2, 2, 2, 0])
    assert datasets.pad_to(x, 28) is not x
    with pytest.raises(ValueError):
        datasets.pad_to(x, 27)


def test_to_rgb():
    x = np.random.default_rng(0).random((3, 1, 4, 5)).astype(np.float32)
    y = datasets.to_rgb(x)
    assert y.shape == (3, 3, 4, 5) and y.dtype == np.float32
    assert y.flags.c_contiguous and y.flags.writeable
    for c in range(3):
        np.testing.assert_array_equal(y[:, c], x[:, 0])
    y[0, 0, 0, 0] = 42.0
    assert x[0, 0, 0, 0] != 42.0
    with pytest.raises(ValueError):
        datasets.to_rgb(np.zeros((2, 2, 4, 4)))


def test_image_helpers_refuse_complex_nan_and_out_of_range_pixels():
    for f in (lambda a: datasets.pad_to(a, 6), datasets.to_rgb):
        with pytest.raises(TypeError, match="real numeric"):
            f(np.ones((1, 1, 4, 4), dtype=np.complex64))
        with pytest.raises(ValueError, match="finite"):
            f(np.full((1, 1, 4, 4), np.nan))
        with pytest.raises(ValueError, match="finite"):
            f(np.full((1, 1, 4, 4), 1e300))  # would become inf in float32


def test_fashion_as_cifar_shape(tmp_path):
    make_idx_dir(tmp_path, n_train=3, n_test=2)
    (xtr, _), _ = datasets.fashion_mnist(tmp_path)
    rgb = datasets.to_rgb(datasets.pad_to(xtr, 32))
    assert rgb.shape == (3, 3, 32, 32) and rgb.dtype == np.float32
    assert rgb.flags.c_contiguous


def test_select_classes_and_load_by_name():
    x = np.arange(7 * 4, dtype=np.float32).reshape(7, 1, 2, 2)
    y = np.array([3, 0, 6, 6, 1, 0, 3])
    xs, ys = datasets.select_classes(x, y, (6, 0))
    np.testing.assert_array_equal(ys, [1, 0, 0, 1])  # 6 -> 0, 0 -> 1, original order kept
    np.testing.assert_array_equal(xs, x[[1, 2, 3, 5]])
    assert ys.dtype == np.int64
    with pytest.raises(ValueError, match="no samples of class \\[9\\]"):
        datasets.select_classes(x, y, (0, 9))
    with pytest.raises(ValueError, match="at least two distinct"):
        datasets.select_classes(x, y, (0, 0))
    with pytest.raises(ValueError, match="one sample per label"):
        datasets.select_classes(x, y[:3], (0, 3))
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        datasets.load("svhn")
    (a, _), _ = datasets.load("digits")
    assert a is datasets.digits()[0][0]
