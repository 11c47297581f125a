#!/usr/bin/env bash
# Runs a CUDA build's test executables, the device-vs-host checks and the benchmarks from a
# folder of prebuilt binaries, on a machine with a GPU and no build tools. Logs and the
# benchmark JSON go to OUT_DIR; the last lines printed are a summary.
#
# Usage: scripts/device_suite.sh BIN_DIR OUT_DIR [GOLDEN_DIR] [BENCH_LENGTHS]
# Environment: ONLY=<regex> runs only matching test executables; SKIP_CHECKS=1, SKIP_DEMO=1,
# SKIP_BENCH=1, SKIP_MMA_SYNC=1 (the tests again without wgmma); RACECHECK=1 adds
# compute-sanitizer's racecheck of the Improved tests;
# DEMO_ARGS replaces the demo's arguments (default --dtype half).
set -u
bin=$1
out=$2
export DILATED_GOLDEN_DIR=${3:-}
lengths=${4:-16384,65536}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} OMP_PROC_BIND=false
# Shared libraries the device machine lacks (Debian's libbenchmark) travel in BIN_DIR/lib.
export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
summary=()
failed=0

only=${ONLY:-}  # a regular expression: run only the matching executables
for exe in "$bin"/dilated_*; do
  [ -z "$only" ] || [[ "$(basename "$exe")" =~ $only ]] || continue
  name=$(basename "$exe")
  case "$name" in dilated_check | dilated_demo | dilated_bench_* | dilated_pattern | dilated_transformer_block) continue ;; esac
  start=$(date +%s%N)
  if "$exe" >"$out/$name.log" 2>&1; then status=passed; else status=FAILED; failed=1; fi
  ms=$((($(date +%s%N) - start) / 1000000))
  summary+=("$(printf '%-36s %-7s %7d ms  %s' "$name" "$status" "$ms" "$(grep -E '^(All tests passed|test cases:)' "$out/$name.log" | tail -1)")")
done

# A build for sm_90a runs the Improved forward at head_dim 64 on wgmma; the same tests again with
# DILATED_DISABLE_WGMMA=1 cover the mma.sync kernels it replaces there (the path of sm_90/sm_80
# builds). SKIP_MMA_SYNC=1 skips this.
if [ -z "${SKIP_MMA_SYNC:-}" ]; then
  for name in dilated_AttentionForward_Cuda dilated_AttentionBackward_Cuda dilated_MultiheadAttention_Cuda; do
    [ -x "$bin/$name" ] || continue
    [ -z "$only" ] || [[ "$name" =~ $only ]] || continue
    log="$out/${name}_mma_sync.log"
    if DILATED_DISABLE_WGMMA=1 "$bin/$name" >"$log" 2>&1; then status=passed; else status=FAILED; failed=1; fi
    summary+=("$(printf '%-36s %-7s %s' "$name (mma.sync)" "$status" "$(grep -E '^(All tests passed|test cases:)' "$log" | tail -1)")")
  done
fi

# The pre-LN transformer block on the layer, trained a few steps, both policies.
if [ -x "$bin/dilated_transformer_block" ] && [ -z "${SKIP_CHECKS:-}" ]; then
  for algorithm in original improved; do
    log="$out/transformer_block_$algorithm.log"
    if "$bin/dilated_transformer_block" --algorithm "$algorithm" >"$log" 2>&1; then status=passed; else status=FAILED; failed=1; fi
    summary+=("$(printf 'transformer block %-8s %s' "$algorithm" "$status")")
  done
fi

# RACECHECK=1: compute-sanitizer's racecheck over the Improved-vs-Original tests in half and bf16
# (StorageTypes 2 and 3: the tensor-core kernels, whose shared-memory barriers a test cannot
# check: a missing one can leave every result right on one run). Slow: minutes per test.
# 2026-11-26 (H100): both clean (0 hazards), after the generic forward kernel stopped letting
# other vector lanes read the running row maximum that lane 0 then rewrites (~127000 warp-level
# WAR warnings before).
if [ -n "${RACECHECK:-}" ] && command -v compute-sanitizer >/dev/null 2>&1; then
  racecheck_tests=(
    "dilated_AttentionForward_Cuda|Improved equals Original within the precision's tolerance"
    "dilated_AttentionBackward_Cuda|Improved backward equals Original backward"
  )
  for entry in "${racecheck_tests[@]}"; do
    exe=${entry%%|*} name=${entry#*|}
    [ -x "$bin/$exe" ] || continue
    log="$out/racecheck_$exe.log"
    if compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 1 \
      "$bin/$exe" "$name - dilated::testing::StorageTypes - 2,$name - dilated::testing::StorageTypes - 3" \
      >"$log" 2>&1; then status=passed; else status=FAILED; failed=1; fi
    summary+=("$(printf 'racecheck %-30s %-7s %s' "$exe" "$status" "$(grep -E 'RACECHECK SUMMARY' "$log" | tail -1)")")
  done
fi

# The device against the host: forward vs the exact reference, backward vs the host in double.
checks=(
  "--semantics grouped --dtype float --length 4096 --heads 12 --dim 64 --segments 512,1024,2048 --dilations 1,2,4"
  "--semantics longnet --dtype float --length 3000 --heads 8 --dim 64 --segments 512,1024,2048 --dilations 1,2,4 --causal"
  "--semantics longnet --dtype half --length 4096 --heads 8 --dim 64 --segments 512,1024,2048 --dilations 1,2,4"
  "--semantics grouped --dtype bf16 --length 4096 --heads 6 --dim 128 --segments 512,1024,2048 --dilations 1,2,4 --causal"
  "--semantics longnet --dtype double --length 2500 --heads 4 --dim 32 --segments 256,512 --dilations 1,2 --dropout 0.1"
  "--semantics grouped --dtype half --length 5000 --heads 12 --dim 64 --segments 512,1024,2048 --dilations 1,2,4 --causal --dropout 0.1"
)
[ -z "${SKIP_CHECKS:-}" ] || checks=()
for algorithm in ${ALGORITHMS:-original improved}; do
  for i in "${!checks[@]}"; do
    log="$out/check_${algorithm}_$i.log"
    if "$bin/dilated_check" --algorithm "$algorithm" ${checks[$i]} >"$log" 2>&1; then status=passed; else status=FAILED; failed=1; fi
    summary+=("$(printf 'check %-8s %d %-7s %s' "$algorithm" "$i" "$status" "$(head -1 "$log")")")
  done
done

# The demo: the seed's four variants, checked against the host (DEMO_ARGS replaces its arguments;
# SKIP_DEMO=1 skips it).
if [ -x "$bin/dilated_demo" ] && [ -z "${SKIP_DEMO:-}" ]; then
  if "$bin/dilated_demo" ${DEMO_ARGS:---dtype half} --json "$out/demo.json" >"$out/demo.log" 2>&1; then
    status=passed
  else
    status=FAILED
    failed=1
  fi
  summary+=("demo $status" "$(grep -E '^\| ' "$out/demo.log")")
fi

# Benchmarks: both algorithms side by side (BENCH_ARGS adds flags, e.g. --benchmark_filter=).
if [ -x "$bin/dilated_bench_attention" ] && [ -z "${SKIP_BENCH:-}" ]; then
  "$bin/dilated_bench_attention" --lengths="$lengths" --semantics=grouped ${BENCH_ARGS:-} \
    --benchmark_out="$out/bench_grouped.json" --benchmark_out_format=json \
    --benchmark_min_time=0.2 >"$out/bench_grouped.log" 2>&1 || failed=1
  summary+=("$(grep -E '^(Original|Improved)' "$out/bench_grouped.log")")
fi
# The multihead layer (E = 768, h = 12), both policies; LAYER_LENGTHS= skips it.
layer_lengths=${LAYER_LENGTHS-16384,65536,131072}
if [ -x "$bin/dilated_bench_layer" ] && [ -z "${SKIP_BENCH:-}" ] && [ -n "$layer_lengths" ]; then
  "$bin/dilated_bench_layer" --lengths="$layer_lengths" ${LAYER_ARGS:-} \
    --benchmark_out="$out/bench_layer.json" --benchmark_out_format=json \
    --benchmark_min_time=0.2 >"$out/bench_layer.log" 2>&1 || failed=1
  summary+=("$(grep -E 'MultiheadDilatedAttention/' "$out/bench_layer.log")")
fi

cat "$out"/check_*.log 2>/dev/null
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
# Few files come back from a device run: bundle the logs.
tar czf "$out/logs.tar.gz" -C "$out" --exclude logs.tar.gz . 2>/dev/null
exit $failed
