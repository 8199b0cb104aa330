#!/usr/bin/env bash
# Every test of longattn, from a fresh clone on a fresh Debian machine:
#   1. installs what is missing (GoogleTest from Debian, torch 2.13 CPU, the build/test tools and, as test-only
#      oracles, Hugging Face transformers and the CuTe headers of nvidia-cutlass from PyPI),
#   2. builds the C++ core and its GoogleTest suite, runs it through ctest, then again under ASan + UBSan,
#   3. checks the C++ package: cmake --install, then a consumer project (CPU-only and CUDA installs),
#   4. builds the release artifacts (sdist, wheel repaired to manylinux), installs the wheel into a fresh virtual
#      environment and runs the smoke tests and `python -m longattn` there (scripts/check_wheel.sh),
#   5. installs that same wheel here and runs the pytest suite.
# The CUDA kernels are tested in both: on a GPU when there is one, else on the CUDA emulator (docs/cuda_emulator.md).
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== dependencies"
if [ ! -f /usr/include/gtest/gtest.h ] || ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq libgtest-dev g++ >/dev/null
fi
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q "cmake>=3.24" ninja "scikit-build-core>=0.10" "pybind11>=3" pytest numpy \
  "transformers==5.24.0" "nvidia-cutlass==4.2.0"  # test-only: Hugging Face modules and CuTe's layouts are oracles

echo "== C++ tests (GoogleTest via ctest)"
cmake -S . -B build/cpp-tests -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGATTN_BUILD_TESTS=ON -DLONGATTN_CUDA=OFF >/dev/null
cmake --build build/cpp-tests -j "$JOBS"
ctest --test-dir build/cpp-tests --output-on-failure -j "$JOBS"

echo "== C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build/cpp-tests-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLONGATTN_BUILD_TESTS=ON \
  -DLONGATTN_SANITIZE=ON -DLONGATTN_CUDA=OFF >/dev/null
cmake --build build/cpp-tests-asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/cpp-tests-asan --output-on-failure -j "$JOBS"

echo "== C++ package: install + find_package consumer"
bash scripts/check_cpp_package.sh

echo "== Wheel: build, manylinux repair, fresh-venv smoke test"
PYTHON="$PY" bash scripts/check_wheel.sh

echo "== Python tests, on the wheel just built"
"$PY" -m pip install -q --force-reinstall --no-deps dist/longattn-*manylinux*.whl
"$PY" -m pytest tests/python -q -p no:cacheprovider
