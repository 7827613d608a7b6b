"""Files written by lowbit (``model.save``, ``model.save_weights``) and how they are read.

File format, version 1
----------------------
A ZIP archive (members stored, not compressed) holding

* ``lowbit.json`` - a UTF-8 JSON header::

      {"format": "lowbit-model", "lowbit-weights" or "lowbit-packed", "version": 1,
       "lowbit_version": "0.1.0",
       "arrays": {"w0000": [[32, 1, 5, 5], "<f4"], ...},   # every array member
       ...}                                                 # model files: see below

* one ``<name>.npy`` member per array, in NumPy's ``.npy`` format (numeric dtypes only).

Packed inference files (``"lowbit-packed"``, ``model.export_packed``) store weights as
codes of their number format: ``lowbit.packed`` describes their arrays and header.

Array names: ``w0000``... the weights in ``get_weights()`` order (float32); ``step``
the training step (uint64); quantizer state ``qmsb_<layer>_<role>`` (calibrated MSB of a
precision format), ``qs_<node>_<k>`` (tracked MSB, stochastic-rounding counter),
``qh_<node>_<k>`` (hysteresis signs, int8), ``qr_<node>_<k>`` (running max |x|),
``qrr_<node>_<k>`` (running (min, max) of an asymmetric Int; (1, -1) unset); model
files add ``opt_<param>_<slot>``, the optimizer's slots (SGD momentum; Adam m, v;
Adadelta a, d; RMSprop a; Bop m) per trainable parameter.

A model file's header adds ``"model"`` (class, name, seed, input shape and the layers
with their constructor arguments; for a functional model also each layer's inputs),
``"compile"`` (optimizer, loss, metrics, precision - again as constructor arguments, or
null) and ``"training"`` (epochs done, step, optimizer steps, loss scaler, the seed of
the last fit, calibrated). Objects appear as ``{"__object__": "formats.Fixed",
"kwargs": {...}}`` (their constructor's arguments; tuples as ``{"__tuple__": [...]}``)
and may only name lowbit's layers, formats, constraints, optimizers, schedules and
precisions: reading a file builds those from plain data and never runs code from it
(no pickle; ``.npy`` members are read with object arrays refused).

Readers check, before the model is changed: that the file is a ZIP archive with a
``lowbit.json`` header of a known format and version, that the members are exactly the
arrays listed, each ``.npy`` header against the listing and the model's shapes, and the
members' checksums. Any problem raises ValueError naming the file and what is wrong; a
missing file raises FileNotFoundError. Weights files of lowbit before version 1 (a
plain ``.npz`` of ``w0000``... arrays) are still read.

Writers are atomic: a temporary file in the target folder, flushed to disk, renamed
over the target.
"""
from __future__ import annotations

import functools
import inspect
import io
import json
import math
import os
import re
import zipfile

import numpy as np

from ._atomic import atomic_write

__all__ = ["VERSION", "Recorded", "Reader", "write", "encode", "decode", "kwargs_of"]

VERSION = 1
HEADER = "lowbit.json"
FORMATS = ("lowbit-model", "lowbit-weights")  # what load_weights reads
KNOWN = FORMATS + ("lowbit-packed",)  # lowbit-packed: model.export_packed (lowbit.packed)
_MAX_HEADER = 64 << 20
_LEGACY = re.compile(r"(w\d{4}|step|qmsb_\d+_[a-z_]+|q[shr]_\d+_\d+)\.npy")


class Recorded:
    """Remembers the arguments of the constructor call that made the object (the
    outermost one), which is how ``model.save`` stores layers, formats and optimizers.
    Constructors of subclasses report a number too large to convert (Python's
    OverflowError from ``int(inf)``, ``float(10**400)``) as ValueError, like every
    other bad argument."""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj._init_args = (args, kwargs)
        return obj

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked(self, *args, **kw):
            try:
                init(self, *args, **kw)
            except OverflowError as e:
                raise ValueError(f"{cls.__name__}: argument out of range ({e})") from None
        cls.__init__ = checked


# ----------------------------------------------------------------------- JSON values
def _classes():
    """The classes a file may name: lowbit's own, by '<module>.<class>'."""
    from . import constraints, formats, layers, optimizers, precision
    bases = (layers.Layer, formats.Format, constraints.WeightClip, optimizers.Optimizer, optimizers.Schedule,
             precision.Precision)
    out = {}
    for mod in (layers, formats, constraints, optimizers, precision):
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and issubclass(obj, bases) and obj.__module__ == mod.__name__:
                out[f"{mod.__name__.rsplit('.', 1)[1]}.{obj.__name__}"] = obj
    return out


def encode(v, what):
    """A JSON value for ``v``: plain data, tuples, dicts and lowbit objects."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(v, tuple):
        return {"__tuple__": [encode(e, what) for e in v]}
    if isinstance(v, list):
        return [encode(e, what) for e in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: encode(e, what) for k, e in v.items()}}
    key = f"{type(v).__module__.rsplit('.', 1)[-1]}.{type(v).__name__}"
    if hasattr(v, "_init_args") and _classes().get(key) is type(v):
        return {"__object__": key, "kwargs": {k: encode(a, what) for k, a in kwargs_of(v).items()}}
    raise TypeError(f"{what}: cannot store {v!r} ({type(v).__name__}) in a lowbit file: only numbers, strings, "
                    "lists, tuples, dicts and lowbit's own layers, formats, constraints, optimizers and precisions")


def kwargs_of(obj):
    """The recorded constructor arguments of ``obj``, all by keyword."""
    args, kwargs = obj._init_args
    sig = inspect.signature(type(obj).__init__)
    out = {}
    for i, (k, v) in enumerate(sig.bind(None, *args, **kwargs).arguments.items()):
        kind = sig.parameters[k].kind
        if i == 0:  # self
            continue
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(v)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if v:
                raise TypeError(f"cannot store {type(obj).__name__}: called with extra positional arguments")
        else:
            out[k] = v
    return out


def decode(v, classes=None):
    """Inverse of :func:`encode`; raises ValueError on anything it did not write."""
    classes = _classes() if classes is None else classes
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [decode(e, classes) for e in v]
    if not isinstance(v, dict) or len(v) not in (1, 2):
        raise ValueError(f"unexpected value {v!r:.80}")
    if set(v) == {"__tuple__"} and isinstance(v["__tuple__"], list):
        return tuple(decode(e, classes) for e in v["__tuple__"])
    if set(v) == {"__float__"} and v["__float__"] in ("inf", "-inf", "nan"):
        return float(v["__float__"])
    if set(v) == {"__dict__"} and isinstance(v["__dict__"], dict):
        return {k: decode(e, classes) for k, e in v["__dict__"].items()}
    if set(v) == {"__object__", "kwargs"} and isinstance(v["kwargs"], dict):
        cls = classes.get(v["__object__"]) if isinstance(v["__object__"], str) else None
        if cls is None:
            raise ValueError(f"unknown class {v['__object__']!r:.80} (a file may only name lowbit's layers, formats, "
                             "constraints, optimizers and precisions)")
        kwargs = {k: decode(a, classes) for k, a in v["kwargs"].items()}
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{v['__object__']}: {e}") from None
    raise ValueError(f"unexpected value {v!r:.80}")


# ----------------------------------------------------------------------- reading
class Reader:
    """A lowbit file opened for checked reading (the whole file is read into memory)."""

    def __init__(self, path, what, expect=FORMATS):
        self.path, self.what = os.fspath(path), what
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{what}: no file {self.path}")
        if os.path.isdir(self.path):
            raise ValueError(f"{what}: {self.path} is a folder, not a lowbit file")
        with open(self.path, "rb") as f:
            data = f.read()
        if not data:
            self.fail("the file is empty")
        if not data.startswith(b"PK\x03\x04"):
            kind = ("a single .npy array" if data.startswith(b"\x93NUMPY") else
                    "a pickle (lowbit never loads pickles)" if data[:1] == b"\x80" else
                    f"it starts with {data[:8]!r}")
            self.fail(f"not a lowbit file: expected a ZIP archive, but {kind}")
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            self.members = {i.filename: i for i in self.zip.infolist()}
        except Exception as e:  # zipfile's parser raises many kinds on damaged input
            self.fail(f"truncated or corrupted ZIP archive ({type(e).__name__}: {e})")
        self.size = len(data)
        if HEADER in self.members:
            self.header = self._json()
            fmt, version = self.header.get("format"), self.header.get("version")
            if fmt not in KNOWN:
                self.fail(f"not a lowbit file: header format {fmt!r:.60} (expected one of {', '.join(KNOWN)})")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                self.fail(f"corrupted header: format version {version!r:.40}")
            if version > VERSION:
                self.fail(f"format version {version} was written by a newer lowbit "
                          f"({self.header.get('lowbit_version', '?')!s:.20}); this one reads up to version {VERSION}")
            self.arrays = self._listing()
        else:
            names = sorted(self.members)
            if not names or not all(_LEGACY.fullmatch(n) for n in names) or "w0000.npy" not in self.members:
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                self.fail(f"not a lowbit file: no {HEADER} header (members: {shown or 'none'})")
            self.header = {"format": "lowbit-weights", "version": 0}
            self.arrays = {n[:-4]: None for n in names}  # shapes come from the .npy headers
        if self.header["format"] not in expect:
            self.fail(f"this is a {self.header['format']} file; {what} reads {' or '.join(expect)} files"
                      + (" (written by model.save_weights; use model.load_weights)" if
                         self.header["format"] == "lowbit-weights" else
                         " (an inference file written by model.export_packed; use lb.load_packed)" if
                         self.header["format"] == "lowbit-packed" else ""))

    def fail(self, msg):
        raise ValueError(f"{self.what}: {self.path}: {msg}")

    def _read(self, name, limit):
        info = self.members[name]
        if info.file_size > limit:
            self.fail(f"member {name} declares {info.file_size} bytes, expected at most {limit}")
        try:
            with self.zip.open(info) as f:  # checks the CRC-32 at the end
                data = f.read(limit + 1)
        except Exception as e:  # bad CRC, compression method, encryption, truncation
            self.fail(f"member {name} is corrupted ({type(e).__name__}: {e})")
        if len(data) != info.file_size:
            self.fail(f"member {name} is truncated")
        return data

    def _json(self):
        raw = self._read(HEADER, _MAX_HEADER)
        try:
            h = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            self.fail(f"corrupted header {HEADER} ({type(e).__name__}: {e})")
        if not isinstance(h, dict):
            self.fail(f"corrupted header {HEADER}: expected a JSON object, got {type(h).__name__}")
        return h

    def _listing(self):
        listed = self.header.get("arrays")
        if not isinstance(listed, dict):
            self.fail("corrupted header: no array listing")
        out = {}
        for name, spec in listed.items():
            ok = (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], list) and isinstance(spec[1], str)
                  and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 40 for d in spec[0]))
            if not ok or not re.fullmatch(r"[A-Za-z0-9_]+", name):
                self.fail(f"corrupted header: bad listing of array {name!r:.40}")
            try:
                dtype = np.dtype(spec[1])
            except TypeError:
                dtype = None
            if dtype is None or dtype.kind not in "biuf" or dtype.str != spec[1]:
                self.fail(f"corrupted header: array {name} has dtype {spec[1]!r:.20}")
            out[name] = (tuple(spec[0]), dtype)
        members = {n for n in self.members if n != HEADER}
        want = {n + ".npy" for n in out}
        if members != want:
            extra, missing = sorted(members - want), sorted(want - members)
            self.fail("members do not match the header's listing"
                      + (f"; missing: {', '.join(missing[:5])}" if missing else "")
                      + (f"; not listed: {', '.join(extra[:5])}" if extra else ""))
        return out

    def names(self):
        return sorted(self.arrays)

    def array(self, name, shape=None, dtype=None, what=None):
        """The array ``name``, checked against the listing and against ``shape`` and
        ``dtype`` when given (``what`` describes it in messages)."""
        label = f"{name} ({what})" if what else name
        if name not in self.arrays:
            self.fail(f"missing array {label}")
        listed = self.arrays[name]
        if listed is not None:
            if shape is not None and listed[0] != tuple(shape):
                self.fail(f"array {label} has shape {listed[0]}, the model expects {tuple(shape)}")
            if dtype is not None and listed[1] != np.dtype(dtype):
                self.fail(f"array {label} has dtype {listed[1]}, expected {np.dtype(dtype)}")
            limit = int(np.prod(listed[0], dtype=np.float64) * listed[1].itemsize) + 65536 * 16
        elif shape is not None:
            limit = int(np.prod(shape, dtype=np.float64)) * 8 + 65536 * 16
        else:
            limit = self.size
        data = self._read(name + ".npy", min(limit, self.size))
        f = io.BytesIO(data)
        try:
            major, _ = np.lib.format.read_magic(f)
            if major not in (1, 2, 3):
                raise ValueError(f".npy version {major}")
            hdr = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            got_shape, fortran, got_dtype = hdr(f)
        except (ValueError, SyntaxError, TypeError, EOFError, RecursionError, MemoryError, UnicodeDecodeError) as e:
            self.fail(f"array {label}: corrupted .npy header ({type(e).__name__}: {e})")
        if got_dtype.kind not in "biuf" or got_dtype.hasobject or got_dtype.fields:
            self.fail(f"array {label}: unsupported dtype {got_dtype} (lowbit files hold numbers only)")
        if listed is not None and (tuple(got_shape) != listed[0] or got_dtype != listed[1]):
            self.fail(f"array {label}: its .npy header ({got_shape}, {got_dtype}) disagrees with the listing "
                      f"({listed[0]}, {listed[1]})")
        if shape is not None and tuple(got_shape) != tuple(shape):
            self.fail(f"array {label} has shape {tuple(got_shape)}, the model expects {tuple(shape)}")
        if dtype is not None and got_dtype != np.dtype(dtype):
            self.fail(f"array {label} has dtype {got_dtype}, expected {np.dtype(dtype)}")
        count = int(np.prod(got_shape, dtype=np.int64))
        if len(data) - f.tell() != count * got_dtype.itemsize:
            self.fail(f"array {label}: expected {count * got_dtype.itemsize} bytes of data for shape "
                      f"{tuple(got_shape)}, found {len(data) - f.tell()} (truncated or corrupted)")
        a = np.frombuffer(data, got_dtype, count, f.tell()).reshape(got_shape, order="F" if fortran else "C")
        return np.array(a, order="C")  # a writable copy, 0-d stays 0-d


# ----------------------------------------------------------------------- writing
def write(path, fmt, header, arrays, what):
    """Write a lowbit file atomically: ``header`` (a dict, JSON-ready) plus ``arrays``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what}: folder {folder} does not exist")
    arrays = {k: np.asarray(v, order="C") for k, v in arrays.items()}  # keeps 0-d arrays 0-d
    for k, v in arrays.items():
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{what}: array {k} has dtype {v.dtype}; lowbit files hold numbers only")
    from . import __version__
    head = {"format": fmt, "version": VERSION, "lowbit_version": __version__,
            "arrays": {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()}}
    head.update(header)
    text = json.dumps(head, indent=1, allow_nan=False)
    def fill(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr(HEADER, text)
            for k, v in arrays.items():
                with z.open(k + ".npy", "w", force_zip64=v.nbytes > 2 ** 31) as m:
                    np.lib.format.write_array(m, v, allow_pickle=False)

    atomic_write(path, fill)
