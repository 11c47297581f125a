#!/usr/bin/env bash
# On a GPU machine: the seed's capacity table for one model size, cell by cell, with
# dilated_capacity (predicted from the memory plan, verified by real steps under the limit).
#
# Usage: scripts/capacity_table.sh CAPACITY_BIN MODEL OUT_DIR [EXTRA dilated_capacity args]
#   CAPACITY_BIN  dilated_capacity built for CUDA
#   MODEL         small / medium / xl
# Writes OUT_DIR/../capacity-MODEL[-LIMIT].tar.gz of all of it too.
# Environment: LIMIT (80GB: the seed's 80 GB card, enforced on the device; "none": the whole card),
#   CELLS ("baseline optimized"), BLOCKS ("custom standard"), POLICIES ("original improved").
# Writes OUT_DIR/<model>-<config>-<block>-<policy>.json and .log; scripts/capacity_table.py
# makes the table.
set -uo pipefail
bin=$1 model=$2 out=$3
shift 3
limit=${LIMIT:-80GB}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true
limit_args=()
[ "$limit" != none ] && limit_args=(--memory-limit "$limit")
for config in ${CELLS:-baseline optimized}; do
  extra=(--optimizer adamw)
  [ "$config" = optimized ] && extra=(--optimizer adamw8bit --checkpointing)
  for block in ${BLOCKS:-custom standard}; do
    for policy in ${POLICIES:-original improved}; do
      tag=$model-$config-$block-$policy${LIMIT:+-$limit}
      start=$(date +%s)
      timeout "${CELL_TIMEOUT:-240}" "$bin" --model "$model" --block "$block" --policy "$policy" --dtype half "${extra[@]}" \
        "${limit_args[@]}" --json "$out/$tag.json" "$@" >"$out/$tag.log" 2>&1
      echo "$tag: status $? in $(($(date +%s) - start)) s; $(grep -E '^(predicted|verified)' "$out/$tag.log" | tr '\n' ' ')"
    done
  done
done
# One archive of every cell (a device run returns a limited number of files).
tar -C "$out" -czf "$out/../capacity-$model${LIMIT:+-$limit}.tar.gz" . 2>/dev/null || true
