# Sourced by the README's two commands (scripts/demo.sh, scripts/test.sh): sets up a fresh
# machine (scripts/setup.sh prints the Kokkos prefix), exports it in CMAKE_PREFIX_PATH for the
# caller (the install test's separate project needs it too) and configures and builds a preset.
#
# On a machine where setup.sh builds Kokkos for CUDA (nvcc and a GPU, or DILATED_CUDA_ARCH), the
# build is the `cuda` preset (build/cuda) for that architecture instead of the host preset asked
# for, and `gpu=1`; `--cpu` as the command's first argument (or DILATED_CPU_ONLY=1) keeps the
# host path, which is also what a machine without CUDA gets, exactly as before.
# Usage: preset_build TAG PRESET [extra `cmake --build` arguments, e.g. --target NAME]
# Sets `jobs` (the number of cores), `gpu` (0 or 1) and `build_dir` for the caller.
preset_build() {
  local tag=$1 preset=$2
  shift 2
  local prefix setup_args=()
  [ "${DILATED_CPU_ONLY:-0}" = 1 ] && setup_args=(--cpu)
  prefix=$(bash scripts/setup.sh "${setup_args[@]}")
  export CMAKE_PREFIX_PATH="$prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  jobs=$(nproc)
  gpu=0
  build_dir=build/$preset
  local config=()
  if grep -qs '^#define KOKKOS_ENABLE_CUDA' "$prefix/include/KokkosCore_config.h"; then
    gpu=1
    preset=cuda
    build_dir=build/cuda
    # The architecture setup.sh built Kokkos for (its prefix ends in -cuda<arch>).
    local arch=${DILATED_CUDA_ARCH:-}
    [ -z "$arch" ] && [[ $prefix =~ -cuda([0-9]+a?)$ ]] && arch=${BASH_REMATCH[1]}
    local nvcc
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    config=(-DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="${arch:-90a}")
    [ -f "$prefix/lib/cmake/KokkosKernels/KokkosKernelsConfig.cmake" ] ||
      [ -f "$prefix/lib64/cmake/KokkosKernels/KokkosKernelsConfig.cmake" ] ||
      config+=(-DDilatedAttention_ENABLE_KOKKOSKERNELS=OFF)
    echo "[$tag] CUDA build (architecture ${arch:-90a}; --cpu for the host build)" >&2
  fi
  echo "[$tag] configure (Kokkos from $prefix)" >&2
  cmake --preset "$preset" "${config[@]}" >/dev/null
  echo "[$tag] build ($jobs jobs)" >&2
  cmake --build --preset "$preset" -j "$jobs" "$@"
}
