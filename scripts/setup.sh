#!/usr/bin/env bash
# Installs everything DilatedAttention needs to build, test and benchmark on a fresh Debian
# bookworm machine (run as root), then makes sure a Kokkos + Kokkos Kernels install exists.
#
# Kokkos is looked for first (Kokkos_ROOT, CMAKE_PREFIX_PATH, the cache prefix). When none is
# found, Kokkos 3.4.01 and Kokkos Kernels 3.4.01 are built from Debian's own `trilinos` 13.2
# source package (the only place Debian ships them), OpenMP + Serial, C++17, Release, into
# DILATED_DEPS_PREFIX (default: ~/.cache/dilated-attention/kokkos-3.4.01).
#
# Idempotent: a second run installs nothing and builds nothing. The last line printed is the
# prefix to hand to CMake (also written to $DILATED_DEPS_PREFIX/../kokkos-prefix.txt).
#
# Usage: scripts/setup.sh [--no-apt] [--jobs N]
set -euo pipefail

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

do_apt=1
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --no-apt) do_apt=0 ;;
    --jobs) shift; jobs="$1" ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

cache_root="${DILATED_CACHE:-${HOME:-/root}/.cache/dilated-attention}"
prefix="${DILATED_DEPS_PREFIX:-$cache_root/kokkos-3.4.01}"
mkdir -p "$cache_root"

# ---------------------------------------------------------------- Debian packages
# Catch2 v3 comes from bookworm-backports (bookworm itself has only v2); the deb-src entry is
# what lets `apt-get source` fetch trilinos.
apt_pkgs=(cmake g++ make ninja-build pkg-config git ca-certificates dpkg-dev
  libopenblas-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev clang-format
  python3 python3-numpy python3-matplotlib)
have_all_pkgs() {
  for p in "${apt_pkgs[@]}" libcatch2-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
  dpkg-query -W -f='${Version}' libcatch2-dev 2>/dev/null | grep -q '^3\.' || return 1
}
# The bookworm-backports (Catch2 v3) and deb-src (trilinos sources) entries; writes them and
# runs apt-get update when they are missing. Needs root.
apt_sources_ready=0
ensure_apt_sources() {
  [ "$apt_sources_ready" = 1 ] && return 0
  [ "$(id -u)" = 0 ] || die "adding apt sources needs root (or install the packages and pass --no-apt)"
  local src=/etc/apt/sources.list.d/dilated-attention.sources
  if [ ! -f "$src" ]; then
    say "adding bookworm-backports and deb-src entries ($src)"
    cat >"$src" <<SRC
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  say "apt-get update"
  apt-get update -q >/dev/null || die "apt-get update failed"
  apt_sources_ready=1
}

if [ "$do_apt" = 1 ] && ! have_all_pkgs; then
  . /etc/os-release
  [ "${VERSION_CODENAME:-}" = bookworm ] || say "warning: written for Debian bookworm, this is ${PRETTY_NAME:-unknown}"
  ensure_apt_sources
  say "installing: ${apt_pkgs[*]} libcatch2-dev (bookworm-backports)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}" \
    >"$cache_root/apt.log" 2>&1 || die "apt-get install failed, see $cache_root/apt.log"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -t bookworm-backports catch2 >>"$cache_root/apt.log" 2>&1 ||
    die "installing Catch2 v3 from bookworm-backports failed, see $cache_root/apt.log"
elif [ "$do_apt" = 1 ]; then
  say "Debian packages: already installed"
else
  say "Debian packages: skipped (--no-apt)"
fi

# ---------------------------------------------------------------- Kokkos
# A user-provided Kokkos wins: Kokkos_ROOT, then each entry of CMAKE_PREFIX_PATH.
find_kokkos() {
  local d cpp="${CMAKE_PREFIX_PATH:-}"
  for d in ${Kokkos_ROOT:-} ${cpp//:/ } "$prefix"; do
    [ -n "$d" ] || continue
    if ls "$d"/lib*/cmake/Kokkos/KokkosConfig.cmake >/dev/null 2>&1 &&
       ls "$d"/lib*/cmake/KokkosKernels/KokkosKernelsConfig.cmake >/dev/null 2>&1; then
      echo "$d"; return 0
    fi
  done
  return 1
}
if found=$(find_kokkos); then
  say "Kokkos + Kokkos Kernels: found in $found"
  echo "$found" >"$cache_root/kokkos-prefix.txt"
  echo "$found"
  exit 0
fi

say "no Kokkos found: building Kokkos 3.4.01 + Kokkos Kernels from Debian's trilinos 13.2 source"
for t in cmake g++ apt-get tar; do command -v "$t" >/dev/null || die "'$t' is missing"; done
src_dir="$cache_root/src"
mkdir -p "$src_dir"
tri_dir=$(ls -d "$src_dir"/Trilinos-*/ 2>/dev/null | head -n1 || true)
if [ -z "$tri_dir" ] || [ ! -f "$tri_dir/packages/kokkos-kernels/CMakeLists.txt" ]; then
  ( cd "$src_dir"
    if ! ls trilinos_13.2.0.orig.tar.gz >/dev/null 2>&1; then
      say "downloading the trilinos source package (~170 MB)"
      if ! apt-get source --download-only trilinos=13.2.0-4 >/dev/null 2>&1; then
        ensure_apt_sources  # a machine with the packages but without the deb-src entry
      fi
      apt-get source --download-only trilinos=13.2.0-4 >/dev/null 2>&1 ||
        apt-get source --download-only trilinos >/dev/null 2>&1 ||
        die "apt-get source trilinos failed: is a bookworm deb-src entry configured?"
    fi
    say "extracting packages/kokkos and packages/kokkos-kernels"
    tar xzf trilinos_13.2.0.orig.tar.gz --wildcards \
      '*/packages/kokkos/*' '*/packages/kokkos-kernels/*' ||
      die "extracting the trilinos tarball failed"
  )
  tri_dir=$(ls -d "$src_dir"/Trilinos-*/ | head -n1)
fi

build="$cache_root/build"
common=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 -DCMAKE_CXX_COMPILER=g++
  -DCMAKE_INSTALL_PREFIX="$prefix" -DBUILD_SHARED_LIBS=OFF
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON)

say "configuring Kokkos (OpenMP + Serial)"
cmake -S "$tri_dir/packages/kokkos" -B "$build/kokkos" "${common[@]}" \
  -DKokkos_ENABLE_SERIAL=ON -DKokkos_ENABLE_OPENMP=ON \
  -DKokkos_ENABLE_TESTS=OFF -DKokkos_ENABLE_EXAMPLES=OFF \
  >"$build.kokkos.log" 2>&1 || die "Kokkos configure failed, see $build.kokkos.log"
say "building Kokkos ($jobs jobs)"
cmake --build "$build/kokkos" -j "$jobs" >>"$build.kokkos.log" 2>&1 ||
  die "Kokkos build failed, see $build.kokkos.log"
cmake --install "$build/kokkos" >>"$build.kokkos.log" 2>&1 || die "Kokkos install failed"

# Kokkos Kernels: host BLAS from OpenBLAS, and only the instantiations we call (float and
# double, LayoutRight, OpenMP); everything else stays header-only, which keeps the build short.
say "configuring Kokkos Kernels (BLAS from OpenBLAS; float/double LayoutRight ETI)"
cmake -S "$tri_dir/packages/kokkos-kernels" -B "$build/kokkos-kernels" "${common[@]}" \
  -DKokkos_ROOT="$prefix" \
  -DKokkosKernels_ENABLE_TPL_BLAS=ON -DBLAS_LIBRARIES=openblas \
  -DKokkosKernels_ADD_DEFAULT_ETI=OFF \
  -DKokkosKernels_INST_DOUBLE=ON -DKokkosKernels_INST_FLOAT=ON \
  -DKokkosKernels_INST_LAYOUTRIGHT=ON -DKokkosKernels_INST_LAYOUTLEFT=OFF \
  -DKokkosKernels_INST_EXECSPACE_OPENMP=ON -DKokkosKernels_INST_EXECSPACE_SERIAL=OFF \
  -DKokkosKernels_INST_MEMSPACE_HOSTSPACE=ON \
  -DKokkosKernels_INST_ORDINAL_INT=OFF -DKokkosKernels_INST_OFFSET_INT=OFF \
  -DKokkosKernels_INST_OFFSET_SIZE_T=OFF \
  -DKokkosKernels_ENABLE_TESTS=OFF -DKokkosKernels_ENABLE_EXAMPLES=OFF \
  >"$build.kk.log" 2>&1 || die "Kokkos Kernels configure failed, see $build.kk.log"
say "building Kokkos Kernels ($jobs jobs)"
cmake --build "$build/kokkos-kernels" -j "$jobs" >>"$build.kk.log" 2>&1 ||
  die "Kokkos Kernels build failed, see $build.kk.log"
cmake --install "$build/kokkos-kernels" >>"$build.kk.log" 2>&1 || die "Kokkos Kernels install failed"
rm -rf "$build"

find_kokkos >/dev/null || die "the build finished but $prefix has no KokkosConfig.cmake"
say "Kokkos + Kokkos Kernels installed in $prefix"
echo "$prefix" >"$cache_root/kokkos-prefix.txt"
echo "$prefix"
