"""Print the absolute path of a file installed by a Python distribution.

    python wheel_file.py onednn-devel-cpu-gomp dnnl/dnnl-config.cmake

CMake uses it to find the CMake package configs that PyPI wheels put outside
site-packages (the wheel's .data/data/ tree lands in the environment's prefix, which is
pip's temporary overlay in an isolated build): the distribution's RECORD says where.
"""
import importlib.metadata as md
import sys

dist, suffix = sys.argv[1], sys.argv[2]
try:
    files = md.distribution(dist).files or []
except md.PackageNotFoundError:
    sys.exit(f"{dist} is not installed in {sys.prefix}: pip install {dist}")
for f in files:
    if str(f).replace("\\", "/").endswith(suffix):
        print(f.locate().resolve().as_posix())
        break
else:
    sys.exit(f"{dist}: no installed file ends with {suffix}")
