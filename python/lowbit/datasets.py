"""Small image-classification datasets as ready-to-use numpy arrays.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` where

* ``x`` is a C-contiguous ``float32`` array in NCHW layout with pixel
  values in ``[0, 1]`` (8-bit pixels divided by 255), and
* ``y`` is a 1-D ``int64`` array of class labels.

Loaders:

* :func:`fashion_mnist` -- Fashion-MNIST, (N, 1, 28, 28), 60000/10000.
* :func:`mnist` -- MNIST, (N, 1, 28, 28), 60000/10000.
* :func:`cifar10` -- CIFAR-10 (binary or python version), (N, 3, 32, 32),
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
import io
import os
import pickle
import pickletools
import zlib
from pathlib import Path

import numpy as np

from .formats import as_float32

__all__ = [
    "fashion_mnist",
    "mnist",
    "cifar10",
    "digits",
    "load",
    "NAMES",
    "pad_to",
    "to_rgb",
    "select_classes",
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
_CIFAR_BIN_DIR = "cifar-10-batches-bin"
# Train batches first, the test batch last.
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_BIN_FILES = tuple(n + ".bin" for n in _CIFAR_FILES)
_CIFAR_PIXELS = 3 * 32 * 32
_CIFAR_RECORD = 1 + _CIFAR_PIXELS  # binary version: label byte + pixels
_CIFAR_CLASSES = 10


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

class _RefusedGlobal(ValueError):
    """A batch pickle names a global outside the CIFAR-10 allow-list."""


# Marker standing in for the ``numpy.ndarray`` global: in a CIFAR-10 pickle
# that class is only ever the first argument of ``_reconstruct``, never called.
_NDARRAY = object()


def _plain_dtype(dtype) -> np.dtype:
    """A fresh copy of a dtype rebuilt from a pickle, if it is a plain number
    type (bool, int, uint, float)."""
    if not isinstance(dtype, np.dtype):
        raise ValueError(f"array dtype is {type(dtype).__name__}, not a numpy dtype")
    clean = np.dtype(dtype.str)
    if clean.kind not in "biuf" or dtype.names is not None or dtype.subdtype is not None:
        raise ValueError(f"unsupported array dtype {dtype}")
    # A pickled dtype brings its own flags (e.g. "holds Python objects") and
    # item size, which numpy trusts: a uint8 flagged as holding objects makes
    # numpy treat pixel bytes as object pointers.
    if dtype.flags != clean.flags or dtype.itemsize != clean.itemsize:
        raise ValueError(
            f"array dtype {dtype} has flags 0x{dtype.flags:x} and item size "
            f"{dtype.itemsize}, expected 0x{clean.flags:x} and {clean.itemsize}")
    return clean


class _BatchArray(np.ndarray):
    """The empty array ``_reconstruct`` returns; the pickle's BUILD step then
    calls ``__setstate__`` on it, which is where the dtype is checked."""

    def __setstate__(self, state):
        # numpy's state: ([version,] shape, dtype, is_fortran, raw bytes).
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ValueError(f"unexpected numpy array state {type(state).__name__}")
        super().__setstate__(state[:-3] + (_plain_dtype(state[-3]),) + state[-2:])


def _reconstruct(subtype, shape, typecode):
    # numpy pickles every array as _reconstruct(ndarray, (0,), 'b') followed
    # by a BUILD with the real shape, dtype and bytes.
    if subtype is not _NDARRAY or tuple(shape) != (0,) or typecode not in ("b", b"b"):
        raise ValueError(
            f"unexpected _reconstruct arguments ({subtype!r}, {shape!r}, {typecode!r})")
    return np.ndarray.__new__(_BatchArray, (0,), np.int8)


def _frombuffer(buf, dtype, shape, order):
    # numpy's form of an array at pickle protocol 5.
    if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F"):
        raise ValueError(f"unexpected _frombuffer arguments ({type(buf).__name__}, {order!r})")
    # As a _BatchArray, so that a BUILD on the result is checked too.
    array = np.frombuffer(buf, _plain_dtype(dtype)).reshape(shape, order=order)
    return array.view(_BatchArray)


def _dtype(spec, align=False, copy=False):
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str) or np.dtype(spec).kind not in "biuf":
        raise ValueError(f"unsupported numpy dtype {spec!r}")
    # Always a new dtype object: the BUILD that follows calls __setstate__ on
    # it, which must never reach numpy's shared built-in dtypes.
    return np.dtype(spec, bool(align), True)


def _latin1_bytes(text, encoding="latin1"):
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"unexpected _codecs.encode arguments ({text!r:.40}, {encoding!r})")
    return text.encode("latin1")


def _empty_bytes():
    # Python 3 pickles b"" at protocol 2 as bytes().
    return b""


#: The only globals a CIFAR-10 batch pickle may name, and what they become.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,   # numpy 1 writers
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2 writers
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,       # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 python batches.

    It rebuilds what those files hold -- dicts, lists, tuples, bytes, str,
    ints and numeric numpy arrays -- and refuses every other global, so a
    batch file can never call ``open``, ``os.system`` or any other function.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module, name):
        fn = _CIFAR_GLOBALS.get((module, name))
        if fn is None:
            raise _RefusedGlobal(
                f"cifar10: {self._path}: refused to load global '{module}.{name}': "
                "a CIFAR-10 batch holds only dicts, lists, bytes, str, ints and "
                "numpy arrays, and unpickling this file would call other code")
        if fn is _NDARRAY:
            return fn
        # A fresh wrapper per load: a BUILD aimed at it (which sets attributes
        # such as __defaults__) cannot change the module's functions.
        return lambda *args: fn(*args)

    def persistent_load(self, pid):
        raise ValueError(f"unexpected persistent id {pid!r:.40}")


def _check_pickle_ops(raw: bytes):
    """Opcodes checked before unpickling: a memo index far beyond what a CIFAR-10
    batch uses would make the C unpickler allocate gigabytes for its memo table."""
    for op, arg, _ in pickletools.genops(raw):
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET") and int(arg) > 10_000:
            raise ValueError(f"memo index {arg} at {op.name}")


def _cifar_pickle_batch(path: Path):
    """One batch of the python version: a dict with b'data' (N, 3072) uint8
    and b'labels' (N ints); returns (data, labels as int64)."""
    raw = path.read_bytes()
    try:
        _check_pickle_ops(raw)
        # from memory: a length field can never make the reader allocate more than the file
        d = _CifarUnpickler(io.BytesIO(raw), path).load()
    except _RefusedGlobal:
        raise
    except Exception as e:  # whatever a malformed stream makes go wrong
        raise ValueError(
            f"cifar10: {path}: not a CIFAR-10 python batch "
            f"({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"cifar10: {path}: not a CIFAR-10 python batch (expected a dict, got {type(d).__name__})")

    def get(key):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
        raise ValueError(f"cifar10: {path}: missing key {key!r}")

    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"cifar10: {path}: data: expected a uint8 array, got {what}")
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] != _CIFAR_PIXELS:
        raise ValueError(
            f"cifar10: {path}: data: expected shape (N, {_CIFAR_PIXELS}) with N > 0, "
            f"got {data.shape}")
    if not isinstance(labels, (list, np.ndarray)):
        raise ValueError(
            f"cifar10: {path}: labels: expected a list of ints, got {type(labels).__name__}")
    try:
        labels = np.asarray(labels)
    except ValueError as e:
        raise ValueError(f"cifar10: {path}: labels: expected a list of ints ({e})") from e
    if labels.dtype.kind not in "iu" or labels.shape != (data.shape[0],):
        raise ValueError(
            f"cifar10: {path}: labels: expected {data.shape[0]} ints (one per image), "
            f"got {labels.dtype} values of shape {labels.shape}")
    return data.view(np.ndarray), labels.astype(np.int64)


def _cifar_bin_batch(path: Path):
    """One batch of the binary version: records of 1 label byte followed by
    3072 pixel bytes; returns (data (N, 3072) uint8, labels int64)."""
    raw = path.read_bytes()
    n, extra = divmod(len(raw), _CIFAR_RECORD)
    if n == 0 or extra:
        raise ValueError(
            f"cifar10: {path}: expected a whole number (> 0) of {_CIFAR_RECORD}-byte "
            f"records (1 label byte + {_CIFAR_PIXELS} pixel bytes), got {len(raw)} bytes "
            f"({n} whole records + {extra} bytes; truncated or not a CIFAR-10 binary batch)")
    records = np.frombuffer(raw, np.uint8).reshape(n, _CIFAR_RECORD)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _cifar_batch(path: Path):
    read = _cifar_bin_batch if path.suffix == ".bin" else _cifar_pickle_batch
    data, labels = read(path)
    bad = np.flatnonzero((labels < 0) | (labels >= _CIFAR_CLASSES))
    if bad.size:
        raise ValueError(
            f"cifar10: {path}: labels: expected values in 0..{_CIFAR_CLASSES - 1}, "
            f"got {labels[bad[0]]} (record {bad[0]}, {bad.size} bad in all)")
    return data, labels


def _cifar_split(paths):
    parts = [_cifar_batch(p) for p in paths]
    data = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    # Each row is 1024 red, 1024 green, 1024 blue values, row-major -> NCHW.
    x = np.divide(data.reshape(-1, 3, 32, 32), np.float32(255), dtype=np.float32)
    return _readonly(x, y)


@functools.lru_cache(maxsize=2)
def _load_cifar_cached(paths: tuple, stamp: tuple):
    paths = [Path(p) for p in paths]
    return _cifar_split(paths[:-1]), _cifar_split(paths[-1:])


def _find_cifar(base: Path, looked: list):
    """The 6 batch paths (train..., test) under ``base``, the binary version
    preferred, or None after noting in ``looked`` what is missing where."""
    if not base.is_dir():
        looked.append(_describe(base, ()))
        return None
    for names, sub in ((_CIFAR_BIN_FILES, _CIFAR_BIN_DIR), (_CIFAR_FILES, _CIFAR_DIR)):
        for d in (base, base / sub):
            missing = [n for n in names if not (d / n).is_file()]
            if not missing:
                return [d / n for n in names]
            looked.append(_describe(d, missing))
    return None


def cifar10(root=None):
    """CIFAR-10: ``(x_train, y_train), (x_test, y_test)``.

    x: float32 (N, 3, 32, 32) in [0, 1]; y: int64 in 0..9; N = 50000/10000.
    Reads either official version: binary (``cifar-10-batches-bin``:
    ``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``, each a
    run of 3073-byte records: 1 label byte, then 1024 red, 1024 green and
    1024 blue bytes, row-major) or python (``cifar-10-batches-py``:
    ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, each a pickled dict
    with ``b'data'`` (N, 3072) uint8 and ``b'labels'``); the binary version
    is preferred when both are there.  Both give identical arrays.

    ``root`` is a batches folder or its parent.  If None, searches
    ``$LOWBIT_DATA/cifar10`` and ``~/.cache/lowbit/cifar10`` (each also with
    the two subfolders).  Python batches are read by an unpickler that
    rebuilds only dicts, lists, bytes, str, ints and numeric numpy arrays: a
    file naming any other global (a function it would call) raises
    ValueError instead of running it.  Truncated or foreign files, wrong
    shapes and labels outside 0..9 raise ValueError naming the file.
    Returned arrays are cached and read-only.
    """
    if root is not None:
        bases = [Path(os.fspath(root)).expanduser()]
    else:
        bases = _default_dirs("cifar10")
    looked = []
    for base in bases:
        files = _find_cifar(base, looked)
        if files is not None:
            return _load_cifar_cached(tuple(str(p.resolve()) for p in files), _stamp(files))
    env_note = "" if root is not None or os.environ.get("LOWBIT_DATA") else (
        "\n  ($LOWBIT_DATA/cifar10 skipped: LOWBIT_DATA is not set)"
    )
    raise FileNotFoundError(
        "CIFAR-10 not found. Looked for " + ", ".join(_CIFAR_BIN_FILES)
        + " (binary version) or " + ", ".join(_CIFAR_FILES) + " (python version) in:\n"
        + "\n".join(looked) + env_note + "\n"
        "To get the data: download "
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (or "
        "cifar-10-python.tar.gz) and extract it into "
        f"{_cache_dir('cifar10')} (or $LOWBIT_DATA/cifar10 and set "
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


#: Dataset names accepted by :func:`load` (and the command line).
NAMES = ("fashion_mnist", "mnist", "cifar10", "digits")


def load(name: str, root=None):
    """The loader named ``name`` (one of :data:`NAMES`); ``root`` as for that loader
    (``digits`` takes none)."""
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r} (expected one of {', '.join(NAMES)})")
    return digits() if name == "digits" else globals()[name](root)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def _pixels(x, what):
    """Images as float32: real dtypes only (TypeError), finite values only (ValueError)."""
    x = as_float32(x, what)
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: expected finite pixel values, found NaN, inf or values beyond float32")
    return x


def pad_to(x, size: int) -> np.ndarray:
    """Zero-pad the last two axes (H, W) centrally to ``size x size``.

    E.g. (N, 1, 28, 28) -> (N, 1, 32, 32) with 2 pixels each side.  If the
    padding is odd, the extra row/column goes at the bottom/right.  Returns
    a new C-contiguous float32 array.
    """
    x = _pixels(x, "pad_to")
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
    x = _pixels(x, "to_rgb")
    if x.ndim < 3 or x.shape[-3] not in (1, 3):
        raise ValueError(f"to_rgb expects (..., 1, H, W) input, got shape {x.shape}")
    reps = (1,) * (x.ndim - 3) + (3 // x.shape[-3], 1, 1)
    return np.ascontiguousarray(np.tile(x, reps))


def select_classes(x, y, classes):
    """The samples whose label is in ``classes``, in their original order, relabelled
    0, 1, ... in the order ``classes`` lists them: e.g. a two-class task such as
    ``select_classes(x, y, (0, 6))`` (Fashion-MNIST T-shirt/top -> 0, shirt -> 1).
    Returns new arrays (x float32 as given, y int64)."""
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"select_classes: expected x with one sample per label, got x {x.shape} and y {y.shape}")
    classes = [int(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"select_classes: expected at least two distinct classes, got {classes}")
    missing = [c for c in classes if not np.any(y == c)]
    if missing:
        raise ValueError(f"select_classes: no samples of class {missing}")
    new = np.full(int(max(y.max(), max(classes))) + 1, -1, dtype=np.int64)
    new[classes] = np.arange(len(classes))
    keep = new[y] >= 0
    return np.ascontiguousarray(x[keep]), new[y[keep]]


def clear_cache() -> None:
    """Drop all dataset arrays kept in memory."""
    _load_idx_cached.cache_clear()
    _load_cifar_cached.cache_clear()
    _load_digits_cached.cache_clear()
