#!/usr/bin/env bash
# The README's test command: set up a fresh machine (scripts/setup.sh), configure and build the
# library with its tests (preset "tests"), and run them with ctest. Extra arguments go to ctest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
source scripts/preset_build.sh
preset_build test tests
echo "[test] ctest" >&2
ctest --preset tests "$@"
