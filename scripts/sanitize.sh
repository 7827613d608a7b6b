#!/usr/bin/env bash
# Build lowbit with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# LOWBIT_SANITIZE=ON) into its own venv, .venv-asan, and run the fuzz suite under it.
#   bash scripts/sanitize.sh                                # short run (CI length)
#   LOWBIT_FUZZ_EXAMPLES=2000 bash scripts/sanitize.sh      # the longer, random run
#   bash scripts/sanitize.sh tests/test_model.py            # other test files instead
# Python itself is not instrumented, so libasan is preloaded; leak detection is off
# (the interpreter keeps memory at exit), any ASan or UBSan report aborts the run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-asan
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q numpy tqdm pytest hypothesis
echo "== building lowbit with LOWBIT_SANITIZE=ON (build/asan)"
"$VENV/bin/python" -m pip install -q . --config-settings=cmake.define.LOWBIT_SANITIZE=ON \
  --config-settings=build-dir=build/asan
LIBASAN="$(${CXX:-c++} -print-file-name=libasan.so)"
[ -f "$LIBASAN" ] || { echo "libasan.so not found (install the compiler's libasan)" >&2; exit 2; }
# libstdc++ preloaded too: ASan finds the real __cxa_throw only in libraries present at start
LIBSTDCXX="$(${CXX:-c++} -print-file-name=libstdc++.so)"
# ASan reserves any size without the kernel's overcommit check, so cap single allocations
# (beyond the cap: null -> std::bad_alloc -> MemoryError, a documented outcome)
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=4096:halt_on_error=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export PYTHONMALLOC=malloc  # Python's objects on ASan's heap too
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
[ $# -gt 0 ] || set -- tests/test_fuzz.py
cd tests
LD_PRELOAD="$LIBASAN:$LIBSTDCXX" "../$VENV/bin/python" -m pytest -q -p no:cacheprovider -s "${@/#tests\//}"
