#!/usr/bin/env bash
# Packs a CUDA build's executables (stripped), the shared libraries a bare GPU machine lacks,
# and the golden files into gpu-carry/ (git-ignored), for the device tool to carry:
#   run: tar xJf gpu-carry/bin.tar.xz -C /tmp && scripts/device_suite.sh /tmp/bin $OUT $PWD/gpu-carry/golden
# Usage: scripts/stage_device_binaries.sh [BUILD_DIR (default build/cuda)]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/cuda}
rm -rf gpu-carry && mkdir -p gpu-carry/bin/lib
cp "$build"/unit_tests/dilated_* "$build"/examples/dilated_check "$build"/examples/dilated_demo \
   "$build"/examples/dilated_transformer_block \
   "$build"/perf_tests/dilated_bench_* gpu-carry/bin/
[ -x "$build"/tools/dilated-attention ] && cp "$build"/tools/dilated-attention gpu-carry/bin/
cp scripts/sweep.sh gpu-carry/
strip gpu-carry/bin/dilated*
cp /usr/lib/x86_64-linux-gnu/libbenchmark.so.1debian gpu-carry/bin/lib/
# With Kokkos Kernels the programs that multiply on the host link OpenBLAS (and its Fortran
# runtime), which a bare GPU machine may lack: carry the files they resolve to here (cp -L: the
# library behind Debian's alternatives link).
ldd gpu-carry/bin/dilated* 2>/dev/null |
  awk '$1 ~ /^lib(openblas|gfortran|quadmath)\.so/ && $3 ~ /^\// { print $3 }' | sort -u |
  while read -r lib; do cp -L "$lib" gpu-carry/bin/lib/; done
tar cJf gpu-carry/bin.tar.xz -C gpu-carry bin && rm -rf gpu-carry/bin
cp -r ../shared/golden gpu-carry/golden
du -sh gpu-carry
