#!/usr/bin/env python3
"""Draws the train and held-out loss curves of dilated_train logs (--log JSON), one colour per
run, the train loss as a 10-step running mean beside the raw steps, the held-out loss as points.

    scripts/plot_training.py run-standard.json run-custom.json --out docs/figures/training.png
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_common import import_pyplot  # noqa: E402


def label(config):
    return (f"{config['model']} {config['block']}/{config['policy']} {config['dtype']}, "
            f"n={config['sequence_length']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", help="dilated_train --log files")
    parser.add_argument("--out", required=True, help="image to write (.png or .svg)")
    args = parser.parse_args()
    plt = import_pyplot("plot_training.py")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, path in enumerate(args.logs):
        with open(path) as f:
            log = json.load(f)
        colour = f"C{i}"
        steps = [s["step"] for s in log["steps"] if s["loss"] is not None]
        losses = [s["loss"] for s in log["steps"] if s["loss"] is not None]
        if not steps:
            sys.exit(f"plot_training.py: {path} has no finite step loss")
        mean = [sum(losses[max(0, k - 9):k + 1]) / len(losses[max(0, k - 9):k + 1])
                for k in range(len(losses))]
        ax.plot(steps, losses, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(steps, mean, color=colour, label=f"train: {label(log['config'])}")
        evals = [e for e in log["evals"] if e["val_loss"] is not None]
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o--", color=colour,
                label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per byte)")
    ax.set_ylim(bottom=0, top=max(1.0, math.log(256) * 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
