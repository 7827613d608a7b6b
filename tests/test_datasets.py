"""Tests for lowbit.datasets (IDX / CIFAR parsing, search paths, helpers)."""

import gzip
import importlib.util
import pickle
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

def make_cifar(folder, per_batch=2, str_keys=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        d = {"data": data, "labels": labels, "batch_label": name}
        if not str_keys:
            d = {k.encode(): v for k, v in d.items()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("point_at_parent", [True, False])
def test_cifar_roundtrip(tmp_path, point_at_parent):
    folder = tmp_path / "cifar-10-batches-py"
    batches = make_cifar(folder)
    (xtr, ytr), (xte, yte) = datasets.cifar10(tmp_path if point_at_parent else folder)
    check_split(xtr, ytr, 10, (3, 32, 32))
    check_split(xte, yte, 2, (3, 32, 32))
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    np.testing.assert_array_equal(ytr, labels)
    np.testing.assert_array_equal(yte, batches["test_batch"][1])
    # row layout: 1024 R, 1024 G, 1024 B, each row-major
    i, c, h, w = 7, 2, 5, 30
    assert xtr[i, c, h, w] == np.float32(data[i, c * 1024 + h * 32 + w]) / np.float32(255)
    np.testing.assert_array_equal(
        xte, batches["test_batch"][0].reshape(2, 3, 32, 32).astype(np.float32) / 255)


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
    with pytest.raises(FileNotFoundError, match="nope"):
        datasets.cifar10(no_defaults / "nope")


def test_cifar_bad_shape(tmp_path):
    make_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="test_batch"):
        datasets.cifar10(tmp_path)


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


def test_fashion_as_cifar_shape(tmp_path):
    make_idx_dir(tmp_path, n_train=3, n_test=2)
    (xtr, _), _ = datasets.fashion_mnist(tmp_path)
    rgb = datasets.to_rgb(datasets.pad_to(xtr, 32))
    assert rgb.shape == (3, 3, 32, 32) and rgb.dtype == np.float32
    assert rgb.flags.c_contiguous
