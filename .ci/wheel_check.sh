#!/usr/bin/env bash
# The built wheel on a bare machine: a new venv with only PyPI packages (binary wheels
# only, so nothing is compiled), `import lowbit` and a few training batches, with the
# compiler, Debian's oneDNN/Eigen packages and the system's GNU OpenMP hidden in a
# private mount namespace (root only; elsewhere the check runs on the machine as it is).
#   bash .ci/wheel_check.sh [path/to/lowbit-*.whl]     (default: build/wheelhouse/lowbit-*.whl)
set -euo pipefail
cd "$(dirname "$0")/.."
whl="$(realpath "${1:-$(ls build/wheelhouse/lowbit-*.whl 2>/dev/null | head -1)}")"
[ -f "$whl" ] || { echo "wheel_check: no wheel (run: python -m pip wheel --no-deps -w build/wheelhouse .)" >&2; exit 2; }
PY="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== wheel: $(basename "$whl"), $(du -k "$whl" | cut -f1) KiB"

# What a bare machine lacks. Files are covered by /dev/null, folders by an empty tmpfs.
HIDE_FILES="$(ls /usr/bin/{gcc,g++,cc,c++,cpp,x86_64-linux-gnu-gcc*,x86_64-linux-gnu-g++*} \
  /usr/lib/x86_64-linux-gnu/{libdnnl.so*,libgomp.so*} /usr/include/dnnl*.h* 2>/dev/null | sort -u || true)"
HIDE_DIRS="$(ls -d /usr/include/oneapi /usr/include/eigen3 /usr/lib/x86_64-linux-gnu/cmake/dnnl 2>/dev/null || true)"

cat > "$work/check.sh" <<'EOF'
set -euo pipefail
work="$1"; whl="$2"; PY="$3"; hide="$4"
if [ "$hide" = 1 ]; then
  for f in $HIDE_FILES; do mount --bind /dev/null "$f"; done  # a symlink: its target
  for d in $HIDE_DIRS; do mount -t tmpfs -o ro,size=1k none "$d"; done
  if command -v g++ >/dev/null && g++ --version >/dev/null 2>&1; then echo "g++ still works" >&2; exit 1; fi
  echo "== hidden: compilers, libdnnl/libgomp, oneDNN and Eigen headers ($(echo $HIDE_FILES $HIDE_DIRS | wc -w) paths)"
fi
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --only-binary :all: "$whl"
"$work/venv/bin/python" -c "import lowbit" 2>/dev/null || true  # byte-compile once: time the second import
cd "$work"
"$work/venv/bin/python" - <<'PY'
import os, re, sys, time
t = time.perf_counter()
import lowbit as lb
t_import = time.perf_counter() - t
import numpy as np

info = lb.build_info()
print(f"== import lowbit: {t_import * 1e3:.0f} ms; oneDNN {info['onednn']} on {info['onednn_cpu_isa']}")
print(f"   {info['onednn_library']}\n   {info['openmp_library']}")
assert os.path.realpath(info["onednn_library"]).startswith(os.path.realpath(sys.prefix)), "oneDNN not from the venv"
try:
    (x, y), _ = lb.datasets.fashion_mnist()
    x, y, data = x[:1024], y[:1024], "Fashion-MNIST"
except FileNotFoundError:  # no data package: a learnable synthetic task
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 1024)
    x = (rng.normal(size=(1024, 1, 28, 28)) * 0.3 + y[:, None, None, None] / 10).astype(np.float32)
    data = "synthetic"
m = lb.models.lenet(seed=0)
m.compile(lb.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
before = m.evaluate(x, y)["loss"]
t = time.perf_counter()
m.fit(x, y, batch_size=128, epochs=2, verbose=0)
after = m.evaluate(x, y)["loss"]
print(f"== fit: 16 batches of 128 ({data}) in {time.perf_counter() - t:.2f} s, loss {before:.3f} -> {after:.3f}")
assert after < 0.9 * before, "training did not reduce the loss"
maps = {l.split()[-1] for l in open("/proc/self/maps") if len(l.split()) >= 6}
omp = {os.path.realpath(f) for f in maps if re.search(r"/lib(g|i|i5|)omp[^/]*\.so", f)}
assert len(omp) == 1, f"OpenMP runtimes: {omp}"
assert not any("/usr/lib/x86_64-linux-gnu/libdnnl" in f for f in maps), "Debian's oneDNN was loaded"
print(f"== one OpenMP runtime: {omp.pop()}")
print(m.kernels())
PY
EOF

if [ "$(id -u)" = 0 ] && unshare --mount true 2>/dev/null; then
  HIDE_FILES="$HIDE_FILES" HIDE_DIRS="$HIDE_DIRS" unshare --mount --propagation private \
    bash "$work/check.sh" "$work" "$whl" "$PY" 1
else
  echo "== (not root or no mount namespaces: system packages stay visible)"
  bash "$work/check.sh" "$work" "$whl" "$PY" 0
fi
# The other layouts the rpath serves (on the machine as it is): `pip install --prefix`
# (= /usr/local, conda-like prefixes) and `--user`: the dynamic loader itself must
# resolve libdnnl.so.3 to <prefix>/lib.
for layout in prefix user; do
  base="$work/$layout"
  if [ $layout = prefix ]; then where=(--prefix "$base"); else where=(--user); fi
  PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PYTHONUSERBASE="$base" \
    "$PY" -m pip install -q --ignore-installed --no-deps --no-warn-script-location \
    "${where[@]}" "$whl" onednn-cpu-gomp==2023.2.0
  so="$(ls "$base"/lib/python3*/site-packages/lowbit/_core*.so)"
  got="$(ldd "$so" | awk '$1 == "libdnnl.so.3" {print $3}')"
  [ -n "$got" ] && [ "$(realpath "$got")" = "$(realpath "$base/lib/libdnnl.so.3")" ] \
    || { echo "--$layout: libdnnl.so.3 -> '$got', expected $base/lib" >&2; exit 1; }
  echo "== --$layout install: the rpath finds $(realpath -s "$got")"
done
echo "== wheel check ok"
