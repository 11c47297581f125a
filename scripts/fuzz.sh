#!/usr/bin/env bash
# Builds the fuzz targets (preset "fuzz": clang++, libFuzzer, AddressSanitizer +
# UndefinedBehaviorSanitizer) and runs each for a bounded time from its corpus in fuzz/corpus/,
# then prints per target the executions, the time and the crashes. Any crash, sanitizer finding
# or timeout fails the run; the input that caused it is left in build/fuzz/artifacts/ and the
# target's log in build/fuzz/logs/ (the log's end is printed). scripts/test.sh runs this (CI).
#
#   bash scripts/fuzz.sh [seconds per target, default 45]
#
# The corpus folders are read, never written (new inputs go to build/fuzz/new-corpus/); a crash
# that is fixed goes into fuzz/corpus/ by hand as crash-<what>, with a regression test.
# Needs clang++ with libFuzzer (Debian: clang, libclang-rt-14-dev) and the Kokkos prefix in
# CMAKE_PREFIX_PATH (scripts/test.sh exports it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
seconds=${1:-45}
jobs=$(nproc)
build=build/fuzz

start=$(date +%s)
echo "[fuzz] configure and build (preset fuzz)" >&2
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs"
built=$(date +%s)
echo "[fuzz] built in $((built - start)) s" >&2

mkdir -p "$build/logs" "$build/artifacts"
status=0
for target in npy cli; do
  binary=$build/fuzz/dilated_fuzz_$target
  fresh=$build/new-corpus/$target
  rm -rf "$fresh"
  mkdir -p "$fresh"
  log=$build/logs/$target.log
  t0=$(date +%s)
  # -timeout: one input longer than 10 s is a finding; -rss_limit_mb / -malloc_limit_mb: an
  # allocation beyond 512 MB from inputs of at most 4 KB is one too. stdout closed (the tool's
  # reports); libFuzzer and the sanitizers write to stderr, into the log.
  rc=0
  OMP_NUM_THREADS=1 OMP_PROC_BIND=false "$binary" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=4096 -close_fd_mask=1 \
    -print_final_stats=1 -artifact_prefix="$PWD/$build/artifacts/$target-" \
    "$fresh" "fuzz/corpus/$target" >"$log" 2>&1 || rc=$?
  t1=$(date +%s)
  runs=$(grep -a '^stat::number_of_executed_units:' "$log" | awk '{print $2}')
  rate=$(grep -a '^stat::average_exec_per_sec:' "$log" | awk '{print $2}')
  crashes=$(grep -ac '^artifact_prefix=.*Test unit written to' "$log" || true)
  echo "[fuzz] $target: ${runs:-?} executions in $((t1 - t0)) s (${rate:-?}/s), $crashes crash(es), corpus $(ls "fuzz/corpus/$target" | wc -l) + $(ls "$fresh" | wc -l) new, exit $rc" >&2
  if [ "$rc" != 0 ] || [ "$crashes" != 0 ]; then
    status=1
    echo "[fuzz] $target FAILED; the end of $log:" >&2
    tail -n 60 "$log" >&2
  fi
done
echo "[fuzz] done in $(($(date +%s) - start)) s" >&2
exit $status
