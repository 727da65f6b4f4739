"""Validation loss against wall-clock training time for several training runs, in one PNG.

Reads each run's ``metrics.jsonl`` (``attnlab train ... --out DIR``) and draws the validation
loss at each evaluation against the minutes of training before it, so runs with different step
times compare at equal time:

    python benchmarks/plot_runs.py runs/translate-base-transformer runs/translate-base-lstm \\
        --labels Transformer "LSTM + attention" --out docs/images/translate-val-loss.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attnlab.train.metrics import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="training --out folders")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: folder names)")
    parser.add_argument("--title", default="Validation loss at equal training time")
    parser.add_argument("--ylabel", default="validation loss (nats per target token, label-smoothed)")
    parser.add_argument("--out", required=True, metavar="PNG")
    args = parser.parse_args()
    labels = args.labels or [Path(run).name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} labels")

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for run, label in zip(args.runs, labels, strict=True):
        points = [(r["elapsed_s"] / 60, r["val_loss"]) for r in read_metrics(Path(run) / "metrics.jsonl")
                  if r.get("val_loss") is not None]
        if not points:
            parser.error(f"{run}/metrics.jsonl has no validation loss")
        axes.plot(*zip(*points, strict=True), marker="o", markersize=4, linewidth=1.5, label=label)
    axes.set_xlabel("training time (minutes)")
    axes.set_ylabel(args.ylabel)
    axes.set_title(args.title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
