#!/usr/bin/env python3
"""Plot training curves of one or more runs from their metrics.jsonl into one PNG.

Usage: python3 scripts/plot_curves.py RUN_DIR [RUN_DIR ...] -o curves.png

Four panels against epoch: train loss, validation Acc@1, learning rate and images/s
(global). One line per run, labelled by the run directory's name. Epochs that were
not evaluated (val_acc1 null) are left out of the Acc@1 panel instead of drawn as zero.

Needs matplotlib (pip install matplotlib); it renders with the Agg backend, so no
display is required. Exit status 2 with a one-line message on a missing package or a
missing/empty metrics.jsonl. The records are read by metrics.read_metrics, the trainer's
own reader: one per epoch, the last written winning, unreadable lines reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import metrics  # noqa: E402

# (record field, panel title, y label)
PANELS = (
    ("train_loss", "Train loss", "loss"),
    ("val_acc1", "Validation Acc@1", "Acc@1 (%)"),
    ("lr", "Learning rate", "lr"),
    ("imgs_per_sec", "Throughput (all ranks)", "images/s"),
)


def load_records(run_dir: str) -> list[dict]:
    """The run's records, one per epoch in epoch order; RunFileError when there are none.

    Unreadable lines (a crash can leave a truncated last line) are skipped with a warning
    line on stderr: the rest of the run is still worth plotting.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = metrics.read_metrics(run_dir)
    for warning in caught:
        print(f"plot_curves.py: warning: {warning.message}", file=sys.stderr)
    if not records:
        raise metrics.RunFileError(f"{os.path.join(run_dir, metrics.METRICS_FILE)}: no epoch records yet")
    return records


def series(records: list[dict], field: str) -> tuple[list[int], list[float]]:
    """Epochs and values of one field, skipping nulls so gaps are not drawn as zeros."""
    xs, ys = [], []
    for r in records:
        v = r.get(field)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(r["epoch"])
            ys.append(float(v))
    return xs, ys


def run_labels(run_dirs: list[str]) -> list[str]:
    """Directory names as labels; the paths as given when two names collide."""
    names = [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    return [name if names.count(name) == 1 else d for name, d in zip(names, run_dirs)]


def import_pyplot():
    """pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def integer_ticks():
    """Epochs are whole numbers; without this short runs get ticks like 0.2."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def plot(plt, runs: list[tuple[str, list[dict]]], output: str) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (field, title, ylabel) in zip(axes.flat, PANELS):
        for label, records in runs:
            xs, ys = series(records, field)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(integer_ticks())
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Plot train loss, val Acc@1, LR and images/s per epoch.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output directory with metrics.jsonl")
    parser.add_argument("-o", "--output", default="curves.png", help="PNG file to write (default: curves.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plt = import_pyplot()
    if plt is None:
        print("plot_curves.py: error: matplotlib is not installed; pip install matplotlib", file=sys.stderr)
        return 2
    runs = []
    for label, run_dir in zip(run_labels(args.run_dirs), args.run_dirs):
        try:
            runs.append((label, load_records(run_dir)))
        except (metrics.RunFileError, OSError) as exc:
            print(f"plot_curves.py: error: {exc}", file=sys.stderr)
            return 2
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        print(f"plot_curves.py: error: -o {args.output}: directory {out_dir} does not exist", file=sys.stderr)
        return 2
    plot(plt, runs, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
