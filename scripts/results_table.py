#!/usr/bin/env python3
"""Print Markdown result tables from the summary.json of one or more training runs.

Usage: python3 scripts/results_table.py RUN_DIR [RUN_DIR ...] [--title TITLE]

Table 1, throughput and accuracy by card count (model-zoo style)
    One row per card count (world_size): "Single card", "4 cards", "8 cards" and
    "16 cards" always, plus any other count found, sorted. Columns by numerics:
    "FP32" (fp32, contiguous) and "AMP+NHWC" (amp_fp16 or amp_bf16 with channels_last)
    always; "FP32+NHWC" and "AMP" (AMP, contiguous) only when such runs exist.
    A cell reads  Acc@1=76.43%,FPS=4200,Time=12.3h,BatchSize=480  where Acc@1 is
    best_acc1, FPS is mean_imgs_per_sec, Time is wall_time_s (in min below one hour) and
    BatchSize is batch_size_per_process. When several runs fall in one cell, the run with
    the highest best_acc1 is shown (runs without best_acc1 rank last; on ties the run
    listed first on the command line wins).

Table 2, convergence
    One row per configuration (world size x precision x memory format x target) among
    runs that have a target_acc. Its figures come from the configuration's run with the
    highest best_acc1 (same rule as above), except Stability, which covers all its runs:
      Scalability = FPS_N / (N x FPS_1), where FPS_1 is mean_imgs_per_sec of a 1-card run
                    with the same precision and memory format (the one with the highest
                    best_acc1 if several; it needs no target); n/a without such a run;
                    1.00 for a 1-card row.
      Stability   = fraction of the configuration's runs whose reached_target is true,
                    printed as "2/3 runs reached target"; every run counts, including
                    ones still running or preempted.

Missing values print "n/a"; nothing is estimated. Exit status 2 with a one-line message
naming the directory when a summary.json is missing or invalid. The files are read by
metrics.read_summary, and their fields are those of metrics.SUMMARY_SCHEMA.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import metrics  # noqa: E402

STANDARD_CARD_COUNTS = (1, 4, 8, 16)
# Fixed column order for table 1; the first two are always printed.
COLUMN_ORDER = ("FP32", "AMP+NHWC", "FP32+NHWC", "AMP")
ALWAYS_COLUMNS = ("FP32", "AMP+NHWC")


def load_summary(run_dir: str) -> dict:
    """RUN_DIR/summary.json with the fields the tables group by checked; metrics.RunFileError if unusable."""
    summary = metrics.read_summary(run_dir)
    path = os.path.join(run_dir, metrics.SUMMARY_FILE)
    world_size = summary.get("world_size")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise metrics.RunFileError(f"{path}: world_size must be a positive integer, got {world_size!r}")
    for field, choices in (("precision", metrics.PRECISIONS), ("memory_format", metrics.MEMORY_FORMATS)):
        if summary.get(field) not in choices:
            raise metrics.RunFileError(f"{path}: {field} must be one of {', '.join(choices)}, "
                                       f"got {summary.get(field)!r}")
    return summary


def number(value) -> float | None:
    """A finite number or None, so bad or missing values uniformly print 'n/a'."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def column_label(summary: dict) -> str:
    """Table-1 column for a run: numerics x memory format (fp16 and bf16 share the AMP columns)."""
    amp = summary["precision"] != "fp32"
    nhwc = summary["memory_format"] == "channels_last"
    if amp:
        return "AMP+NHWC" if nhwc else "AMP"
    return "FP32+NHWC" if nhwc else "FP32"


def config_label(summary: dict) -> str:
    """Short configuration text, e.g. '8x, AMP+NHWC, bs 480'; bf16 is spelled out."""
    label = column_label(summary)
    if summary["precision"] == "amp_bf16":
        label = label.replace("AMP", "AMP(bf16)")
    if summary["precision"] == "fp32" and summary.get("tf32") is True:
        label = label.replace("FP32", "FP32(TF32)")  # an "fp32" run on Ampere or later is TF32 by default
    bs = summary.get("batch_size_per_process")
    return f"{summary['world_size']}x, {label}, bs {bs if bs is not None else 'n/a'}"


def row_label(cards: int) -> str:
    return "Single card" if cards == 1 else f"{cards} cards"


def fmt(value, spec: str, suffix: str = "") -> str:
    value = number(value)
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def fmt_time(seconds) -> str:
    seconds = number(seconds)
    if seconds is None:
        return "n/a"
    if seconds < 3600:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def cell_text(summary: dict) -> str:
    return (
        f"Acc@1={fmt(summary.get('best_acc1'), '.2f', '%')},"
        f"FPS={fmt(summary.get('mean_imgs_per_sec'), '.0f')},"
        f"Time={fmt_time(summary.get('wall_time_s'))},"
        f"BatchSize={fmt(summary.get('batch_size_per_process'), '.0f')}"
    )


def pick_best(runs: list[tuple[str, dict]]) -> tuple[str, dict]:
    """The run with the highest best_acc1; runs without one rank last, ties keep input order."""
    best = runs[0]
    for run in runs[1:]:
        acc, best_acc = number(run[1].get("best_acc1")), number(best[1].get("best_acc1"))
        if acc is not None and (best_acc is None or acc > best_acc):
            best = run
    return best


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def card_table(runs: list[tuple[str, dict]]) -> str:
    """Table 1 text: one row per card count, one column per numerics x memory format."""
    cells: dict[tuple[int, str], list[tuple[str, dict]]] = {}
    for run_dir, summary in runs:
        cells.setdefault((summary["world_size"], column_label(summary)), []).append((run_dir, summary))
    chosen = {key: pick_best(candidates) for key, candidates in cells.items()}

    present = {column for _, column in cells}
    columns = [c for c in COLUMN_ORDER if c in ALWAYS_COLUMNS or c in present]
    card_counts = sorted(set(STANDARD_CARD_COUNTS) | {cards for cards, _ in cells})
    rows = []
    for cards in card_counts:
        row = [row_label(cards)]
        for column in columns:
            pick = chosen.get((cards, column))
            row.append(cell_text(pick[1]) if pick else "n/a")
        rows.append(row)
    return markdown_table(["Cards"] + columns, rows)


def scalability(summary: dict, runs: list[tuple[str, dict]]) -> str:
    """FPS_N / (N x FPS_1), FPS_1 from the best 1-card run of the same precision and memory format."""
    cards = summary["world_size"]
    if cards == 1:
        return "1.00" if number(summary.get("mean_imgs_per_sec")) is not None else "n/a"
    singles = [
        run
        for run in runs
        if run[1]["world_size"] == 1
        and run[1]["precision"] == summary["precision"]
        and run[1]["memory_format"] == summary["memory_format"]
    ]
    if not singles:
        return "n/a"
    fps_n, fps_1 = number(summary.get("mean_imgs_per_sec")), number(pick_best(singles)[1].get("mean_imgs_per_sec"))
    if fps_n is None or not fps_1:
        return "n/a"
    return f"{fps_n / (cards * fps_1):.2f}"


def convergence_table(runs: list[tuple[str, dict]]) -> str | None:
    """Table 2 text, or None when no run has a target_acc."""
    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for run_dir, summary in runs:
        target = number(summary.get("target_acc"))
        if target is None:
            continue
        key = (summary["world_size"], summary["precision"], summary["memory_format"], target)
        groups.setdefault(key, []).append((run_dir, summary))
    if not groups:
        return None
    header = [
        "Convergence criteria",
        "Configuration",
        "Performance",
        "Accuracy",
        "Power",
        "Scalability",
        "Memory",
        "Stability",
    ]
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], metrics.PRECISIONS.index(k[1]), k[2], k[3])):
        members = groups[key]
        _, best = pick_best(members)
        reached = sum(1 for _, s in members if s.get("reached_target") is True)
        rows.append(
            [
                f"top-1 {key[3]:g}%",
                config_label(best),
                fmt(best.get("mean_imgs_per_sec"), ".0f", " img/s"),
                fmt(best.get("best_acc1"), ".2f", "%"),
                fmt(best.get("mean_power_w_per_card"), ".0f", " W/card"),
                scalability(best, runs),
                fmt(best.get("peak_mem_gb_per_card"), ".1f", " GiB/card"),
                f"{reached}/{len(members)} runs reached target",
            ]
        )
    return markdown_table(header, rows)


def time_to_target_table(runs: list[tuple[str, dict]]) -> str | None:
    """Table 3 text: one row per run with a target_acc, named by its folder (the launch scripts name theirs
    after the recipe), in time-to-target order; None when no run has a target."""
    rows = []
    for run_dir, summary in runs:
        target = number(summary.get("target_acc"))
        if target is None:
            continue
        rows.append((number(summary.get("time_to_target_s")) or math.inf, [
            os.path.basename(os.path.normpath(run_dir)), f"top-1 {target:g}%", config_label(summary),
            str(summary.get("global_batch", "n/a")), str(summary.get("epochs_run", "n/a")),
            fmt(summary.get("epochs_to_target"), ".0f"),
            fmt_time(summary.get("time_to_target_s")), fmt(summary.get("best_acc1"), ".2f", "%"),
        ]))
    if not rows:
        return None
    header = ["Run", "Target", "Configuration", "Global batch", "Epochs run", "Epochs to target", "Time to target",
              "Best Acc@1"]
    return markdown_table(header, [row for _, row in sorted(rows, key=lambda r: r[0])])


def render(runs: list[tuple[str, dict]], title: str | None) -> str:
    parts = []
    if title:
        parts += [f"## {title}", ""]
    table1 = card_table(runs)
    parts += ["### Accuracy and throughput by card count", "", table1, ""]
    parts += ["### Convergence", ""]
    table2 = convergence_table(runs)
    parts += [table2 if table2 else "No run has a target_acc, so there is no convergence table.", ""]
    table3 = time_to_target_table(runs)
    if table3:
        parts += ["### Time to target", "", table3, ""]
    parts.append("Figures from the summary.json of: " + ", ".join(run_dir for run_dir, _ in runs) + ".")
    return "\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Print Markdown result tables (by card count, and convergence) from run directories.",
        epilog=(
            "Several runs in one cell or configuration: the one with the highest best_acc1 is shown. "
            "Scalability = FPS_N / (N x FPS_1) with FPS_1 from a 1-card run of the same precision and "
            "memory format. Stability = fraction of a configuration's runs whose reached_target is true, "
            "printed as 'K/N runs reached target' (every run counts, finished or not). "
            "Missing values print n/a."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output directory with summary.json")
    parser.add_argument("--title", default=None, help="heading printed above the tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = []
    for run_dir in args.run_dirs:
        try:
            runs.append((run_dir, load_summary(run_dir)))
        except metrics.RunFileError as exc:
            print(f"results_table.py: error: {exc}", file=sys.stderr)
            return 2
    print(render(runs, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
