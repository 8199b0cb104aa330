#!/usr/bin/env bash
# The C++ package as an inference engine consumes it: build and `cmake --install` longattn, then configure, build and
# run tests/cpp_package (find_package(longattn) -> longattn::longattn_core) against the install:
#   1. a CPU-only install (the default options, CUDA emulator included), the consumer configured with the CUDA
#      toolkit hidden from find_package (it must not need one);
#   2. a CUDA install (when nvcc is present), whose consumer links the static CUDA runtime.
# Without a GPU, the consumer also checks that a CUDA request is refused as unsupported, with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
WORK=${WORK:-build/cpp-package}
rm -rf "$WORK"
no_gpu=1
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then no_gpu=0; fi

check() {  # $1: name, $2: extra cmake options for longattn, $3: extra options for the consumer
  local name=$1 lib_opts=$2 consumer_opts=$3
  echo "-- $name: build and install longattn"
  # shellcheck disable=SC2086
  cmake -S . -B "$WORK/$name/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGATTN_BUILD_TESTS=OFF \
    -DCMAKE_INSTALL_PREFIX="$PWD/$WORK/$name/prefix" $lib_opts >/dev/null
  cmake --build "$WORK/$name/build" -j "$JOBS" >/dev/null
  cmake --install "$WORK/$name/build" >/dev/null
  echo "-- $name: consumer project against the install"
  # shellcheck disable=SC2086
  cmake -S tests/cpp_package -B "$WORK/$name/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PWD/$WORK/$name/prefix" $consumer_opts >/dev/null
  cmake --build "$WORK/$name/consumer" >/dev/null
  LONGATTN_CONSUMER_NO_GPU=$no_gpu "$WORK/$name/consumer/consumer"
}

check cpu-only "-DLONGATTN_CUDA=OFF" "-Wno-unused-cli -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON"
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  check cuda "-DLONGATTN_CUDA=ON -DLONGATTN_CUDA_EMULATOR=OFF" ""
else
  echo "-- cuda: skipped (no nvcc on this machine)"
fi
echo "C++ package: ok"
