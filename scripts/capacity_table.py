#!/usr/bin/env python3
"""The capacity table (docs/performance.md) from dilated_capacity's JSON files.

Usage: scripts/capacity_table.py DIR [DIR...]
Prints two Markdown tables: the seed's layout (verified length, the seed's number, the ratio)
and one line per cell (predicted and verified length, step time, memory split)."""
import glob
import json
import sys

# The seed's table (batch 1, 80 GB): model -> config -> (Standalone Original, Standalone
# Improved, Multihead Original, Multihead Improved), in tokens.
SEED = {
    "small": {"baseline": (254e3, 287e3, 205e3, 229e3), "optimized": (483e3, 606e3, 336e3, 393e3)},
    "medium": {"baseline": (98e3, 98e3, 66e3, 82e3), "optimized": (197e3, 246e3, 131e3, 147e3)},
    "xl": {"baseline": (33e3, 33e3, 33e3, 33e3), "optimized": (98e3, 131e3, 66e3, 66e3)},
}
NAMES = {"small": "125M", "medium": "350M", "xl": "1.3B"}
VARIANTS = [("custom", "original"), ("custom", "improved"), ("standard", "original"),
            ("standard", "improved")]


def tokens(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def gib(b):
    return f"{b / 2**30:.1f}"


cells = {}
for d in sys.argv[1:]:
    for path in glob.glob(f"{d}/*.json"):
        with open(path) as f:
            r = json.load(f)
        config = "optimized" if r["checkpointing"] else "baseline"
        capped = r["limit_bytes"] <= 81e9
        cells[(r["model"], config, r["block"], r["policy"], capped)] = r

for capped in (True, False):
    rows = [k for k in cells if k[4] == capped]
    if not rows:
        continue
    print(f"\n{'Capped at 80 GB' if capped else 'Uncapped (the whole H200)'}: verified length "
          "(the seed's; ratio)\n")
    print("| model | config | Standalone Original | Standalone Improved | Multihead Original | "
          "Multihead Improved |")
    print("|---|---|---|---|---|---|")
    for model in ("small", "medium", "xl"):
        for config in ("baseline", "optimized"):
            line = []
            for i, (block, policy) in enumerate(VARIANTS):
                r = cells.get((model, config, block, policy, capped))
                seed = SEED[model][config][i]
                if r is None:
                    line.append("-")
                    continue
                v = r["verified"]
                line.append(f"**{tokens(v)}** ({tokens(seed)}; {v / seed:.1f}x)")
            if any(x != "-" for x in line):
                print(f"| {NAMES[model]} | {config} | " + " | ".join(line) + " |")
    print("\n| model | config | variant | predicted | verified | step (s) | peak GiB (tracked) | "
          "device GiB | weights + grads | optimizer + master | activations | workspace |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in ("small", "medium", "xl"):
        for config in ("baseline", "optimized"):
            for block, policy in VARIANTS:
                r = cells.get((model, config, block, policy, capped))
                if r is None:
                    continue
                at = r.get("at") or {}
                held = at.get("held", {})
                variant = ("Standalone " if block == "custom" else "Multihead ") + policy.title()
                ws = sum(held.get(k, 0) for k in ("workspace", "attention_workspace",
                                                  "loss_workspace"))
                print(f"| {NAMES[model]} | {config} | {variant} | {r['predicted']:,} | "
                      f"{r['verified']:,} | {at.get('step_seconds', float('nan')):.2f} | "
                      f"{gib(at.get('tracked_peak_bytes', 0))} | "
                      f"{gib(at.get('device_used_bytes', 0))} | "
                      f"{gib(held.get('weights', 0) + held.get('gradients', 0))} | "
                      f"{gib(held.get('optimizer', 0))} | {gib(held.get('activations', 0))} | "
                      f"{gib(ws)} |")
