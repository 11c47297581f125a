#!/usr/bin/env bash
# In one run on one card (or, with DEVICE=cpu, on the same CPU cores): training steps of the
# language model with our library (dilated_train) and with the seed's model built in PyTorch
# around the peer's attention (scripts/peer_train_bench.py), for both block kinds and both
# policies, then one table.
#
# Usage: scripts/train_vs_peer.sh TRAIN_BIN CORPUS_DIR PEER_DIR OUT_DIR [EXTRA dilated_train args]
#   TRAIN_BIN   dilated_train built for CUDA (DEVICE=cpu: for the host, OpenMP)
#   CORPUS_DIR  train.bin / val.bin (scripts/prepare_corpus.sh)
#   PEER_DIR    the folder holding the peer's dilated_attention_pytorch/ (not ours: carried in)
# Environment: LENGTH (65536), STEPS (timed steps, 10), CHECKPOINTING (1: both sides checkpoint),
#   POLICIES ("improved original"), SHAPE ("LAYERS EMBED HEADS" of a custom model; unset: the
#   125M "small"), SEGMENTS / DILATIONS (comma lists; 2048,4096,8192,16384 / 1,2,4,8), DEVICE (cuda, or cpu: fp32 on both sides, our side with
#   OMP_NUM_THREADS threads and PyTorch given as many; peak memory then is each process's peak
#   resident set, both measured alike), PYTHON (python3: a Python that has torch).
set -euo pipefail
bin=$1 corpus=$2 peer=$3 out=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
length=${LENGTH:-65536}
steps=${STEPS:-10}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
dtype=half
segments=${SEGMENTS:-2048,4096,8192,16384}
dilations=${DILATIONS:-1,2,4,8}
model=(--model small)
shape=()
if [ -n "${SHAPE:-}" ]; then
  read -r layers embed heads <<<"$SHAPE"
  model=(--model custom --layers "$layers" --embed "$embed" --heads "$heads")
  shape=(--layers "$layers" --embed "$embed" --heads "$heads")
fi
wrap=()
if [ "$device" = cpu ]; then
  dtype=float
  # A bound first thread (OMP_PROC_BIND=spread/close/true) pins OpenBLAS's pthread pool to its
  # core: every product on one core (docs/training.md). Unbound unless the caller says otherwise.
  export OMP_PROC_BIND=${OMP_PROC_BIND:-false}
  source "$here/host_blas_env.sh"
  # Our process's peak resident set, measured as the peer script measures its own.
  wrap=("$python" -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
print("peak_rss_bytes", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.exit(rc)')
fi
ck=()
pk=()
if [ "${CHECKPOINTING:-0}" = 1 ]; then ck=(--checkpointing); pk=(--checkpointing); fi
mkdir -p "$out"
if [ "$device" = cpu ]; then
  lscpu >"$out/cpu.txt" 2>&1 || true
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true
fi
for block in standard custom; do
  for policy in ${POLICIES:-improved original}; do
    tag=$block-$policy${CHECKPOINTING:+-ck$CHECKPOINTING}
    # Ours: 3 untimed steps (dilated_train's mean leaves them out) + the timed ones.
    "${wrap[@]}" "$bin" --data "$corpus" "${model[@]}" --block "$block" --policy "$policy" --dtype "$dtype" \
      --length "$length" --segments "$segments" --dilations "$dilations" --steps $((steps + 3)) --warmup 1 --eval-every 0 --eval-batches 1 \
      "${ck[@]}" "$@" --log "$out/ours-$tag.json" >"$out/ours-$tag.log" 2>&1 ||
      echo "ours $tag failed: $(head -1 "$out/ours-$tag.log")"
    PYTHONUNBUFFERED=1 "$python" "$here/peer_train_bench.py" --peer "$peer" --block "$block" \
      --policy "$policy" --length "$length" --steps "$steps" --device "$device" "${shape[@]}" \
      --segments "$segments" --dilations "$dilations" "${pk[@]}" \
      --out "$out/peer-$tag.json" >"$out/peer-$tag.log" 2>&1 ||
      echo "peer $tag failed: $(tail -1 "$out/peer-$tag.log")"
  done
done
python3 - "$out" "$device" <<'PY'
import glob, json, os, re, sys
out, device = sys.argv[1], sys.argv[2]
rows = []
for path in sorted(glob.glob(f"{out}/ours-*.json")):
    tag = os.path.basename(path)[5:-5]
    ours = json.load(open(path))["summary"]
    peer_path = f"{out}/peer-{tag}.json"
    peer = json.load(open(peer_path)) if os.path.exists(peer_path) else {"error": "missing"}
    if device == "cpu":  # each process's peak resident set
        rss = re.findall(r"peak_rss_bytes (\d+)", open(f"{out}/ours-{tag}.log").read())
        ours_peak = int(rss[-1]) if rss else float("nan")
        peer_peak = peer.get("peak_rss_bytes")
    else:  # what each side allocated on the device
        ours_peak, peer_peak = ours["peak_bytes"], peer.get("peak_bytes")
    rows.append({"config": tag, "device": device, "ours_step_s": ours["step_seconds"],
                 "ours_peak_GiB": ours_peak / 2**30,
                 "peer_step_s": peer.get("step_seconds"),
                 "peer_peak_GiB": peer_peak / 2**30 if peer_peak else None,
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
