#!/usr/bin/env bash
# The README's test command: set up a fresh machine (scripts/setup.sh), configure and build the
# library with its tests (preset "tests"; on a machine with CUDA the "cuda" preset, every backend
# the build has: Serial, OpenMP and CUDA), and run them with ctest; on the host build, then the
# sanitizer build (preset "sanitize") and its ctest, then the fuzz targets (scripts/fuzz.sh,
# preset "fuzz"). `--cpu` first keeps the host build on a CUDA machine. Extra arguments go to
# ctest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ "${1:-}" = --cpu ]; then
  export DILATED_CPU_ONLY=1
  shift
fi
source scripts/preset_build.sh
preset_build test tests
echo "[test] ctest" >&2
if [ "$gpu" = 1 ]; then
  ctest --test-dir "$build_dir" --output-on-failure "$@"
else
  ctest --preset tests "$@"
  # The same tests (OpenMP backend), examples and tool again under AddressSanitizer and
  # UndefinedBehaviorSanitizer (preset "sanitize"): any finding aborts its test and fails the
  # run. DILATED_SKIP_SANITIZE=1 leaves it out.
  if [ "${DILATED_SKIP_SANITIZE:-0}" != 1 ]; then
    echo "[test] sanitizer build (AddressSanitizer + UndefinedBehaviorSanitizer)" >&2
    cmake --preset sanitize >/dev/null
    cmake --build --preset sanitize -j "$jobs"
    echo "[test] ctest under the sanitizers" >&2
    ctest --preset sanitize "$@"
  fi
  # The fuzz targets (fuzz/, preset "fuzz": clang++, libFuzzer, ASan + UBSan), each run for
  # DILATED_FUZZ_SECONDS (45) from its corpus in fuzz/corpus/; a crash fails the run.
  # DILATED_SKIP_FUZZ=1 leaves it out.
  if [ "${DILATED_SKIP_FUZZ:-0}" != 1 ]; then
    echo "[test] fuzz targets" >&2
    bash scripts/fuzz.sh "${DILATED_FUZZ_SECONDS:-45}"
  fi
fi
