#!/usr/bin/env bash
# The README's main command: set up a fresh machine (scripts/setup.sh), build the demo (preset
# "demo": Release, -march=native, examples only) and run it on the default Kokkos device: the
# seed's four variants timed on one configuration, checked against the host, printed as a table.
# On a machine with CUDA (setup.sh builds Kokkos for it) the demo is the "cuda" build and runs on
# the GPU; `--cpu` first keeps the host build.
# Extra arguments go to the demo (bash scripts/demo.sh --help lists them; --length 4096 for a
# quicker run, --json results.json to keep the numbers).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ "${1:-}" = --cpu ]; then
  export DILATED_CPU_ONLY=1
  shift
fi
source scripts/preset_build.sh
preset_build demo demo --target dilated_demo
# OpenMP: every core, one thread each, unless the caller chose otherwise. Threads unbound: a
# bound first thread pins Debian's (pthread) OpenBLAS pool, the layers' products, to its core
# (measured: products 1.9x slower on 2 cores; docs/training.md).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$jobs} OMP_PROC_BIND=${OMP_PROC_BIND:-false}
export OMP_PLACES=${OMP_PLACES:-threads}
source scripts/host_blas_env.sh
echo "[demo] run" >&2
exec "$build_dir"/examples/dilated_demo "$@"
