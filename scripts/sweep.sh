#!/usr/bin/env bash
# Sweeps the seed's axes with the benchmark binaries and collects their Google Benchmark JSON in
# one folder: sequence length (16K..1M, as far as memory allows), head dimension, segment /
# dilation schedule, dtype, semantics, causal, forward and forward+backward, both algorithms, and
# the multihead layer. Needs bash and the two binaries only (runs on a bare GPU machine).
#
# Usage: scripts/sweep.sh [options] BIN_DIR OUT_DIR
#   BIN_DIR   holds dilated_bench_attention and dilated_bench_layer (a build's perf_tests/, or the
#             bin/ that scripts/stage_device_binaries.sh packs; BIN_DIR/lib is added to
#             LD_LIBRARY_PATH)
#   OUT_DIR   receives one JSON file per run (attention_*.json, layer_*.json), sweep.log (every
#             command, its status and time) and skipped.txt (runs that failed or did not fit)
# Options (defaults in brackets):
#   --lengths L1,L2,...   sequence lengths, ascending [16384,32768,...,1048576]
#   --dims D1,D2          head dimensions [64,128]
#   --heads H             heads [12]
#   --batch B             batch size [1]
#   --schedules "S:R ..." segment lengths and dilation rates, space separated
#                         ["2048,4096,8192:1,2,4 4096,8192,16384,32768:1,2,4,8"]
#   --dtypes T1,T2        fp16, bf16, fp32, fp64 [the binaries' default: fp16 on CUDA, fp32 host]
#   --semantics S1,S2     grouped, longnet [grouped,longnet]
#   --causal C1,C2        full, causal [full,causal]
#   --passes P1,P2        fwd, fwd_bwd [fwd,fwd_bwd]
#   --algorithms A1,A2    original, improved [original,improved]
#   --no-layer            skip the multihead layer (embed_dim = heads x dim)
#   --no-attention        skip the attention benchmark
#   --min-time S          --benchmark_min_time per benchmark [0.2]
#   --timeout S           wall-clock limit per run; a run that hits it ends its configuration [900]
#   --dry-run             print the commands, run nothing
# When a length fails (out of memory: the benchmark reports "error_occurred"; a crash; the
# timeout), longer lengths of the same configuration are skipped.
#
# Example (H100): scripts/sweep.sh --dtypes fp16,bf16 /tmp/bin /tmp/sweep
# Example (quick, CPU): scripts/sweep.sh --lengths 4096,8192 --dims 64 --passes fwd \
#     --schedules "1024,2048:1,2" build/tests/perf_tests sweep-cpu
set -u

lengths=16384,32768,65536,131072,262144,524288,1048576
dims=64,128
heads=12
batch=1
schedules="2048,4096,8192:1,2,4 4096,8192,16384,32768:1,2,4,8"
dtypes=""
semantics_list=grouped,longnet
causal_list=full,causal
passes=fwd,fwd_bwd
algorithms=original,improved
do_layer=1
do_attention=1
min_time=0.2
timeout_s=900
dry_run=0

die() { printf 'sweep: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --lengths) lengths=$2; shift ;;
    --dims) dims=$2; shift ;;
    --heads) heads=$2; shift ;;
    --batch) batch=$2; shift ;;
    --schedules) schedules=$2; shift ;;
    --dtypes) dtypes=$2; shift ;;
    --semantics) semantics_list=$2; shift ;;
    --causal) causal_list=$2; shift ;;
    --passes) passes=$2; shift ;;
    --algorithms) algorithms=$2; shift ;;
    --no-layer) do_layer=0 ;;
    --no-attention) do_attention=0 ;;
    --min-time) min_time=$2; shift ;;
    --timeout) timeout_s=$2; shift ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) break ;;
  esac
  shift
done
[ $# -eq 2 ] || { usage >&2; exit 2; }
bin=$1
out=$2
attention_bin="$bin/dilated_bench_attention"
layer_bin="$bin/dilated_bench_layer"
[ "$do_attention" = 0 ] || [ -x "$attention_bin" ] || die "$attention_bin: not an executable"
[ "$do_layer" = 0 ] || [ -x "$layer_bin" ] || die "$layer_bin: not an executable"
export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_PROC_BIND=${OMP_PROC_BIND:-spread} OMP_PLACES=${OMP_PLACES:-threads}
mkdir -p "$out"
log="$out/sweep.log"
skipped="$out/skipped.txt"
have_timeout=0
command -v timeout >/dev/null && have_timeout=1

split() { tr ',' ' ' <<<"$1"; }
runs=0
failed_runs=0

# run_lengths NAME BINARY ARGS...: one process per length, ascending; stops at the first length
# that fails (its JSON reports an error, the process fails, or it times out).
run_lengths() {
  local name=$1 binary=$2
  shift 2
  local n file status start seconds
  for n in $(split "$lengths"); do
    file="$out/${name}_n${n}.json"
    local cmd=("$binary" "$@" "--lengths=$n" "--benchmark_min_time=$min_time"
      "--benchmark_out=$file" "--benchmark_out_format=json")
    if [ "$dry_run" = 1 ]; then
      printf '%q ' "${cmd[@]}"
      printf '\n'
      continue
    fi
    printf '[sweep %s] %s n=%s\n' "$(date +%H:%M:%S)" "$name" "$n" >&2
    start=$(date +%s)
    if [ "$have_timeout" = 1 ]; then
      timeout "$timeout_s" "${cmd[@]}" >"$out/${name}_n${n}.log" 2>&1
    else
      "${cmd[@]}" >"$out/${name}_n${n}.log" 2>&1
    fi
    status=$?
    seconds=$(($(date +%s) - start))
    runs=$((runs + 1))
    printf '%s\tstatus=%s\t%ss\t%s\n' "$name n=$n" "$status" "$seconds" "${cmd[*]}" >>"$log"
    local reason=""
    if [ "$status" = 124 ]; then
      reason="timed out after ${timeout_s}s"
    elif [ "$status" != 0 ]; then
      reason="exit status $status (see ${name}_n${n}.log)"
    elif grep -q '"error_occurred": true' "$file" 2>/dev/null; then
      reason=$(grep -m1 '"error_message"' "$file" | sed 's/^ *"error_message": //' | cut -c1-200)
    fi
    if [ -n "$reason" ]; then
      failed_runs=$((failed_runs + 1))
      printf '%s n=%s: %s; longer lengths skipped\n' "$name" "$n" "$reason" | tee -a "$skipped" >&2
      return
    fi
  done
}

dtype_list=${dtypes:-default}
for schedule in $schedules; do
  segments=${schedule%%:*}
  dilations=${schedule##*:}
  tag="s${segments//,/-}_r${dilations//,/-}"
  for d in $(split "$dims"); do
    for dtype in $(split "$dtype_list"); do
      dtype_flag=()
      [ "$dtype" = default ] || dtype_flag=("--dtypes=$dtype")
      for semantics in $(split "$semantics_list"); do
        common=("--segments=$segments" "--dilations=$dilations" "--semantics=$semantics"
          "--batch=$batch" "--heads=$heads" "${dtype_flag[@]}")
        for pass in $(split "$passes"); do
          if [ "$do_attention" = 1 ]; then
            for algorithm in $(split "$algorithms"); do
              for causal in $(split "$causal_list"); do
                run_lengths "attention_${semantics}_${tag}_d${d}_${dtype}_${algorithm}_${causal}_${pass}" \
                  "$attention_bin" "${common[@]}" "--dim=$d" "--algorithms=$algorithm" \
                  "--causal=$causal" "--passes=$pass" "--sgemm_sizes="
              done
            done
          fi
          if [ "$do_layer" = 1 ]; then
            for algorithm in $(split "$algorithms"); do
              for causal in $(split "$causal_list"); do
                run_lengths "layer_${semantics}_${tag}_E$((heads * d))_${dtype}_${algorithm}_${causal}_${pass}" \
                  "$layer_bin" "${common[@]}" "--embed=$((heads * d))" "--policies=$algorithm" \
                  "--causal=$causal" "--passes=$pass"
              done
            done
          fi
        done
      done
    done
  done
done

if [ "$dry_run" = 0 ]; then
  printf 'sweep: %d runs, %d stopped a configuration early (%s); JSON in %s\n' "$runs" \
    "$failed_runs" "$skipped" "$out" >&2
fi
exit 0
