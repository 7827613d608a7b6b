#!/usr/bin/env bash
# One entry point that does all set-up on a fresh Debian machine, then runs a job:
#   bash run.sh main    # set up, then a short S0 study: LeNet and the pure CNN at fp32 / fp16 / fixed8
#                       # on Fashion-MNIST, same seed and data; prints the results table
#   bash run.sh test    # set up, then run the whole test suite
#   bash run.sh wheel   # set up, then install the built wheel into a fresh venv on a
#                       # simulated bare machine and train there (.ci/wheel_check.sh)
# Set-up is idempotent: apt packages for what PyPI cannot give (the data, a C++
# compiler), a venv in .venv, the wheel built by `pip wheel .` (oneDNN 3.2 and Eigen come
# from PyPI as build requirements) and installed with its [test,plot] extras.
set -euo pipefail
cd "$(dirname "$0")"
job="${1:-main}"; shift || true

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
APT_PKGS="dataset-fashion-mnist g++ python3-venv"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "== apt-get install$missing"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing >/dev/null
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

# The wheel, rebuilt when a source is newer than it.
whl="$(ls build/wheelhouse/lowbit-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$whl" ] || [ -n "$(find cpp python cmake CMakeLists.txt pyproject.toml README.md -newer "$whl" -print -quit)" ]; then
  echo "== pip wheel . (C++ build, a few minutes)"
  rm -rf build/wheelhouse
  .venv/bin/python -m pip wheel -q --no-deps -w build/wheelhouse .
  whl="$(ls build/wheelhouse/lowbit-*.whl)"
fi
echo "== pip install $(basename "$whl")[test,plot]"
.venv/bin/python -m pip install -q "$whl[test,plot]"
# same version number, new build: replace the installed one
sum="$(sha256sum "$whl" | cut -d' ' -f1)"
if [ "$(cat .venv/.lowbit-wheel 2>/dev/null)" != "$sum" ]; then
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "$whl"
  echo "$sum" > .venv/.lowbit-wheel
fi
# PyTorch is the independent reference in the tests and the peer in benchmarks; the CPU
# build 2.13.0 installs from the machine's local wheel store. Optional: tests skip without it.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0 \
  || echo "(torch not installed: torch comparisons will be skipped)"
# ONNX Runtime (with onnx for export and quantize_static): a peer in benchmarks/bench_models.py.
.venv/bin/python -c "import onnxruntime, onnx" 2>/dev/null || .venv/bin/python -m pip install -q onnxruntime onnx \
  || echo "(onnxruntime not installed: its benchmark rows will be skipped)"

case "$job" in
  main) exec .venv/bin/lowbit compare --models lenet,pure_cnn --precisions fp32,fp16,fixed8 \
          --dataset fashion_mnist --epochs 2 --limit 8000 --test-limit 5000 --batch-size 128 \
          --plot results/main/curves.png --bars results/main/bars.png "$@" ;;
  test) cd tests && exec ../.venv/bin/python -m pytest -q -p no:cacheprovider "$@" ;;
  wheel) exec bash .ci/wheel_check.sh "$whl" ;;
  *) echo "usage: bash run.sh [main|test|wheel] [extra args]" >&2; exit 2 ;;
esac
