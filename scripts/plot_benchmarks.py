#!/usr/bin/env python3
"""Turns benchmark JSON (Google Benchmark format, from dilated_bench_attention, dilated_bench_layer
or scripts/sweep.sh) into PNG figures: time and peak extra memory versus sequence length, per
variant and backend, and throughput (TFLOP/s, with any OpenBLAS sgemm baseline in the same files
as a dashed line).

  python3 scripts/plot_benchmarks.py docs/benchmarks/h100-fp16-original-vs-improved.json \\
      --out docs/figures
  python3 scripts/plot_benchmarks.py sweep-h100/ --out figures --prefix h100-sweep

Inputs are .json files or folders of them. Per benchmark it uses the median aggregate when the
run had repetitions, else the mean of the iterations; benchmarks that reported an error (e.g.
out of memory) are left out. Figures are grouped by kind (attention or layer), semantics and
configuration (head dim or embed dim, segments and dilations when the JSON context names them);
one panel per pass (forward, forward+backward), one line per variant, backend, dtype and causal.
Writes <prefix>-<kind>-<semantics>[-<config>]-{time,memory,throughput}.png and prints their
paths. Needs matplotlib (Debian: python3-matplotlib); when the python3 that runs it has none,
it re-runs itself under /usr/bin/python3.
"""
import argparse
import collections
import json
import os
import re
import statistics
import sys

import plot_common

SEED_NAMES = {
    "Original": "DilatedAttention",
    "Original-team": "DilatedAttention (team kernel)",
    "Improved": "ImprovedDilatedAttention",
    "MultiheadDilatedAttention": "MultiheadDilatedAttention",
    "ImprovedMultiheadDilatedAttention": "ImprovedMultiheadDilatedAttention",
}
TIME_UNITS_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
PASSES = [("fwd", "forward"), ("fwd_bwd", "forward + backward")]


def import_pyplot():
    return plot_common.import_pyplot("plot_benchmarks")


def json_files(paths):
    for path in paths:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.endswith(".json"):
                    yield os.path.join(path, name)
        elif os.path.exists(path):
            yield path
        else:
            sys.exit(f"plot_benchmarks: {path}: no such file or folder")


def parse_name(run_name):
    """Benchmark name -> dict: kind, variant, semantics, dtype, pass, causal, n, E, h."""
    parts = run_name.split("/")
    prefix = parts[0]
    if prefix.startswith("OpenBLAS"):
        size = next((p.split(":")[1] for p in parts if p.startswith("M=N=K:")), None)
        return {"kind": "sgemm", "variant": prefix, "dtype": parts[1] if len(parts) > 1 else "",
                "size": int(size) if size else None}
    fields = {"kind": "layer" if "Multihead" in prefix else "attention",
              "variant": SEED_NAMES.get(prefix, prefix), "semantics": parts[1],
              "dtype": parts[2], "pass": "fwd_bwd" if "fwd_bwd" in parts else "fwd",
              "causal": "causal" in parts}
    for part in parts[3:]:
        if ":" in part:
            key, value = part.split(":", 1)
            fields[key] = value
    return fields


def load(paths):
    """Records (one per benchmark) from every file."""
    records = []
    for path in json_files(paths):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            print(f"plot_benchmarks: skipping {path}: {e}", file=sys.stderr)
            continue
        if not isinstance(data, dict) or "benchmarks" not in data:
            print(f"plot_benchmarks: skipping {path}: not Google Benchmark JSON", file=sys.stderr)
            continue
        context = data.get("context", {})
        iterations = collections.defaultdict(list)
        medians = {}
        for b in data["benchmarks"]:
            if b.get("error_occurred"):
                continue
            name = re.sub(r"/(manual_time|real_time).*$", "", b.get("run_name", b["name"]))
            if b.get("run_type") == "aggregate":
                if b.get("aggregate_name") == "median":
                    medians[name] = b
            else:
                iterations[name].append(b)
        for name in list(iterations) + [m for m in medians if m not in iterations]:
            chosen = [medians[name]] if name in medians else iterations[name]
            fields = parse_name(name)
            scale = TIME_UNITS_TO_MS.get(chosen[0].get("time_unit", "ns"), 1e-6)

            def mean(key):
                values = [b[key] for b in chosen if key in b]
                return statistics.mean(values) if values else None

            record = dict(fields)
            record.update({
                "name": name, "file": path,
                "backend": context.get("execution_space", "?"),
                "date": context.get("date", "")[:10],
                "time_ms": mean("real_time") * scale,
                "extra_MiB": mean("extra_MiB"), "tflops": mean("TFLOP_per_s"),
                "tokens_per_s": mean("tokens_per_s"),
                "config": config_label(fields, context),
            })
            n = mean("n")
            if "n" in fields:
                record["n"] = int(fields["n"])
            elif n is not None:
                record["n"] = int(n)
            records.append(record)
    return records


def config_label(fields, context):
    """What fixes the configuration besides n: head dim or E/h, and the schedule when known."""
    parts = []
    if fields.get("kind") == "layer":
        if "E" in fields:
            parts.append(f"E{fields['E']}")
        if "h" in fields:
            parts.append(f"h{fields['h']}")
    elif "head_dim" in context:
        parts.append(f"d{context['head_dim']}")
    if "segment_lengths" in context:
        parts.append("s" + context["segment_lengths"].replace(",", "-"))
        parts.append("r" + context.get("dilation_rates", "").replace(",", "-"))
    return "_".join(parts)


def line_label(r, backends):
    label = r["variant"]
    extras = []
    if len(backends) > 1:
        extras.append(r["backend"])
    extras.append(r["dtype"])
    if r.get("causal"):
        extras.append("causal")
    return f"{label} ({', '.join(extras)})"


def plot_group(plt, records, sgemm, title, path_stem, written):
    backends = sorted({r["backend"] for r in records})
    passes = [p for p in PASSES if any(r["pass"] == p[0] for r in records)]
    dates = sorted({r["date"] for r in records if r["date"]})
    subtitle = f"{title}; backend {', '.join(backends)}; measured {', '.join(dates)}"
    lines = collections.defaultdict(list)
    for r in records:
        if "n" in r:
            lines[(line_label(r, backends), r["pass"])].append(r)
    labels = sorted({key[0] for key in lines})
    # One colour per variant, backend and dtype; causal runs dashed in the same colour.
    families = sorted({label.replace(", causal)", ")") for label in labels})
    colors = {label: f"C{families.index(label.replace(', causal)', ')')) % 10}"
              for label in labels}

    def figure(metric, ylabel, yscale, name):
        have = [r for r in records if r.get(metric) is not None and "n" in r]
        if not have:
            return
        fig, axes = plt.subplots(1, len(passes), figsize=(6.2 * len(passes), 4.6), squeeze=False)
        for ax, (pass_key, pass_title) in zip(axes[0], passes):
            for label in labels:
                points = sorted((r["n"], r[metric]) for r in lines.get((label, pass_key), [])
                                if r.get(metric) is not None)
                if not points:
                    continue
                style = "--" if "causal" in label else "-"
                ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o",
                        color=colors[label], label=label)
            if metric == "tflops":
                for i, s in enumerate(sorted(sgemm, key=lambda s: s["size"] or 0)):
                    if s.get("tflops") is not None:
                        ax.axhline(s["tflops"], color="gray", linestyle=":", linewidth=1.2)
                        ax.annotate(f"OpenBLAS sgemm {s['size']}^3: {s['tflops']:.3f}",
                                    (0.01, s["tflops"]), xycoords=("axes fraction", "data"),
                                    fontsize=7, color="gray", va="bottom")
            ax.set_xscale("log", base=2)
            if yscale == "symlog":  # memory: 0 MiB (nothing allocated) must show
                ax.set_yscale("symlog", linthresh=1.0)
                ax.set_ylim(bottom=0)
            else:
                ax.set_yscale(yscale)
            if yscale == "linear":
                ax.set_ylim(bottom=0)
            ax.set_xlabel("sequence length n")
            ax.set_ylabel(ylabel)
            ax.set_title(pass_title)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.suptitle(subtitle, fontsize=9)
        fig.tight_layout()
        out = f"{path_stem}-{name}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)

    figure("time_ms", "time per call (ms)", "log", "time")
    figure("extra_MiB", "peak extra device memory (MiB)", "symlog", "memory")
    figure("tflops", "useful TFLOP/s", "linear", "throughput")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="benchmark .json files or folders of them")
    parser.add_argument("--out", default=".", help="folder for the PNG files (default: .)")
    parser.add_argument("--prefix", help="file name prefix (default: the input file's name, or "
                        "'benchmarks' for several inputs)")
    args = parser.parse_args()
    records = load(args.inputs)
    if not records:
        sys.exit("plot_benchmarks: no benchmark results in the inputs")
    plt = import_pyplot()
    if args.prefix:
        prefix = args.prefix
    elif len(args.inputs) == 1 and os.path.isfile(args.inputs[0]):
        prefix = os.path.splitext(os.path.basename(args.inputs[0]))[0]
    else:
        prefix = "benchmarks"
    os.makedirs(args.out, exist_ok=True)
    sgemm = [r for r in records if r["kind"] == "sgemm"]
    groups = collections.defaultdict(list)
    for r in records:
        if r["kind"] != "sgemm":
            groups[(r["kind"], r["semantics"], r["config"])].append(r)
    several_configs = len({key[2] for key in groups}) > 1
    written = []
    for (kind, semantics, config), group in sorted(groups.items()):
        stem = f"{prefix}-{kind}-{semantics}" + (f"-{config}" if several_configs and config else "")
        title = f"{kind}, {semantics} semantics" + (f", {config}" if config else "")
        plot_group(plt, group, sgemm, title, os.path.join(args.out, stem), written)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
