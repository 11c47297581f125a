#!/usr/bin/env bash
# On a GPU machine, in one run on one card: training steps of the language model with our
# library (dilated_train) and with the seed's model built in PyTorch around the peer's attention
# (scripts/peer_train_bench.py), for both block kinds and both policies, then one table.
#
# Usage: scripts/train_vs_peer.sh TRAIN_BIN CORPUS_DIR PEER_DIR OUT_DIR [EXTRA dilated_train args]
#   TRAIN_BIN   dilated_train built for CUDA
#   CORPUS_DIR  train.bin / val.bin (scripts/prepare_corpus.sh)
#   PEER_DIR    the folder holding the peer's dilated_attention_pytorch/ (not ours: carried in)
# Environment: LENGTH (65536), STEPS (timed steps, 10), CHECKPOINTING (1: both sides checkpoint).
set -euo pipefail
bin=$1 corpus=$2 peer=$3 out=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
length=${LENGTH:-65536}
steps=${STEPS:-10}
ck=()
pk=()
if [ "${CHECKPOINTING:-0}" = 1 ]; then ck=(--checkpointing); pk=(--checkpointing); fi
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true
for block in standard custom; do
  for policy in improved original; do
    tag=$block-$policy${CHECKPOINTING:+-ck$CHECKPOINTING}
    # Ours: 3 untimed steps (dilated_train's mean leaves them out) + the timed ones.
    "$bin" --data "$corpus" --model small --block "$block" --policy "$policy" --dtype half \
      --length "$length" --steps $((steps + 3)) --warmup 1 --eval-every 0 --eval-batches 1 \
      "${ck[@]}" "$@" --log "$out/ours-$tag.json" >"$out/ours-$tag.log" 2>&1 ||
      echo "ours $tag failed: $(tail -1 "$out/ours-$tag.log")"
    PYTHONUNBUFFERED=1 python3 "$here/peer_train_bench.py" --peer "$peer" --block "$block" \
      --policy "$policy" --length "$length" --steps "$steps" "${pk[@]}" \
      --out "$out/peer-$tag.json" >"$out/peer-$tag.log" 2>&1 ||
      echo "peer $tag failed: $(tail -1 "$out/peer-$tag.log")"
  done
done
python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(f"{out}/ours-*.json")):
    tag = os.path.basename(path)[5:-5]
    ours = json.load(open(path))["summary"]
    peer_path = f"{out}/peer-{tag}.json"
    peer = json.load(open(peer_path)) if os.path.exists(peer_path) else {"error": "missing"}
    rows.append({"config": tag, "ours_step_s": ours["step_seconds"],
                 "ours_peak_GiB": ours["peak_bytes"] / 2**30,
                 "peer_step_s": peer.get("step_seconds"),
                 "peer_peak_GiB": peer["peak_bytes"] / 2**30 if "peak_bytes" in peer else None,
                 "peer_error": peer.get("error")})
json.dump(rows, open(f"{out}/train_vs_peer.json", "w"), indent=1)
print("| config | ours s/step | ours peak GiB | peer s/step | peer peak GiB | speed-up |")
print("|---|---|---|---|---|---|")
for r in rows:
    if r["peer_step_s"]:
        print(f"| {r['config']} | {r['ours_step_s']:.4f} | {r['ours_peak_GiB']:.2f} | "
              f"{r['peer_step_s']:.4f} | {r['peer_peak_GiB']:.2f} | "
              f"{r['peer_step_s'] / r['ours_step_s']:.2f}x |")
    else:
        print(f"| {r['config']} | {r['ours_step_s']:.4f} | {r['ours_peak_GiB']:.2f} | "
              f"{r['peer_error']} | | |")
PY
