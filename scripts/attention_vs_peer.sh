#!/usr/bin/env bash
# On a GPU machine, in one run on one card: our attention (dilated_bench_attention: Improved and
# Original, forward and forward+backward, full and causal, half storage) and the PyTorch peer's
# DilatedAttention and ImprovedDilatedAttention beside a dense bound (SDPA on the same dilated
# work pre-gathered into contiguous chunks; scripts/peer_attention_bench.py), then one JSON
# holding both (attention_vs_peer.json) and a table of medians.
#
# Usage: scripts/attention_vs_peer.sh BIN_DIR PEER_DIR OUT_DIR [LENGTHS]
#   BIN_DIR   a folder with dilated_bench_attention (scripts/stage_device_binaries.sh packs one)
#   PEER_DIR  the folder holding the peer's dilated_attention_pytorch/ package (not ours: fetched
#             from DarcStar-Solutions-Tech/dilated-attention-pytorch and carried to the machine)
#   LENGTHS   comma-separated sequence lengths (default 16384,65536,262144,1048576)
# Environment: HEADS (12), DIM (head dimension, 64), REPS (our repetitions, default 5),
# PEER_REPEAT (peer's timed calls, default 10), CAUSAL (both, false or true), DTYPE (fp16).
set -euo pipefail
bin=$1
peer=$2
out=$3
lengths=${4:-16384,65536,262144,1048576}
here=$(cd "$(dirname "$0")" && pwd)
causal=${CAUSAL:-both}
case "$causal" in
  both) masks=full,causal ;;
  false) masks=full ;;
  true) masks=causal ;;
  *) echo "CAUSAL must be both, false or true (not '$causal')" >&2; exit 2 ;;
esac
export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true

"$bin/dilated_bench_attention" --lengths="$lengths" --heads="${HEADS:-12}" --dim="${DIM:-64}" \
  --algorithms=improved,original --dtypes="${DTYPE:-fp16}" --causal="$masks" --passes=fwd,fwd_bwd \
  --benchmark_repetitions="${REPS:-5}" --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/ours.json" --benchmark_out_format=json >"$out/ours.log" 2>&1 ||
  { tail -20 "$out/ours.log"; exit 1; }
PYTHONUNBUFFERED=1 python3 "$here/peer_attention_bench.py" --peer "$peer" --lengths="$lengths" \
  --heads="${HEADS:-12}" --dim="${DIM:-64}" --causal="$causal" --dtype="${DTYPE:-fp16}" \
  --repeat="${PEER_REPEAT:-10}" --out "$out/peer.json" >"$out/peer.log" 2>&1 ||
  { tail -20 "$out/peer.log"; exit 1; }

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
ours = json.load(open(f"{out}/ours.json"))
peer = json.load(open(f"{out}/peer.json"))
json.dump({"ours": ours, "peer": peer}, open(f"{out}/attention_vs_peer.json", "w"), indent=1)
# (implementation, n, mask, pass) -> (median ms, TFLOP/s) or "err"
rows, medians = {}, set()
for b in ours["benchmarks"]:
    parts = b["run_name"].split("/")  # Algorithm/semantics/dtype/pass/mask/n:N/manual_time
    if len(parts) < 6 or not parts[0].startswith(("Improved", "Original")):
        continue
    algo = "Improved" if parts[0] == "Improved" else "Original"  # Original or Original-team
    n = int(next(p for p in parts if p.startswith("n:"))[2:])
    key = (f"ours {algo}", n, parts[4], parts[3])
    if b.get("error_occurred"):
        rows.setdefault(key, "err")
        continue
    # Medians; a single repetition reports its one run, not aggregates.
    if b.get("aggregate_name") == "median" or (b.get("run_type") == "iteration"
                                               and key not in medians):
        ms = b["real_time"] * {"ms": 1, "us": 1e-3, "ns": 1e-6, "s": 1e3}[b["time_unit"]]
        rows[key] = (ms, b["useful_GFLOP"] / ms)  # GFLOP per ms = TFLOP/s
        if b.get("aggregate_name") == "median":
            medians.add(key)
names = {"DilatedAttention": "peer Original", "ImprovedDilatedAttention": "peer Improved",
         "dense_bound": "dense bound"}
for p in peer["benchmarks"]:
    key = (names[p["impl"]], p["n"], p["mask"], p["pass"])
    rows[key] = (p["median_ms"], p["TFLOP_per_s"]) if "median_ms" in p else "err"
columns = ["ours Improved", "ours Original", "peer Original", "peer Improved", "dense bound"]
print(f"{'n':>8} {'causal':6} {'pass':8} " + " ".join(f"{c + ' ms':>17}" for c in columns)
      + f" {'Improved TFLOP/s':>16}")
configs = sorted({k[1:] for k in rows},
                 key=lambda c: (c[0], c[1] != "full", c[2] != "fwd"))
for n, mask, pass_name in configs:
    cells = []
    for c in columns:
        v = rows.get((c, n, mask, pass_name))
        cells.append(f"{'n/a' if v is None else v if v == 'err' else f'{v[0]:.3f}':>17}")
    v = rows.get(("ours Improved", n, mask, pass_name))
    tf = "n/a" if v is None else v if v == "err" else f"{v[1]:.2f}"
    print(f"{n:8d} {str(mask == 'causal').lower():6} {pass_name:8} " + " ".join(cells)
          + f" {tf:>16}")
errors = [f"  {p['name']}: {p['error']}" for p in peer["benchmarks"] if "error" in p]
errors += [f"  {b['name']}: {b.get('error_message', '')}" for b in ours["benchmarks"]
           if b.get("error_occurred")]
if errors:
    print("errors:\n" + "\n".join(errors))
# The peer's forward outputs against the dense bound's attention scattered back (fp16: ~1e-3).
checks = {}
for p in peer["benchmarks"]:
    if "max_abs_diff_vs_dense" in p:
        checks[p["impl"]] = max(checks.get(p["impl"], 0.0), p["max_abs_diff_vs_dense"])
    elif "check_error" in p:
        print(f"  check {p['name']}: {p['check_error']}")
for impl, diff in checks.items():
    print(f"{impl} forward vs dense bound: max abs difference {diff:.3g}"
          + ("  (NOT the same attention)" if diff > 0.05 else ""))
PY
