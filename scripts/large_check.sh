#!/usr/bin/env bash
# The 64-bit check of issue 20 on a GPU machine: attention on n x heads x head_dim > 2^31
# elements, (1, 4Mi, 12, 64) half by default (6.4 GB a tensor), through the dilated-attention
# tool, forward and backward, both algorithms, checked against runs on slices of whole largest
# segments. Attention in a segment reads only that segment's tokens (every branch's segments nest
# in the largest one, and slices start on its multiples), so the full run's rows of a slice must
# equal the slice run's: an index that wraps past 2^31 (or 2^32) elements reads or writes other
# rows and breaks that. Slices: the first and the last SLICE tokens, one that straddles element
# 2^31 and one wholly past it (when n x heads x head_dim > 2^31; else one in the middle).
#
# Tolerance: ULPS units in the last place of the written dtype (float16 for half), default 1.
# Identical kernels on identical data give bitwise-equal rows (the summary counts the elements
# that are not); one unit allows a kernel that splits a sum differently at another sequence
# length (float accumulation, one rounding to half) while a wrong index, which reads unrelated
# values, moves rows by many units. ULPS=0 asks for bitwise equality.
#
# Usage: scripts/large_check.sh TOOL WORK_DIR
#   TOOL      a CUDA build's dilated-attention (scripts/stage_device_binaries.sh packs one)
#   WORK_DIR  a folder on a disk with room: inputs 4 x n x heads x head_dim x 2 bytes, plus the
#             full backward's three gradients (the full forward's output is deleted first): 46 GB
#             at the default size; emptied at the end unless KEEP=1
# Environment: N (tokens, default 4194304; a multiple of SLICE), HEADS (12), DIM (64), DTYPE
# (half; float for a host build, whose half is float), SEGMENTS (2048,4096,8192), DILATIONS
# (1,2,4), SLICE (tokens per slice, default twice the largest segment), ALGORITHMS
# (original,improved), SEMANTICS (grouped), CAUSAL (0), ULPS (1), SEED (0), JOBS (generator
# processes, default nproc), BACKEND (default; host for a host build), PYTHON (python3, with
# numpy), KEEP (0). Prints one line per check and exits 1 on any mismatch or failed run.
set -euo pipefail
tool=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
n=${N:-4194304}
heads=${HEADS:-12}
dim=${DIM:-64}
dtype=${DTYPE:-half}
segments=${SEGMENTS:-2048,4096,8192}
dilations=${DILATIONS:-1,2,4}
largest=$(tr ',' '\n' <<<"$segments" | sort -n | tail -1)
slice=${SLICE:-$((2 * largest))}
algorithms=${ALGORITHMS:-original,improved}
semantics=${SEMANTICS:-grouped}
ulps=${ULPS:-1}
python=${PYTHON:-python3}
# Shared libraries the device machine lacks travel beside the binaries (stage_device_binaries.sh).
tool_dir=$(cd "$(dirname "$tool")" && pwd)
export LD_LIBRARY_PATH="$tool_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} OMP_PROC_BIND=${OMP_PROC_BIND:-false}

if ((slice % largest != 0 || n % slice != 0 || n < 2 * slice)); then
  echo "large_check: SLICE ($slice) must be a multiple of the largest segment ($largest) and N" \
    "($n) a multiple of SLICE, at least two of them" >&2
  exit 2
fi
# float16 output is exact for half storage; float32 for float (or bf16) storage.
case "$dtype" in half) out_dtype=float16 ;; *) out_dtype=float32 ;; esac
elements=$((n * heads * dim))
row=$((heads * dim))
mkdir -p "$work"
need=$((7 * elements * 2 + 16 * slice * row * 4))
free=$(df -P -B1 "$work" | awk 'NR == 2 { print $4 }')
echo "large_check: (1, $n, $heads, $dim) $dtype = $elements elements (2^31 = 2147483648), segments" \
  "$segments, dilations $dilations, $semantics$([ "${CAUSAL:-0}" = 1 ] && echo ", causal"); slices of" \
  "$slice tokens; disk needed ~$((need / 1000000000)) GB, free $((free / 1000000000)) GB in $work"
if ((free < need)); then
  echo "large_check: not enough free disk in $work" >&2
  exit 2
fi

start=$(date +%s)
"$python" "$here/large_check.py" generate "$work" "$n" "$heads" "$dim" "${SEED:-0}" "${JOBS:-$(nproc)}"
echo "large_check: inputs written in $(($(date +%s) - start)) s"

# Slices (tag:first token): first, last, and around element 2^31 (aligned down to the slice
# length: the slice holding element 2^31, then the next one, wholly past it).
two31=2147483648
slices=("first:0" "last:$((n - slice))")
if ((elements > two31)); then
  around=$((two31 / row / slice * slice))
  slices+=("straddles_2^31:$around")
  ((around + 2 * slice <= n)) && slices+=("past_2^31:$((around + slice))")
else
  slices+=("middle:$((n / 2 / slice * slice))")
fi
for entry in "${slices[@]}"; do
  "$python" "$here/large_check.py" slice "$work" "${entry#*:}" "$slice" "${entry%%:*}"
done

common=(--segments "$segments" --dilations "$dilations" --semantics "$semantics" --dtype "$dtype"
  --out-dtype "$out_dtype" --backend "${BACKEND:-default}" --format json)
[ "${CAUSAL:-0}" = 1 ] && common+=(--causal)
summary=()
failed=0
# run LABEL ARGS...: the tool, its JSON report and stderr kept (WORK_DIR/log_*); a summary line
# with its time.
run() {
  local label=$1 log begin ms
  shift
  log="$work/log_${label// /_}"
  begin=$(date +%s%N)
  if "$tool" run "$@" "${common[@]}" >"$log.json" 2>"$log.err"; then
    ms=$(sed -n 's/^ *"mean": \([0-9.]*\).*/\1/p' "$log.json" | head -1)
    summary+=("$(printf '%-44s ok: %.1f ms on the device, %d s with its files' "$label" "$ms" \
      $((($(date +%s%N) - begin) / 1000000000)))")
  else
    summary+=("$(printf '%-44s FAILED: %s' "$label" "$(tail -1 "$log.err")")")
    failed=1
    return 1
  fi
}
# check NAME FULL_FILE ALGORITHM: the full run's rows of every slice against the slice runs'.
check() {
  local name=$1 full=$2 algorithm=$3 entry tag first line
  for entry in "${slices[@]}"; do
    tag=${entry%%:*} first=${entry#*:}
    if line=$("$python" "$here/large_check.py" compare "$full" "$work/${algorithm}_${tag}_$name.npy" \
      "$first" "$ulps" "$(printf '%-8s %-4s %-15s tokens %d+%d (element %d)' "$algorithm" "$name" \
        "$tag" "$first" "$slice" $((first * row)))"); then :; else failed=1; fi
    summary+=("$line")
  done
}

for algorithm in ${algorithms//,/ }; do
  for entry in "${slices[@]}"; do
    tag=${entry%%:*}
    run "$algorithm $tag slice forward+backward" --algorithm "$algorithm" \
      --q "$work/q_$tag.npy" --k "$work/k_$tag.npy" --v "$work/v_$tag.npy" \
      --dout "$work/dout_$tag.npy" --out "$work/${algorithm}_${tag}_out.npy" \
      --dq "$work/${algorithm}_${tag}_dq.npy" --dk "$work/${algorithm}_${tag}_dk.npy" \
      --dv "$work/${algorithm}_${tag}_dv.npy" || true
  done
  # The full forward, then the full backward (without --out: its three gradients and the inputs
  # are what the disk holds at the peak).
  if run "$algorithm full forward" --algorithm "$algorithm" --q "$work/q.npy" --k "$work/k.npy" \
    --v "$work/v.npy" --out "$work/full_out.npy"; then
    check out "$work/full_out.npy" "$algorithm"
  fi
  rm -f "$work/full_out.npy"
  if run "$algorithm full forward+backward" --algorithm "$algorithm" --q "$work/q.npy" \
    --k "$work/k.npy" --v "$work/v.npy" --dout "$work/dout.npy" --dq "$work/full_dq.npy" \
    --dk "$work/full_dk.npy" --dv "$work/full_dv.npy"; then
    for name in dq dk dv; do
      check "$name" "$work/full_$name.npy" "$algorithm"
    done
  fi
  rm -f "$work"/full_d?.npy
done

[ "${KEEP:-0}" = 1 ] || rm -f "$work"/*.npy
echo
echo "large_check summary ($(($(date +%s) - start)) s; tolerance $ulps ulp of $out_dtype):"
printf '%s\n' "${summary[@]}"
if ((failed)); then
  echo "large_check: FAILED"
  exit 1
fi
echo "large_check: all passed"
