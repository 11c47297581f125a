# Sourced by the README's two commands (scripts/demo.sh, scripts/test.sh): sets up a fresh
# machine (scripts/setup.sh prints the Kokkos prefix), exports it in CMAKE_PREFIX_PATH for the
# caller (the install test's separate project needs it too) and configures and builds a preset.
# Usage: preset_build TAG PRESET [extra `cmake --build` arguments, e.g. --target NAME]
# Sets `jobs` (the number of cores) for the caller.
preset_build() {
  local tag=$1 preset=$2
  shift 2
  local prefix
  # --cpu: the host Kokkos, as before setup.sh learned CUDA (its CUDA path also runs on machines
  # with nvcc and a GPU); the demo and test presets are host builds until they get a CUDA path.
  prefix=$(bash scripts/setup.sh --cpu)
  export CMAKE_PREFIX_PATH="$prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  jobs=$(nproc)
  echo "[$tag] configure (Kokkos from $prefix)" >&2
  cmake --preset "$preset" >/dev/null
  echo "[$tag] build ($jobs jobs)" >&2
  cmake --build --preset "$preset" -j "$jobs" "$@"
}
