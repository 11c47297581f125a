#!/usr/bin/env bash
# On a GPU machine, in one run on one card: our multihead layers (dilated_bench_layer: both
# policies, forward and forward+backward, with the attention alone and the GEMMs alone timed in
# the same iterations) and the PyTorch peer's two multihead layers (scripts/peer_layer_bench.py),
# then one JSON holding both (layer_vs_peer.json) and a table of medians.
#
# Usage: scripts/layer_vs_peer.sh BIN_DIR PEER_DIR OUT_DIR [LENGTHS (default 16384,65536,131072)]
#   BIN_DIR   a folder with dilated_bench_layer (scripts/stage_device_binaries.sh packs one)
#   PEER_DIR  the folder holding the peer's dilated_attention_pytorch/ package (not ours: fetched
#             from DarcStar-Solutions-Tech/dilated-attention-pytorch and carried to the machine)
# Environment: REPS (our repetitions, default 5), PEER_REPEAT (peer's timed calls, default 10),
# EMBED (768), HEADS (12). Each of our runs is labelled with the buffers live at its memory peak.
set -euo pipefail
bin=$1
peer=$2
out=$3
lengths=${4:-16384,65536,131072}
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true

"$bin/dilated_bench_layer" --lengths="$lengths" --embed="${EMBED:-768}" --heads="${HEADS:-12}" \
  --benchmark_repetitions="${REPS:-5}" --benchmark_report_aggregates_only=true --memory_labels \
  --benchmark_out="$out/ours.json" --benchmark_out_format=json >"$out/ours.log" 2>&1 ||
  { tail -20 "$out/ours.log"; exit 1; }
PYTHONUNBUFFERED=1 python3 "$here/peer_layer_bench.py" --peer "$peer" --lengths="$lengths" \
  --embed="${EMBED:-768}" --heads="${HEADS:-12}" --repeat="${PEER_REPEAT:-10}" \
  --out "$out/peer.json" >"$out/peer.log" 2>&1 || { tail -20 "$out/peer.log"; exit 1; }

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
ours = json.load(open(f"{out}/ours.json"))
peer = json.load(open(f"{out}/peer.json"))
json.dump({"ours": ours, "peer": peer}, open(f"{out}/layer_vs_peer.json", "w"), indent=1)
rows = {}
for b in ours["benchmarks"]:
    if b.get("aggregate_name") != "median":
        continue
    parts = b["run_name"].split("/")  # layer/semantics/dtype/E:/h:/pass[/causal]/n:N/manual_time
    layer, pass_name = parts[0], parts[5]
    n = int(next(p for p in parts if p.startswith("n:"))[2:])
    unit = {"ms": 1, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b["time_unit"]]
    rows[(layer, pass_name, n)] = (b["real_time"] * unit, b["attention_ms"], b["gemm_ms"],
                                   b["extra_MiB"])
print(f"{'layer':36} {'pass':8} {'n':>7} {'ours ms':>9} {'attn ms':>8} {'gemm ms':>8} "
      f"{'extra MiB':>9} {'beyond/gemm':>11} {'peer ms':>9} {'peer MiB':>9} {'peer/ours':>9}")
for p in peer["benchmarks"]:
    key = (p["layer"], p["pass"], p["n"])
    o = rows.get(key)
    pm = p.get("median_ms")
    if o is None:
        continue
    ratio = f"{pm / o[0]:9.2f}" if pm else "      n/a"
    # beyond/gemm: the layer's time beyond its attention over the time of its GEMMs alone.
    beyond = (o[0] - o[1]) / o[2]
    print(f"{key[0]:36} {key[1]:8} {key[2]:7d} {o[0]:9.3f} {o[1]:8.3f} {o[2]:8.3f} {o[3]:9.0f} "
          f"{beyond:11.2f} {(pm or float('nan')):9.3f} {p.get('extra_MiB', float('nan')):9.0f} "
          f"{ratio}")
PY
