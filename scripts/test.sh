#!/usr/bin/env bash
# The README's test command: set up a fresh machine (scripts/setup.sh), configure and build the
# library with its tests (preset "tests"), and run them with ctest. Extra arguments go to ctest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
prefix=$(bash scripts/setup.sh)
export CMAKE_PREFIX_PATH="$prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
jobs=$(nproc)
echo "[test] configure (Kokkos from $prefix)" >&2
cmake --preset tests >/dev/null
echo "[test] build ($jobs jobs)" >&2
cmake --build --preset tests -j "$jobs"
echo "[test] ctest" >&2
ctest --preset tests "$@"
