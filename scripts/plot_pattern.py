#!/usr/bin/env python3
"""Draws which positions each head of dilated attention sees, from the text that
examples/dilated_pattern prints (the library's own geometry, dilated::Geometry):

  top:    for every branch (segment length s, dilation r) and head, the positions the head keeps,
          coloured by segment (white: skipped);
  bottom: for every head, the query x key mask it attends with: how many branches pair query p
          with key q (both kept by the head in the same segment of that branch), which is the
          multiplicity dilated::reference weights the softmax with (non-causal; causal keeps the
          lower triangle).

  python3 scripts/plot_pattern.py build/tests/examples/dilated_pattern docs/figures/pattern \\
      --segments 8,16,32 --dilations 1,2,4 --heads 4 --length 32
writes docs/figures/pattern-longnet.png and docs/figures/pattern-grouped.png. Needs matplotlib
(Debian: python3-matplotlib); re-runs itself under /usr/bin/python3 when this python3 has none.
"""
import argparse
import os
import re
import subprocess
import sys

import plot_common

LINE = re.compile(r"branch (\d+) \(s=(\d+), r=(\d+)\) head (\d+)(?: offset (\d+))?: (.*)$")


def import_pyplot():
    return plot_common.import_pyplot("plot_pattern")


def pattern(tool, semantics, args):
    """[(branch, s, r, head, offset or None, row string)] from dilated_pattern."""
    command = [tool, "--semantics", semantics, "--segments", args.segments, "--dilations",
               args.dilations, "--heads", str(args.heads), "--length", str(args.length)]
    text = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            branch, s, r, head = (int(m.group(i)) for i in range(1, 5))
            offset = int(m.group(5)) if m.group(5) is not None else None
            row = m.group(6) if offset is not None else ""
            rows.append((branch, s, r, head, offset, row))
    if not rows:
        sys.exit(f"plot_pattern: no pattern lines in the output of {' '.join(command)}")
    return rows


def draw(plt, rows, semantics, args, path):
    n, heads = args.length, args.heads
    kept_rows = [r for r in rows if r[4] is not None]
    fig = plt.figure(figsize=(max(8.0, 0.28 * n + 2), 3.2 + 0.32 * len(kept_rows)))
    grid = fig.add_gridspec(2, heads, height_ratios=[0.32 * len(kept_rows) + 0.6, 2.6])
    top = fig.add_subplot(grid[0, :])
    cmap = plt.get_cmap("tab10")
    labels = []
    for y, (branch, s, r, head, offset, row) in enumerate(kept_rows):
        for p, c in enumerate(row):
            if c != ".":
                top.add_patch(plt.Rectangle((p, y), 1, 1, color=cmap((ord(c) - ord("a")) % 10),
                                            alpha=0.85))
                top.text(p + 0.5, y + 0.5, c, ha="center", va="center", fontsize=6)
        labels.append(f"branch {branch} (s={s}, r={r}) head {head}, offset {offset}")
    top.set_xlim(0, n)
    top.set_ylim(len(kept_rows), 0)
    top.set_yticks([y + 0.5 for y in range(len(kept_rows))])
    top.set_yticklabels(labels, fontsize=7)
    top.set_xticks(range(0, n + 1, max(1, n // 16)))
    top.set_xlabel("position (letters: segment; white: not kept)")
    top.grid(True, axis="x", alpha=0.3)
    top.set_title(f"{semantics}: positions each head keeps per branch (n = {n}, {heads} heads, "
                  f"segments {args.segments}, dilations {args.dilations})", fontsize=9)
    # The mask per head: query p sees key q in branch i when both are kept by the head in the
    # same segment (same letter in that branch's row).
    for h in range(heads):
        mask = [[0] * n for _ in range(n)]
        for branch, s, r, head, offset, row in kept_rows:
            if head != h:
                continue
            for p in range(n):
                for q in range(n):
                    if row[p] != "." and row[p] == row[q]:
                        mask[p][q] += 1
        ax = fig.add_subplot(grid[1, h])
        top_count = max(1, max(max(line) for line in mask))
        ax.imshow(mask, cmap="Blues", vmin=0, vmax=top_count, interpolation="nearest")
        ax.set_title(f"head {h}: query x key\n(darker: more branches)", fontsize=8)
        ax.set_xlabel("key", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", help="the dilated_pattern executable")
    parser.add_argument("prefix", help="output path prefix: <prefix>-<semantics>.png")
    parser.add_argument("--segments", default="8,16,32")
    parser.add_argument("--dilations", default="1,2,4")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--semantics", default="longnet,grouped")
    args = parser.parse_args()
    plt = import_pyplot()
    if os.path.dirname(args.prefix):
        os.makedirs(os.path.dirname(args.prefix), exist_ok=True)
    for semantics in args.semantics.split(","):
        draw(plt, pattern(args.tool, semantics, args), semantics, args,
             f"{args.prefix}-{semantics}.png")


if __name__ == "__main__":
    main()
