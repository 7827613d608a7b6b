"""Loading the C++ engine and the two shared libraries it needs.

``_core`` needs ``libdnnl.so.3`` (oneDNN 3.2, GNU-OpenMP build, from the PyPI package
``onednn-cpu-gomp``, installed into ``<prefix>/lib``) and ``libgomp.so.1`` (GCC's
OpenMP runtime). The extension's rpath finds oneDNN in the usual layouts (venv,
``--user``, system site-packages, conda-like prefixes). When the loader still misses a
library, we load it by path with RTLD_GLOBAL and import again: the dynamic loader then
satisfies the soname from the copy already in the process, so there is still one oneDNN
and one OpenMP runtime. Candidates for oneDNN: the file the installed wheel recorded,
then ``lib/`` under sys.prefix, the user base and the base interpreter's prefix. For
OpenMP: the system's, else the copy shipped in ``lowbit/_libs``.
"""
import importlib
import os
import site
import sys

# soname -> (what it is, how to provide it)
NEEDS = {
    "libdnnl.so.3": ("oneDNN 3.2, GNU OpenMP build",
                     f"{sys.executable} -m pip install onednn-cpu-gomp==2023.2.0  (PyPI package onednn-cpu-gomp)"),
    "libgomp.so.1": ("GCC's OpenMP runtime",
                     "apt-get install libgomp1, or reinstall lowbit: its wheel ships lowbit/_libs/libgomp.so.1"),
}


def _recorded(dist, name):
    """Where the installed distribution put `name`, from its RECORD (None if absent)."""
    import importlib.metadata as md

    try:
        files = md.distribution(dist).files or []
    except md.PackageNotFoundError:
        return None
    for f in files:
        if f.name == name:
            return str(f.locate())
    return None


def candidates(soname):
    """Paths worth trying for a library the extension's rpath did not reach."""
    if soname == "libgomp.so.1":
        return [soname, os.path.join(os.path.dirname(__file__), "_libs", soname)]
    paths = [_recorded("onednn-cpu-gomp", soname)]
    prefixes = [sys.prefix, site.getuserbase(), sys.base_prefix, sys.exec_prefix]
    paths += [os.path.join(p, "lib", soname) for p in prefixes if p]
    return [p for p in dict.fromkeys(paths) if p]


def missing_library(err):
    """The soname an ImportError of the extension complains about, if it is ours."""
    msg = str(err)
    return next((s for s in NEEDS if s in msg), None)


def explain(soname, tried, err):
    what, fix = NEEDS[soname]
    return (f"lowbit: the engine needs {soname} ({what}) and the dynamic loader cannot find it.\n"
            f"  Fix: {fix}\n"
            f"  Looked for it at: {', '.join(tried)}\n"
            f"  Loader said: {err}")


def preload(soname):
    """Load the first loadable candidate with RTLD_GLOBAL: (True, paths, None) or (False, paths, last error)."""
    import ctypes

    tried, last = [], None
    for path in candidates(soname):
        tried.append(path)
        if os.sep in path and not os.path.exists(path):
            continue
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return True, tried, None
        except OSError as e:
            last = e
    return False, tried, last


def load_core(package="lowbit"):
    """Import ``<package>._core``. If the loader misses libdnnl.so.3 or libgomp.so.1, make
    both resident from the candidates (OpenMP first: oneDNN needs it) and import again;
    a library found nowhere gives an ImportError naming it and the package providing it."""
    name = package + "._core"
    try:
        return importlib.import_module(name)
    except ImportError as err:
        if missing_library(err) is None:
            raise
        first = err
    for soname in ("libgomp.so.1", "libdnnl.so.3"):
        ok, tried, last = preload(soname)
        if not ok:
            raise ImportError(explain(soname, tried, last or first)) from first
    return importlib.import_module(name)
