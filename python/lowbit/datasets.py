"""Small image-classification datasets as ready-to-use numpy arrays.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` where

* ``x`` is a C-contiguous ``float32`` array in NCHW layout with pixel
  values in ``[0, 1]`` (8-bit pixels divided by 255), and
* ``y`` is a 1-D ``int64`` array of class labels.

Loaders:

* :func:`fashion_mnist` -- Fashion-MNIST, (N, 1, 28, 28), 60000/10000.
* :func:`mnist` -- MNIST, (N, 1, 28, 28), 60000/10000.
* :func:`cifar10` -- CIFAR-10 (python pickle version), (N, 3, 32, 32),
  50000/10000.
* :func:`digits` -- scikit-learn's bundled 8x8 digits, (N, 1, 8, 8),
  deterministic 80/20 train/test split.

Nothing is ever downloaded.  When ``root`` is ``None`` the loaders look in
a fixed list of folders (``$LOWBIT_DATA/<name>``, system folders such as
``/usr/share/datasets/fashion-mnist`` from Debian's
``dataset-fashion-mnist`` package, and ``~/.cache/lowbit/<name>``); when
the files are missing a :class:`FileNotFoundError` lists every place
looked and how to obtain the data.

Caching: decoded arrays are kept in memory (keyed on the file paths and
their modification times), so repeated calls are free.  To make sharing
safe, the returned arrays are **read-only** (``arr.flags.writeable`` is
``False``) and repeated calls return the very same array objects.  Use
``arr.copy()`` if you need to modify one (e.g. in-place augmentation), and
:func:`clear_cache` to release the memory.

Helpers :func:`pad_to` and :func:`to_rgb` turn MNIST-shaped batches into
CIFAR-shaped ones (28x28 grey -> 32x32 RGB); both return new writable
arrays.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "fashion_mnist",
    "mnist",
    "cifar10",
    "digits",
    "pad_to",
    "to_rgb",
    "clear_cache",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
]

#: IDX magic number for unsigned-byte 3-D tensors (image files).
IDX_IMAGES_MAGIC = 0x00000803
#: IDX magic number for unsigned-byte 1-D tensors (label files).
IDX_LABELS_MAGIC = 0x00000801

_IDX_FILES = (
    ("train-images-idx3-ubyte", IDX_IMAGES_MAGIC),
    ("train-labels-idx1-ubyte", IDX_LABELS_MAGIC),
    ("t10k-images-idx3-ubyte", IDX_IMAGES_MAGIC),
    ("t10k-labels-idx1-ubyte", IDX_LABELS_MAGIC),
)

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_FILES = _CIFAR_TRAIN + (_CIFAR_TEST,)


# --------------------------------------------------------------------------
# Search paths
# --------------------------------------------------------------------------

def _env_dir(name: str) -> Path | None:
    base = os.environ.get("LOWBIT_DATA")
    return Path(base).expanduser() / name if base else None


def _cache_dir(name: str) -> Path:
    return Path.home() / ".cache" / "lowbit" / name


def _default_dirs(name: str, system_dirs=()) -> list[Path]:
    """Folders searched, in order, when ``root`` is None."""
    dirs = []
    env = _env_dir(name)
    if env is not None:
        dirs.append(env)
    dirs.extend(Path(d) for d in system_dirs)
    dirs.append(_cache_dir(name))
    return dirs


def _find_idx_files(folder: Path):
    """Return the 4 IDX paths (plain preferred over .gz) or a list of
    the missing base names."""
    found, missing = [], []
    for base, _ in _IDX_FILES:
        for cand in (folder / base, folder / (base + ".gz")):
            if cand.is_file():
                found.append(cand)
                break
        else:
            missing.append(base)
    return found, missing


def _describe(folder: Path, missing) -> str:
    if not folder.exists():
        return f"  {folder}  (folder does not exist)"
    return f"  {folder}  (missing: {', '.join(missing)})"


def _stamp(paths) -> tuple:
    """Cache key part that changes when a file is replaced."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _readonly(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return path.read_bytes()


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one unsigned-byte IDX file; returns a uint8 array shaped by
    its header dims."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX file (no header)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{got:08x}, expected 0x{magic:08x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    size = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    if payload < size:
        raise ValueError(
            f"{path}: truncated IDX file: header dims {dims} need {size} "
            f"bytes of data, found {payload}"
        )
    if payload > size:
        raise ValueError(
            f"{path}: IDX file has {payload - size} unexpected trailing bytes "
            f"after {dims} data"
        )
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)


def _idx_split(img_path: Path, lbl_path: Path):
    img = _read_idx(img_path, IDX_IMAGES_MAGIC)
    lbl = _read_idx(lbl_path, IDX_LABELS_MAGIC)
    if img.shape[0] != lbl.shape[0]:
        raise ValueError(
            f"{img_path} has {img.shape[0]} images but {lbl_path} has "
            f"{lbl.shape[0]} labels"
        )
    n, h, w = img.shape
    x = np.divide(img.reshape(n, 1, h, w), np.float32(255), dtype=np.float32)
    y = lbl.astype(np.int64)
    return _readonly(x, y)


@functools.lru_cache(maxsize=4)
def _load_idx_cached(paths: tuple, stamp: tuple):
    tr_img, tr_lbl, te_img, te_lbl = (Path(p) for p in paths)
    return _idx_split(tr_img, tr_lbl), _idx_split(te_img, te_lbl)


def _load_idx_dataset(root, name: str, title: str, system_dirs, hint: str):
    if root is not None:
        dirs = [Path(os.fspath(root)).expanduser()]
    else:
        dirs = _default_dirs(name, system_dirs)
    looked = []
    for d in dirs:
        found, missing = _find_idx_files(d)
        if not missing:
            return _load_idx_cached(tuple(map(str, found)), _stamp(found))
        looked.append(_describe(d, missing))
    names = ", ".join(f"{b}[.gz]" for b, _ in _IDX_FILES)
    env_note = "" if root is not None or os.environ.get("LOWBIT_DATA") else (
        "\n  ($LOWBIT_DATA/" + name + " skipped: LOWBIT_DATA is not set)"
    )
    raise FileNotFoundError(
        f"{title} not found. Looked for {names} in:\n"
        + "\n".join(looked) + env_note + "\n" + hint
    )


def fashion_mnist(root=None):
    """Fashion-MNIST: ``(x_train, y_train), (x_test, y_test)``.

    x: float32 (N, 1, 28, 28) in [0, 1]; y: int64 in 0..9; N = 60000/10000.
    ``root`` is a folder holding the 4 IDX files (plain or ``.gz``).  If
    None, searches ``$LOWBIT_DATA/fashion-mnist``,
    ``/usr/share/datasets/fashion-mnist`` and ``~/.cache/lowbit/fashion-mnist``.
    Returned arrays are cached and read-only.
    """
    hint = (
        "To get the data: `sudo apt-get install dataset-fashion-mnist` (Debian/"
        "Ubuntu, installs to /usr/share/datasets/fashion-mnist), or put the 4 "
        "files from https://github.com/zalandoresearch/fashion-mnist in "
        f"{_cache_dir('fashion-mnist')}, or in $LOWBIT_DATA/fashion-mnist and "
        "set LOWBIT_DATA, or pass root=<folder>."
    )
    return _load_idx_dataset(
        root, "fashion-mnist", "Fashion-MNIST",
        ("/usr/share/datasets/fashion-mnist",), hint,
    )


def mnist(root=None):
    """MNIST handwritten digits: ``(x_train, y_train), (x_test, y_test)``.

    x: float32 (N, 1, 28, 28) in [0, 1]; y: int64 in 0..9; N = 60000/10000.
    ``root`` is a folder holding the 4 IDX files (plain or ``.gz``).  If
    None, searches ``$LOWBIT_DATA/mnist`` and ``~/.cache/lowbit/mnist``.
    Returned arrays are cached and read-only.
    """
    hint = (
        "To get the data: put the 4 MNIST IDX files (plain or .gz) in "
        f"{_cache_dir('mnist')}, or in $LOWBIT_DATA/mnist and set "
        "LOWBIT_DATA, or pass root=<folder>."
    )
    return _load_idx_dataset(root, "mnist", "MNIST", (), hint)


# --------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------

def _cifar_batch(path: Path):
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a dict, got {type(d).__name__}")

    def get(key):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
        raise ValueError(f"{path}: missing key {key!r}")

    data = np.asarray(get("data"), dtype=np.uint8)
    labels = np.asarray(get("labels"), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {data.shape[0]} images but labels have shape {labels.shape}"
        )
    return data, labels


def _cifar_split(paths):
    parts = [_cifar_batch(p) for p in paths]
    data = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    # Each row is 1024 red, 1024 green, 1024 blue values, row-major -> NCHW.
    x = np.divide(data.reshape(-1, 3, 32, 32), np.float32(255), dtype=np.float32)
    return _readonly(x, y)


@functools.lru_cache(maxsize=2)
def _load_cifar_cached(folder: str, stamp: tuple):
    d = Path(folder)
    return (_cifar_split([d / n for n in _CIFAR_TRAIN]),
            _cifar_split([d / _CIFAR_TEST]))


def cifar10(root=None):
    """CIFAR-10 (python pickle version): ``(x_train, y_train), (x_test, y_test)``.

    x: float32 (N, 3, 32, 32) in [0, 1]; y: int64 in 0..9; N = 50000/10000.
    ``root`` is the ``cifar-10-batches-py`` folder or its parent.  If None,
    searches ``$LOWBIT_DATA/cifar10`` and ``~/.cache/lowbit/cifar10`` (each
    also with a ``cifar-10-batches-py`` subfolder).  The batch files are
    Python pickles: only load files you trust.  Returned arrays are cached
    and read-only.
    """
    if root is not None:
        bases = [Path(os.fspath(root)).expanduser()]
    else:
        bases = _default_dirs("cifar10")
    looked = []
    for base in bases:
        for d in (base, base / _CIFAR_DIR):
            missing = [n for n in _CIFAR_FILES if not (d / n).is_file()]
            if not missing:
                files = [d / n for n in _CIFAR_FILES]
                return _load_cifar_cached(str(d.resolve()), _stamp(files))
            looked.append(_describe(d, missing))
    env_note = "" if root is not None or os.environ.get("LOWBIT_DATA") else (
        "\n  ($LOWBIT_DATA/cifar10 skipped: LOWBIT_DATA is not set)"
    )
    raise FileNotFoundError(
        "CIFAR-10 not found. Looked for " + ", ".join(_CIFAR_FILES) + " in:\n"
        + "\n".join(looked) + env_note + "\n"
        "To get the data: download "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract "
        f"it into {_cache_dir('cifar10')} (or $LOWBIT_DATA/cifar10 and set "
        "LOWBIT_DATA), or pass root=<folder>."
    )


# --------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _load_digits_cached():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "lowbit.datasets.digits() needs scikit-learn: pip install scikit-learn"
        ) from e
    data, target = load_digits(return_X_y=True)
    x = np.divide(np.asarray(data).reshape(-1, 1, 8, 8), np.float32(16),
                  dtype=np.float32)
    y = np.asarray(target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    n_train = int(0.8 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    # Fancy indexing gives fresh C-contiguous arrays.
    return _readonly(x[tr], y[tr]), _readonly(x[te], y[te])


def digits():
    """scikit-learn's 8x8 digits: ``(x_train, y_train), (x_test, y_test)``.

    x: float32 (N, 1, 8, 8) in [0, 1] (values 0..16 divided by 16); y: int64
    in 0..9.  The 1797 images are shuffled with ``np.random.default_rng(0)``;
    the first 80% (1437) are train, the rest (360) test.  Needs
    scikit-learn (imported lazily).  Returned arrays are cached and read-only.
    """
    return _load_digits_cached()


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def pad_to(x, size: int) -> np.ndarray:
    """Zero-pad the last two axes (H, W) centrally to ``size x size``.

    E.g. (N, 1, 28, 28) -> (N, 1, 32, 32) with 2 pixels each side.  If the
    padding is odd, the extra row/column goes at the bottom/right.  Returns
    a new C-contiguous float32 array.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"pad_to needs an array with H and W axes, got shape {x.shape}")
    h, w = x.shape[-2:]
    size = int(size)
    if size < h or size < w:
        raise ValueError(f"pad_to: size {size} is smaller than image {h}x{w}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros(x.shape[:-2] + (size, size), dtype=np.float32)
    out[..., top:top + h, left:left + w] = x
    return out


def to_rgb(x) -> np.ndarray:
    """Replicate a single channel to 3: (N, 1, H, W) -> (N, 3, H, W).

    An input that already has 3 channels is copied unchanged.  Returns a new
    C-contiguous float32 array.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 3 or x.shape[-3] not in (1, 3):
        raise ValueError(f"to_rgb expects (..., 1, H, W) input, got shape {x.shape}")
    reps = (1,) * (x.ndim - 3) + (3 // x.shape[-3], 1, 1)
    return np.ascontiguousarray(np.tile(x, reps))


def clear_cache() -> None:
    """Drop all dataset arrays kept in memory."""
    _load_idx_cached.cache_clear()
    _load_cifar_cached.cache_clear()
    _load_digits_cached.cache_clear()
