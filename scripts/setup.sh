#!/usr/bin/env bash
# Installs everything DilatedAttention needs to build, test and benchmark on a fresh Debian
# bookworm machine (run as root), then makes sure a Kokkos + Kokkos Kernels install exists.
#
# Host (no nvcc, no GPU, or --cpu): Kokkos is looked for first (Kokkos_ROOT, CMAKE_PREFIX_PATH,
# the cache prefix). When none is found, Kokkos 3.4.01 and Kokkos Kernels 3.4.01 are built from
# Debian's own `trilinos` 13.2 source package (the only place Debian ships them), OpenMP +
# Serial, C++17, Release, into DILATED_DEPS_PREFIX (default: ~/.cache/dilated-attention/kokkos-3.4.01).
#
# CUDA (a working nvcc, in PATH or /usr/local/cuda/bin, and either a visible GPU, whose compute
# capability nvidia-smi gives, or DILATED_CUDA_ARCH, e.g. 90a, 90, 80): Kokkos with CUDA +
# OpenMP + Serial for that architecture, into DILATED_CUDA_PREFIX (default:
# ~/.cache/dilated-attention/kokkos-<version>-cuda<arch>), from DILATED_KOKKOS_SOURCE (a
# directory or a tarball) or else a clone of the pinned release tag (DILATED_KOKKOS_TAG, default
# 4.7.01); sources older than 4.7.01 get cmake/patches/kokkos-4.6-cuda13.patch under CUDA >= 13
# (said on stderr). Then Kokkos Kernels with CUDA (cuBLAS, OpenBLAS on the host) from
# DILATED_KOKKOS_KERNELS_SOURCE or a clone, unless --no-kernels or no source is at hand (the
# CUDA build then calls cuBLAS directly).
#
# Idempotent: a second run installs nothing and builds nothing. The last line printed is the
# prefix to hand to CMake (also written to kokkos-prefix.txt in the cache directory,
# ~/.cache/dilated-attention or DILATED_CACHE; the CUDA prefix to kokkos-cuda-prefix.txt there).
#
# Usage: scripts/setup.sh [--cpu] [--no-apt] [--jobs N] [--no-kernels]
#   --cpu (or DILATED_CPU_ONLY=1): the host path even where nvcc and a GPU are present.
#   --no-kernels: CUDA path without Kokkos Kernels.
set -euo pipefail

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

do_apt=1
jobs=$(nproc)
cpu_only=0
[ "${DILATED_CPU_ONLY:-0}" = 1 ] && cpu_only=1
with_kernels=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-apt) do_apt=0 ;;
    --jobs) shift; jobs="$1" ;;
    --cpu) cpu_only=1 ;;
    --no-kernels) with_kernels=0 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

cache_root="${DILATED_CACHE:-${HOME:-/root}/.cache/dilated-attention}"
prefix="${DILATED_DEPS_PREFIX:-$cache_root/kokkos-3.4.01}"
mkdir -p "$cache_root"

# ---------------------------------------------------------------- CUDA or host?
# The CUDA path needs a working nvcc (PATH, then /usr/local/cuda/bin) and an architecture: from
# DILATED_CUDA_ARCH, else from the first GPU nvidia-smi lists. Without nvcc nothing here prints
# anything and the host path below runs as it always has.
cuda=0
nvcc="" nvcc_version="" cuda_arch="" arch_why=""
find_nvcc() {
  local c
  for c in "$(command -v nvcc 2>/dev/null || true)" /usr/local/cuda/bin/nvcc; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    "$c" --version >/dev/null 2>&1 || continue
    echo "$c"; return 0
  done
  return 1
}
if [ "$cpu_only" = 0 ] && nvcc=$(find_nvcc); then
  nvcc_version=$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
  [ -n "$nvcc_version" ] || die "cannot read the CUDA version from '$nvcc --version'"
  if [ -n "${DILATED_CUDA_ARCH:-}" ]; then
    cuda_arch=$DILATED_CUDA_ARCH
    arch_why="DILATED_CUDA_ARCH"
  elif command -v nvidia-smi >/dev/null 2>&1 &&
       caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null) &&
       cap=$(printf '%s\n' "$caps" | sed -n '1s/^ *\([0-9][0-9]*\)\.\([0-9]\) *$/\1\2/p') &&
       [ -n "$cap" ]; then
    cuda_arch=$cap
    # Hopper: the architecture-specific target, so that the Improved forward gets wgmma.
    [ "$cuda_arch" = 90 ] && cuda_arch=90a
    arch_why="nvidia-smi: GPU 0 has compute capability $(printf '%s\n' "$caps" | sed -n '1s/ //gp')"
    if [ "$(printf '%s\n' "$caps" | sort -u | wc -l)" -gt 1 ]; then
      say "warning: the GPUs differ ($(printf '%s' "$caps" | tr '\n' ' ')); building for GPU 0 (set DILATED_CUDA_ARCH to choose)"
    fi
  fi
  if [ -n "$cuda_arch" ]; then
    cuda=1
  else
    say "nvcc $nvcc_version found ($nvcc) but no GPU visible and DILATED_CUDA_ARCH unset: host-only setup"
  fi
fi
# Kokkos_ARCH_* option for a CUDA architecture (CMAKE_CUDA_ARCHITECTURES spelling).
kokkos_arch_of() {
  case "$1" in
    70) echo VOLTA70 ;; 72) echo VOLTA72 ;; 75) echo TURING75 ;;
    80) echo AMPERE80 ;; 86) echo AMPERE86 ;; 87) echo AMPERE87 ;; 89) echo ADA89 ;;
    90|90a) echo HOPPER90 ;;
    100|100a|100f) echo BLACKWELL100 ;; 120|120a|120f) echo BLACKWELL120 ;;
    *) return 1 ;;
  esac
}
if [ "$cuda" = 1 ]; then
  kokkos_arch=$(kokkos_arch_of "$cuda_arch") ||
    die "unknown CUDA architecture '$cuda_arch' ($arch_why); set DILATED_CUDA_ARCH to one of 70 72 75 80 86 87 89 90 90a 100 100a 120 120a, or pass --cpu"
  say "CUDA $nvcc_version ($nvcc), architecture $cuda_arch ($arch_why): Kokkos with CUDA + OpenMP + Serial (--cpu for the host-only setup)"
fi

# ---------------------------------------------------------------- Debian packages
# Catch2 v3 comes from bookworm-backports (bookworm itself has only v2); the deb-src entry is
# what lets `apt-get source` fetch trilinos.
# clang, libclang-rt-14-dev (libFuzzer) and libomp-dev (clang's OpenMP): the fuzz preset.
# libopenblas0-openmp: OpenBLAS' OpenMP build beside Debian's default pthread build, which the
# CPU scripts put first (scripts/host_blas_env.sh; the system's choice is left as it is).
apt_pkgs=(cmake g++ make ninja-build pkg-config git ca-certificates dpkg-dev
  libopenblas-dev libopenblas0-openmp libbenchmark-dev libcli11-dev nlohmann-json3-dev clang-format
  clang libclang-rt-14-dev libomp-dev
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

# ---------------------------------------------------------------- Kokkos for CUDA
# Pinned release for the clone. 4.7.01 is the first Kokkos release that builds against the
# CUDA 13 runtime API unpatched (kokkos#8298, cherry-picked into 4.7.01 as kokkos#8328). Kokkos'
# release notes list later CUDA 13 fixes: 4.7.02 cudaMemAdvise_v2 (only with the unified-memory
# option, off here), 4.7.03 compiling with CUDA 13.1 (kokkos#9020); hence the warning below.
# Kokkos 5 needs C++20, this library builds as C++17: stay on 4.7.
kokkos_tag="${DILATED_KOKKOS_TAG:-4.7.01}"
kernels_tag="${DILATED_KOKKOS_KERNELS_TAG:-$kokkos_tag}"
repo_root=$(cd "$(dirname "$0")/.." && pwd)
patch_file="$repo_root/cmake/patches/kokkos-4.6-cuda13.patch"

# "MAJOR.MINOR.PATCH" from a Kokkos (PKG=Kokkos) or Kokkos Kernels (PKG=KokkosKernels)
# top-level CMakeLists.txt on stdin: its set(PKG_VERSION_MAJOR 4) lines (any case of `set`).
version_of_cmakelists() {
  sed -n "s/^ *[Ss][Ee][Tt] *( *$1_VERSION_\(MAJOR\|MINOR\|PATCH\) \{1,\}\([0-9]\{1,\}\) *).*/\1 \2/p" |
    awk '{ x[$1] = $2 }
      END { if (x["MAJOR"] != "" && x["MINOR"] != "" && x["PATCH"] != "")
              printf "%d.%d.%02d\n", x["MAJOR"], x["MINOR"], x["PATCH"] }'
}
version_num() {
  local major=${1%%.*} rest=${1#*.}
  echo $((10#$major * 10000 + 10#${rest%%.*} * 100 + 10#${rest#*.}))
}
# Version of a source given as a directory or a tarball (top-level CMakeLists.txt).
source_version() {
  local src=$1 pkg=$2 top
  if [ -d "$src" ]; then
    [ -f "$src/CMakeLists.txt" ] || return 1
    version_of_cmakelists "$pkg" <"$src/CMakeLists.txt"
  elif [ -f "$src" ]; then
    top=$(tar -tf "$src" 2>/dev/null | awk 'NR == 1') || return 1
    top=${top#./}; top=${top%%/*}
    { tar -xOf "$src" "$top/CMakeLists.txt" 2>/dev/null ||
      tar -xOf "$src" CMakeLists.txt 2>/dev/null; } | version_of_cmakelists "$pkg"
  else
    return 1
  fi
}
# Copies (directory, without .git) or extracts (tarball, its one top directory stripped) SRC
# into a fresh DEST; the caller's copy is never modified.
stage_source() {
  local src=$1 dest=$2
  rm -rf "$dest"; mkdir -p "$dest"
  if [ -d "$src" ]; then
    tar -C "$src" --exclude=.git -cf - . | tar -C "$dest" -xf - || return 1
  else
    tar -C "$dest" -xf "$src" || return 1
    if [ ! -f "$dest/CMakeLists.txt" ] && [ "$(ls -A "$dest" | wc -l)" = 1 ]; then
      local one; one=$(ls -A "$dest")
      [ -d "$dest/$one" ] || return 1
      mv "$dest/$one" "$dest.tmp" && rmdir "$dest" && mv "$dest.tmp" "$dest" || return 1
    fi
  fi
  [ -f "$dest/CMakeLists.txt" ]
}
# Does PREFIX hold a Kokkos built with CUDA?
has_cuda_kokkos() {
  ls "$1"/lib*/cmake/Kokkos/KokkosConfig.cmake >/dev/null 2>&1 &&
    grep -qs '^#define KOKKOS_ENABLE_CUDA' "$1"/include/KokkosCore_config.h
}
has_kernels() { ls "$1"/lib*/cmake/KokkosKernels/KokkosKernelsConfig.cmake >/dev/null 2>&1; }

setup_cuda() {
  local d cpp="${CMAKE_PREFIX_PATH:-}"
  # A user-provided Kokkos built with CUDA wins (Kokkos_ROOT, then CMAKE_PREFIX_PATH).
  for d in ${Kokkos_ROOT:-} ${cpp//:/ }; do
    [ -n "$d" ] || continue
    if has_cuda_kokkos "$d"; then
      say "Kokkos with CUDA: found in $d$(has_kernels "$d" && echo ' (with Kokkos Kernels)')"
      echo "$d" >"$cache_root/kokkos-cuda-prefix.txt"
      echo "$d"
      return 0
    fi
  done

  # Which Kokkos: a local source (directory or tarball) or the pinned tag.
  local ksrc="${DILATED_KOKKOS_SOURCE:-}" kver
  if [ -n "$ksrc" ]; then
    [ -e "$ksrc" ] || die "DILATED_KOKKOS_SOURCE=$ksrc does not exist"
    kver=$(source_version "$ksrc" Kokkos) && [ -n "$kver" ] ||
      die "DILATED_KOKKOS_SOURCE=$ksrc: no Kokkos_VERSION_MAJOR/MINOR/PATCH in its top-level CMakeLists.txt (a Kokkos source directory or tarball?)"
  else
    [[ $kokkos_tag =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
      die "DILATED_KOKKOS_TAG=$kokkos_tag: a release tag such as 4.7.01 (for any other Kokkos use DILATED_KOKKOS_SOURCE)"
    kver=$kokkos_tag
  fi
  [ "$(version_num "$kver")" -ge 40600 ] ||
    die "Kokkos $kver is too old for the CUDA build (needs >= 4.6; see docs/building.md)"
  local cprefix="${DILATED_CUDA_PREFIX:-$cache_root/kokkos-$kver-cuda$cuda_arch}"
  local nvcc_num; nvcc_num=$(version_num "$nvcc_version.0")
  if [ "$nvcc_num" -ge 130100 ] && [ "$(version_num "$kver")" -lt 40703 ]; then
    say "warning: Kokkos' release notes list a CUDA 13.1 build fix in 4.7.03 (kokkos#9020); Kokkos $kver with CUDA $nvcc_version may fail to compile (DILATED_KOKKOS_TAG=4.7.03 or a newer DILATED_KOKKOS_SOURCE)"
  fi

  local build="$cache_root/build-cuda$cuda_arch"
  local common=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD=17 -DCMAKE_CXX_COMPILER=g++
    -DCMAKE_INSTALL_PREFIX="$cprefix" -DBUILD_SHARED_LIBS=OFF
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_HOST_COMPILER=g++
    -DCMAKE_CUDA_ARCHITECTURES="$cuda_arch")
  for t in cmake g++ tar; do command -v "$t" >/dev/null || die "'$t' is missing"; done

  if has_cuda_kokkos "$cprefix"; then
    say "Kokkos $kver with CUDA ($cuda_arch): found in $cprefix"
  else
    local start=$SECONDS src="$build/kokkos-src"
    mkdir -p "$build"
    if [ -n "$ksrc" ]; then
      say "Kokkos $kver for CUDA $cuda_arch from $ksrc"
      stage_source "$ksrc" "$src" || die "copying/extracting $ksrc into $src failed"
    else
      command -v git >/dev/null || die "'git' is missing (or set DILATED_KOKKOS_SOURCE)"
      say "cloning Kokkos $kokkos_tag (https://github.com/kokkos/kokkos)"
      rm -rf "$src"
      git clone -q --depth 1 --branch "$kokkos_tag" https://github.com/kokkos/kokkos "$src" \
        >"$build.clone.log" 2>&1 ||
        die "cloning Kokkos $kokkos_tag failed (offline? see $build.clone.log): set DILATED_KOKKOS_SOURCE to a Kokkos source directory or tarball"
      local got; got=$(version_of_cmakelists Kokkos <"$src/CMakeLists.txt")
      [ "$got" = "$kver" ] || die "the clone of tag $kokkos_tag says it is Kokkos '$got'"
    fi
    # CUDA 13 changed runtime signatures that Kokkos < 4.7.01 calls: apply the repository's
    # patch, loudly, and refuse to go on when it does not fit this source.
    if [ "$(version_num "$kver")" -lt 40701 ] && [ "$nvcc_num" -ge 130000 ]; then
      command -v patch >/dev/null || die "'patch' is missing (needed for $patch_file)"
      [ -f "$patch_file" ] || die "$patch_file is missing"
      if patch -d "$src" -p1 --dry-run --batch --forward <"$patch_file" >"$build.patch.log" 2>&1; then
        say "PATCHING Kokkos $kver for CUDA $nvcc_version: applying ${patch_file#"$repo_root/"} (CUDA 13 runtime API: cudaGraphAddDependencies, cudaMemPrefetchAsync)"
        patch -d "$src" -p1 --batch --forward <"$patch_file" >>"$build.patch.log" 2>&1 ||
          die "applying $patch_file failed, see $build.patch.log"
      elif patch -d "$src" -p1 --dry-run --batch --reverse <"$patch_file" >/dev/null 2>&1; then
        say "Kokkos $kver: the CUDA 13 fixes of $patch_file are already in this source; not patching"
      else
        die "Kokkos $kver is older than 4.7.01 and nvcc is $nvcc_version, but $patch_file does not apply to $ksrc (see $build.patch.log): use Kokkos >= 4.7.01 or a 4.6 source the patch fits"
      fi
    fi
    say "configuring Kokkos $kver (CUDA $cuda_arch + OpenMP + Serial, Kokkos_ARCH_$kokkos_arch)"
    rm -rf "$build/kokkos"
    cmake -S "$src" -B "$build/kokkos" "${common[@]}" \
      -DKokkos_ENABLE_CUDA=ON -DKokkos_ENABLE_OPENMP=ON -DKokkos_ENABLE_SERIAL=ON \
      -DKokkos_ARCH_"$kokkos_arch"=ON -DKokkos_ENABLE_COMPILE_AS_CMAKE_LANGUAGE=ON \
      -DKokkos_ENABLE_TESTS=OFF -DKokkos_ENABLE_EXAMPLES=OFF \
      >"$build.kokkos.log" 2>&1 || die "Kokkos configure failed, see $build.kokkos.log"
    say "building Kokkos ($jobs jobs; about 2 minutes on 2 cores)"
    cmake --build "$build/kokkos" -j "$jobs" >>"$build.kokkos.log" 2>&1 ||
      die "Kokkos build failed, see $build.kokkos.log"
    cmake --install "$build/kokkos" >>"$build.kokkos.log" 2>&1 || die "Kokkos install failed"
    has_cuda_kokkos "$cprefix" || die "the build finished but $cprefix has no Kokkos with CUDA"
    rm -rf "$build/kokkos" "$src"
    say "Kokkos $kver with CUDA installed in $cprefix ($(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s)"
  fi

  # Kokkos Kernels with CUDA: cuBLAS on the device, OpenBLAS on the host, and only the
  # instantiations we call (float and double, LayoutRight; the BLAS component alone).
  if has_kernels "$cprefix"; then
    say "Kokkos Kernels: found in $cprefix"
  elif [ "$with_kernels" = 0 ]; then
    say "Kokkos Kernels: skipped (--no-kernels); the CUDA build calls cuBLAS directly (-DDilatedAttention_ENABLE_KOKKOSKERNELS=OFF)"
  else
    local kksrc="${DILATED_KOKKOS_KERNELS_SOURCE:-}" src="$build/kokkos-kernels-src" start=$SECONDS
    mkdir -p "$build"
    if [ -n "$kksrc" ]; then
      [ -e "$kksrc" ] || die "DILATED_KOKKOS_KERNELS_SOURCE=$kksrc does not exist"
      local kkver
      kkver=$(source_version "$kksrc" KokkosKernels) && [ -n "$kkver" ] ||
        die "DILATED_KOKKOS_KERNELS_SOURCE=$kksrc: no KokkosKernels_VERSION_* in its top-level CMakeLists.txt"
      say "Kokkos Kernels $kkver for CUDA $cuda_arch from $kksrc"
      stage_source "$kksrc" "$src" || die "copying/extracting $kksrc into $src failed"
    elif command -v git >/dev/null && rm -rf "$src" &&
         git clone -q --depth 1 --branch "$kernels_tag" https://github.com/kokkos/kokkos-kernels \
           "$src" >"$build.kk-clone.log" 2>&1; then
      say "Kokkos Kernels $kernels_tag: cloned (https://github.com/kokkos/kokkos-kernels)"
    else
      rm -rf "$src"
      say "Kokkos Kernels: no source (DILATED_KOKKOS_KERNELS_SOURCE unset, cloning $kernels_tag failed: offline?); the CUDA build calls cuBLAS directly (-DDilatedAttention_ENABLE_KOKKOSKERNELS=OFF)"
      kksrc=none
    fi
    if [ "$kksrc" != none ]; then
      say "configuring Kokkos Kernels (CUDA: cuBLAS; host BLAS from OpenBLAS; float/double LayoutRight ETI)"
      rm -rf "$build/kokkos-kernels"
      cmake -S "$src" -B "$build/kokkos-kernels" "${common[@]}" \
        -DKokkos_ROOT="$cprefix" \
        -DKokkosKernels_ENABLE_ALL_COMPONENTS=OFF -DKokkosKernels_ENABLE_COMPONENT_BLAS=ON \
        -DKokkosKernels_ENABLE_TPL_CUBLAS=ON -DKokkosKernels_ENABLE_TPL_CUSPARSE=OFF \
        -DKokkosKernels_ENABLE_TPL_CUSOLVER=OFF \
        -DKokkosKernels_ENABLE_TPL_BLAS=ON -DBLAS_LIBRARIES=openblas \
        -DKokkosKernels_ENABLE_TPL_LAPACK=OFF \
        -DKokkosKernels_ADD_DEFAULT_ETI=OFF \
        -DKokkosKernels_INST_DOUBLE=ON -DKokkosKernels_INST_FLOAT=ON \
        -DKokkosKernels_INST_LAYOUTRIGHT=ON -DKokkosKernels_INST_LAYOUTLEFT=OFF \
        -DKokkosKernels_INST_EXECSPACE_CUDA=ON -DKokkosKernels_INST_MEMSPACE_CUDASPACE=ON \
        -DKokkosKernels_INST_MEMSPACE_CUDAUVMSPACE=OFF \
        -DKokkosKernels_INST_EXECSPACE_OPENMP=ON -DKokkosKernels_INST_EXECSPACE_SERIAL=OFF \
        -DKokkosKernels_INST_MEMSPACE_HOSTSPACE=ON \
        -DKokkosKernels_INST_ORDINAL_INT=OFF -DKokkosKernels_INST_OFFSET_INT=OFF \
        -DKokkosKernels_INST_OFFSET_SIZE_T=OFF \
        -DKokkosKernels_ENABLE_TESTS=OFF -DKokkosKernels_ENABLE_EXAMPLES=OFF \
        >"$build.kk.log" 2>&1 || die "Kokkos Kernels configure failed, see $build.kk.log"
      say "building Kokkos Kernels ($jobs jobs; 152 instantiation files through nvcc: 49 minutes on 2 cores shared with another build, once)"
      cmake --build "$build/kokkos-kernels" -j "$jobs" >>"$build.kk.log" 2>&1 ||
        die "Kokkos Kernels build failed, see $build.kk.log"
      cmake --install "$build/kokkos-kernels" >>"$build.kk.log" 2>&1 ||
        die "Kokkos Kernels install failed"
      has_kernels "$cprefix" || die "the Kokkos Kernels build finished but $cprefix has no KokkosKernelsConfig.cmake"
      rm -rf "$build/kokkos-kernels" "$src"
      say "Kokkos Kernels installed in $cprefix ($(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s)"
    fi
  fi
  rmdir "$build" 2>/dev/null || true
  echo "$cprefix" >"$cache_root/kokkos-cuda-prefix.txt"
  echo "$cprefix"
}
if [ "$cuda" = 1 ]; then
  setup_cuda
  exit 0
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
