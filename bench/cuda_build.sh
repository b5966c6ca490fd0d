#!/usr/bin/env bash
# Builds dreamgym's CUDA binaries (`--features cuda`) on a machine WITHOUT a CUDA toolkit or a
# GPU, for a GPU machine that has no Rust toolchain. The CUDA 13.0 compiler, headers and
# libraries come from NVIDIA's PyPI wheels. Linking uses a stub libcuda.so, made here from
# the driver symbols cudarc declares; at run time the GPU machine's real driver is loaded.
#
#     bench/cuda_build.sh [compute capability, default 90 (H100/H200)]
#
# Output: target-cuda/release/{dreamgym, examples/dt_speed, examples/bench_train} (or under
# $CARGO_TARGET_DIR). On the GPU machine:
#     export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64
#     CARGO_TARGET_DIR=... python3 bench/dt_speed.py large 50 cuda
# About 12 minutes cold on 2 cores; the wheels take about 1 GB unpacked.
set -euo pipefail
cd "$(dirname "$0")/.."
cap="${1:-90}"
cuda="${DREAMGYM_CUDA_WHEELS:-/var/tmp/cuda13}"
root="$cuda/root/nvidia/cu13"
if [ ! -x "$root/bin/nvcc" ]; then
  mkdir -p "$cuda/whl" "$cuda/root"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$cuda/whl" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cublas==13.0.*" \
    "nvidia-curand" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*"
  for w in "$cuda"/whl/*.whl; do unzip -q -o "$w" -d "$cuda/root"; done
  rm -rf "$cuda/whl"
fi
# Unversioned names for the linker.
(cd "$root/lib" && for f in libcublas libcublasLt libcudart libnvrtc; do ln -sf "$f.so.13" "$f.so"; done \
  && ln -sf libcurand.so.10 libcurand.so)
# The driver API is linked, not loaded: a stub with every symbol cudarc declares.
cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2> /dev/null | head -1)"
if [ -z "$cudarc" ]; then
  cargo fetch -q
  cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | head -1)"
fi
mkdir -p "$root/lib/stubs"
grep -oE "fn cu[A-Za-z0-9_]+\(" "$cudarc/src/driver/sys/mod.rs" | sort -u \
  | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/void \1(void){}/' > "$root/lib/stubs/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/cuda_stub.c"
export CUDA_HOME="$root" CUDA_COMPUTE_CAP="$cap" PATH="$root/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}"
cargo build --release --features cuda --bin dreamgym --example dt_speed
cargo build --release -p dreamgym-world-model --features cuda --example bench_train
echo "built in $CARGO_TARGET_DIR/release (CUDA 13.0, sm_$cap)"
