#!/usr/bin/env bash
# On a GPU machine, in one run on one card: our attention (dilated_bench_attention: Improved and
# Original, forward and forward+backward, full and causal, half storage) and the PyTorch peer's
# DilatedAttention and ImprovedDilatedAttention beside a dense bound (SDPA on the same dilated
# work pre-gathered into contiguous chunks; scripts/peer_attention_bench.py), then one JSON
# holding both (attention_vs_peer.json) and a table of medians.
# With DEVICE=cpu, on the same CPU cores in one run: ours on the host backend (fp32, OpenMP with
# THREADS threads, left unbound: a bound first thread would pin the pthread OpenBLAS pool to
# one core) with OpenBLAS sgemm 2048^3 timed by the same binary, then the peer's DilatedAttention
# on PyTorch's CPU backend with as many threads; the JSON gains a "summary" (medians, GFLOP/s,
# the ratios to the peer and to sgemm) and the machine (lscpu).
#
# Usage: scripts/attention_vs_peer.sh BIN_DIR PEER_DIR OUT_DIR [LENGTHS]
#   BIN_DIR   a folder with dilated_bench_attention (scripts/stage_device_binaries.sh packs one)
#   PEER_DIR  the folder holding the peer's dilated_attention_pytorch/ package (not ours: fetched
#             from DarcStar-Solutions-Tech/dilated-attention-pytorch and carried to the machine)
#   LENGTHS   comma-separated sequence lengths (default 16384,65536,262144,1048576; cpu:
#             16384,65536)
# Environment: HEADS (12), DIM (head dimension, 64), REPS (our repetitions, default 5; cpu 3),
# PEER_REPEAT (peer's timed calls, default 10; cpu 3), CAUSAL (both, false or true; cpu
# default false), DTYPE (fp16; cpu fp32), DEVICE (cuda or cpu), THREADS (cpu: threads of
# both sides, default nproc), SGEMM_SIZES (cpu: 2048), PYTHON (the Python with torch; cpu
# default /usr/bin/python3, Debian's python3-torch), PEER_WARMUP (cpu: the peer's untimed calls
# before its timed ones, default 1; ours always make one). OPENBLAS_CORETYPE passes through to our
# side (its openblas_core is in the JSON's context).
set -euo pipefail
bin=$1
peer=$2
out=$3
device=${DEVICE:-cuda}
here=$(cd "$(dirname "$0")" && pwd)
if [ "$device" = cpu ]; then
  lengths=${4:-16384,65536}
  causal=${CAUSAL:-false}
  dtype=${DTYPE:-fp32}
  reps=${REPS:-3}
  peer_repeat=${PEER_REPEAT:-3}
  python=${PYTHON:-/usr/bin/python3}
  threads=${THREADS:-$(nproc)}
  export OMP_NUM_THREADS=$threads
  export OMP_PROC_BIND=${OMP_PROC_BIND:-false}
  ours_device=(--backend=host --sgemm_sizes="${SGEMM_SIZES:-2048}")
  peer_device=(--device cpu --threads "$threads" --warmup "${PEER_WARMUP:-1}")
elif [ "$device" = cuda ]; then
  lengths=${4:-16384,65536,262144,1048576}
  causal=${CAUSAL:-both}
  dtype=${DTYPE:-fp16}
  reps=${REPS:-5}
  peer_repeat=${PEER_REPEAT:-10}
  python=${PYTHON:-python3}
  ours_device=()
  peer_device=()
else
  echo "DEVICE must be cuda or cpu (not '$device')" >&2
  exit 2
fi
case "$causal" in
  both) masks=full,causal ;;
  false) masks=full ;;
  true) masks=causal ;;
  *) echo "CAUSAL must be both, false or true (not '$causal')" >&2; exit 2 ;;
esac
export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out"
if [ "$device" = cpu ]; then
  lscpu >"$out/machine.txt" 2>&1 || true
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true
fi
date -u +%Y-%m-%dT%H:%M:%SZ >"$out/started.txt"

"$bin/dilated_bench_attention" --lengths="$lengths" --heads="${HEADS:-12}" --dim="${DIM:-64}" \
  --algorithms=improved,original --dtypes="$dtype" --causal="$masks" --passes=fwd,fwd_bwd \
  "${ours_device[@]}" --benchmark_repetitions="$reps" --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/ours.json" --benchmark_out_format=json >"$out/ours.log" 2>&1 ||
  { tail -20 "$out/ours.log"; exit 1; }
PYTHONUNBUFFERED=1 "$python" "$here/peer_attention_bench.py" --peer "$peer" --lengths="$lengths" \
  --heads="${HEADS:-12}" --dim="${DIM:-64}" --causal="$causal" --dtype="$dtype" \
  "${peer_device[@]}" --repeat="$peer_repeat" --out "$out/peer.json" >"$out/peer.log" 2>&1 ||
  { tail -20 "$out/peer.log"; exit 1; }
date -u +%Y-%m-%dT%H:%M:%SZ >"$out/finished.txt"

python3 - "$out" "$device" <<'PY'
import json, os, sys
out, device = sys.argv[1], sys.argv[2]
ours = json.load(open(f"{out}/ours.json"))
peer = json.load(open(f"{out}/peer.json"))
combined = {"ours": ours, "peer": peer}
for name in ("started", "finished"):
    if os.path.exists(f"{out}/{name}.txt"):
        combined[name] = open(f"{out}/{name}.txt").read().strip()
if device == "cpu":
    combined["machine"] = open(f"{out}/machine.txt").read().splitlines()
    combined["environment"] = {k: os.environ.get(k) for k in (
        "OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "OPENBLAS_CORETYPE",
        "OPENBLAS_NUM_THREADS")}
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
sgemm = [b for b in ours["benchmarks"] if b["run_name"].startswith("OpenBLAS_sgemm")
         and (b.get("aggregate_name") == "median" or b.get("run_type") == "iteration")]
sgemm_rate = sgemm[-1]["GFLOP_per_s"] if sgemm else None  # the largest size (run last)
if device == "cpu":
    # The proof's numbers in one place: medians, GFLOP/s, ours against the peer and sgemm.
    summary = {"sgemm_GFLOP_per_s": sgemm_rate,
               "sgemm_size": sgemm[-1]["n"] if sgemm else None,
               "openblas_core": ours["context"].get("openblas_core"), "rows": []}
    for (impl, n, mask, pass_name), v in sorted(rows.items(), key=lambda x: (x[0][1], x[0][0])):
        if impl.startswith("ours") and v != "err":
            p = rows.get(("peer Original", n, mask, pass_name))
            summary["rows"].append({
                "impl": impl, "n": n, "mask": mask, "pass": pass_name, "median_ms": v[0],
                "GFLOP_per_s": v[1] * 1e3,
                "of_sgemm": v[1] * 1e3 / sgemm_rate if sgemm_rate else None,
                "peer_Original_ms": p[0] if p and p != "err" else None,
                "peer_over_ours": p[0] / v[0] if p and p != "err" else None})
    combined["summary"] = summary
json.dump(combined, open(f"{out}/attention_vs_peer.json", "w"), indent=1)
columns = ["ours Improved", "ours Original", "peer Original", "peer Improved", "dense bound"]
columns = [c for c in columns if any(k[0] == c for k in rows)]
print(f"{'n':>8} {'causal':6} {'pass':8} " + " ".join(f"{c + ' ms':>17}" for c in columns)
      + f" {'Improved TFLOP/s':>16} {'Original TFLOP/s':>16}")
configs = sorted({k[1:] for k in rows},
                 key=lambda c: (c[0], c[1] != "full", c[2] != "fwd"))
for n, mask, pass_name in configs:
    cells = []
    for c in columns:
        v = rows.get((c, n, mask, pass_name))
        cells.append(f"{'n/a' if v is None else v if v == 'err' else f'{v[0]:.3f}':>17}")
    rates = []
    for algo in ("ours Improved", "ours Original"):
        v = rows.get((algo, n, mask, pass_name))
        rates.append("n/a" if v is None else v if v == "err" else f"{v[1]:.4f}")
    print(f"{n:8d} {str(mask == 'causal').lower():6} {pass_name:8} " + " ".join(cells)
          + f" {rates[0]:>16} {rates[1]:>16}")
if sgemm_rate:
    print(f"OpenBLAS sgemm {sgemm[-1]['n']:.0f}^3: {sgemm_rate:.1f} GFLOP/s "
          f"(core {ours['context'].get('openblas_core')})")
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
