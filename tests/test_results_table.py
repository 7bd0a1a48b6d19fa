"""Tests for scripts/results_table.py and scripts/plot_curves.py, run as real subprocesses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import metrics

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
RESULTS_TABLE = SCRIPTS / "results_table.py"
PLOT_CURVES = SCRIPTS / "plot_curves.py"


def record(epoch, val_acc1, imgs_per_sec, **extra):
    r = {field: None for field in metrics.RECORD_FIELDS}
    r.update(
        epoch=epoch,
        lr=0.1 * (0.5**epoch),
        train_loss=4.0 - epoch,
        train_acc1=10.0 + epoch,
        val_acc1=val_acc1,
        val_acc5=None if val_acc1 is None else val_acc1 + 15.0,
        imgs_per_sec=imgs_per_sec,
        data_wait_frac=0.1,
        epoch_time_s=10.0,
        peak_host_rss_gb=1.0,
        bad_images=0,
        eta_s=0.0,
        global_step=epoch + 1,
    )
    r.update(extra)
    return r


def write_run(
    root,
    name,
    *,
    world_size,
    precision,
    memory_format,
    accs,
    fps,
    wall_time_s,
    batch=32,
    target=None,
    power=None,
    peak_mem=None,
    tf32=None,
    time_to_target=None,
):
    """A run directory with metrics.jsonl and the summary.json the trainer would write."""
    run_dir = root / name
    run_dir.mkdir()
    records = [record(e, acc, fps, peak_mem_gb=peak_mem) for e, acc in enumerate(accs)]
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    info = {
        "status": "finished",
        "model": "resnet50",
        "epochs_planned": len(accs),
        "wall_time_s": wall_time_s,
        "target_acc": target,
        "time_to_target_s": time_to_target[1] if time_to_target else None,
        "epochs_to_target": time_to_target[0] if time_to_target else None,
        "world_size": world_size,
        "nnodes": 1,
        "batch_size_per_process": batch,
        "global_batch": batch * world_size,
        "precision": precision,
        "tf32": tf32,
        "memory_format": memory_format,
        "mean_power_w_per_card": power,
        "power_note": "test",
        "device": "cuda" if peak_mem else "cpu",
        "device_names": ["test device"],
        "versions": {},
        "command": "train.py",
    }
    (run_dir / "summary.json").write_text(json.dumps(metrics.summarize_run(records, info)))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    fp32, amp, nhwc, nchw = "fp32", "amp_fp16", "channels_last", "contiguous"
    return {
        # Two 1-card fp32 runs: the cell shows the higher best_acc1, not the faster one.
        "single": write_run(tmp_path, "single", world_size=1, precision=fp32, memory_format=nchw,
                            accs=[50.0, 70.0], fps=100.0, wall_time_s=1800.0),
        "single_fast": write_run(tmp_path, "single_fast", world_size=1, precision=fp32, memory_format=nchw,
                                 accs=[40.0, 65.0], fps=150.0, wall_time_s=1200.0),
        "two": write_run(tmp_path, "two", world_size=2, precision=fp32, memory_format=nchw,
                         accs=[55.0, 71.0], fps=180.0, wall_time_s=7200.0, target=60.0),
        "amp8_ok": write_run(tmp_path, "amp8_ok", world_size=8, precision=amp, memory_format=nhwc,
                             accs=[70.0, 76.1], fps=4200.0, wall_time_s=44280.0, batch=480, target=75.9,
                             power=312.4, peak_mem=30.25, time_to_target=(2, 44000.0)),
        "amp8_miss": write_run(tmp_path, "amp8_miss", world_size=8, precision=amp, memory_format=nhwc,
                               accs=[70.0, 75.0], fps=4300.0, wall_time_s=44000.0, batch=480, target=75.9),
        # AMP without channels_last gets its own column; no evaluation ever -> Acc@1 n/a.
        "amp4_nchw": write_run(tmp_path, "amp4_nchw", world_size=4, precision="amp_bf16", memory_format=nchw,
                               accs=[None], fps=900.0, wall_time_s=600.0, batch=64),
    }


def run_script(script, *args):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=120)


def parse_tables(text):
    """Markdown tables in the output, each as a list of {header: cell} dicts."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            header, _separator, *rows = block
            tables.append([dict(zip(header, row)) for row in rows])
            block = []
    return tables


def test_results_tables(runs, tmp_path):
    result = run_script(RESULTS_TABLE, *runs.values(), "--title", "ResNet50 results")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("## ResNet50 results")
    by_cards, convergence, to_target = parse_tables(out)

    # Table 1: standard rows always, the extra 2-card row sorted in; AMP (no NHWC) column only because present.
    assert [row["Cards"] for row in by_cards] == ["Single card", "2 cards", "4 cards", "8 cards", "16 cards"]
    assert list(by_cards[0]) == ["Cards", "FP32", "AMP+NHWC", "AMP"]
    rows = {row["Cards"]: row for row in by_cards}
    assert rows["Single card"]["FP32"] == "Acc@1=70.00%,FPS=100,Time=30.0min,BatchSize=32"
    assert rows["Single card"]["AMP+NHWC"] == "n/a"
    assert rows["2 cards"]["FP32"] == "Acc@1=71.00%,FPS=180,Time=2.0h,BatchSize=32"
    assert rows["8 cards"]["AMP+NHWC"] == "Acc@1=76.10%,FPS=4200,Time=12.3h,BatchSize=480"
    assert rows["4 cards"]["AMP"] == "Acc@1=n/a,FPS=900,Time=10.0min,BatchSize=64"
    assert set(rows["16 cards"].values()) == {"16 cards", "n/a"}

    # Table 2: one row per configuration with a target.
    assert len(convergence) == 2
    two, amp8 = convergence
    assert two["Convergence criteria"] == "top-1 60%"
    assert two["Configuration"] == "2x, FP32, bs 32"
    assert two["Performance"] == "180 img/s"
    assert two["Accuracy"] == "71.00%"
    assert two["Scalability"] == "0.90"  # 180 / (2 x 100), against the best 1-card fp32 run
    assert two["Power"] == "n/a" and two["Memory"] == "n/a"
    assert two["Stability"] == "1/1 runs reached target"

    assert amp8["Convergence criteria"] == "top-1 75.9%"
    assert amp8["Configuration"] == "8x, AMP+NHWC, bs 480"
    assert amp8["Accuracy"] == "76.10%" and amp8["Performance"] == "4200 img/s"
    assert amp8["Power"] == "312 W/card"
    assert amp8["Memory"] == "30.2 GiB/card"
    assert amp8["Scalability"] == "n/a"  # no 1-card AMP+NHWC run to compare with
    assert amp8["Stability"] == "1/2 runs reached target"

    # Table 3: every run with a target, fastest to it first; a run that never reached it last, with n/a.
    assert [row["Run"] for row in to_target] == ["amp8_ok", "two", "amp8_miss"]
    assert to_target[0]["Epochs to target"] == "2" and to_target[0]["Time to target"] == "12.2h"
    assert to_target[0]["Global batch"] == "3840" and to_target[0]["Best Acc@1"] == "76.10%"
    assert to_target[2]["Epochs to target"] == "n/a" and to_target[2]["Time to target"] == "n/a"

    footnote = out.strip().splitlines()[-1]
    assert all(str(path) in footnote for path in runs.values())


def test_single_card_convergence_row_scales_to_one(tmp_path):
    run = write_run(tmp_path, "one", world_size=1, precision="fp32", memory_format="contiguous",
                    accs=[30.0], fps=50.0, wall_time_s=100.0, target=40.0)
    result = run_script(RESULTS_TABLE, run)
    assert result.returncode == 0, result.stderr
    _, convergence, _ = parse_tables(result.stdout)
    assert convergence[0]["Scalability"] == "1.00"
    assert convergence[0]["Stability"] == "0/1 runs reached target"


def test_no_target_prints_note_instead_of_convergence_rows(tmp_path):
    run = write_run(tmp_path, "plain", world_size=1, precision="fp32", memory_format="contiguous",
                    accs=[30.0], fps=50.0, wall_time_s=100.0)
    result = run_script(RESULTS_TABLE, run)
    assert result.returncode == 0, result.stderr
    assert len(parse_tables(result.stdout)) == 1
    assert "no convergence table" in result.stdout


def test_missing_or_invalid_summary_is_one_line_error(tmp_path, runs):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_script(RESULTS_TABLE, runs["single"], empty)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and str(empty) in result.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text('{"schema_version": 1,')
    result = run_script(RESULTS_TABLE, broken)
    assert result.returncode == 2
    assert "invalid JSON" in result.stderr and str(broken) in result.stderr


def test_results_table_needs_no_torch_from_any_folder(runs, tmp_path):
    # sys.modules['torch'] = None makes any `import torch` fail: the table must come from metrics.py alone.
    code = (f"import runpy, sys; sys.modules['torch'] = None; sys.argv = ['results_table.py', {str(runs['two'])!r}]; "
            f"runpy.run_path({str(RESULTS_TABLE)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert parse_tables(result.stdout)[0][1]["FP32"] == "Acc@1=71.00%,FPS=180,Time=2.0h,BatchSize=32"


def test_help_documents_stability():
    result = run_script(RESULTS_TABLE, "--help")
    assert result.returncode == 0
    assert "Stability" in result.stdout and "reached_target" in result.stdout


# --------------------------------------------------------------------------- plot_curves.py


def test_plot_curves_writes_png(runs, tmp_path):
    pytest.importorskip("matplotlib", reason="plot_curves.py needs matplotlib")
    out = tmp_path / "curves.png"
    with open(runs["single"] / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 2, "lr')  # a line cut short by a crash: reported, the rest still plotted
    result = run_script(PLOT_CURVES, runs["single"], runs["amp8_ok"], runs["amp4_nchw"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("plot_curves.py: warning: ") and "metrics.jsonl:3" in result.stderr
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_plot_curves_missing_metrics_is_one_line_error(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    result = run_script(PLOT_CURVES, empty, "-o", tmp_path / "x.png")
    assert result.returncode == 2
    assert "nothing_here" in result.stderr and "metrics.jsonl" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_curves_without_matplotlib_says_how_to_install(runs, tmp_path):
    # Block the import in the child process to emulate an install without matplotlib.
    code = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = ['plot_curves.py', {str(runs['single'])!r}, '-o', {str(tmp_path / 'c.png')!r}]; "
        f"runpy.run_path({str(PLOT_CURVES)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install matplotlib" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_fp32_runs_in_tf32_say_so(tmp_path):
    """On Ampere and later an "fp32" run computes convolutions in TF32 unless --tf32 off: the label tells."""
    tf32 = write_run(tmp_path, "tf32", world_size=1, precision="fp32", memory_format="contiguous", accs=[70.0],
                     fps=100.0, wall_time_s=60.0, target=60.0, tf32=True)
    ieee = write_run(tmp_path, "ieee", world_size=2, precision="fp32", memory_format="contiguous", accs=[70.0],
                     fps=100.0, wall_time_s=60.0, target=60.0, tf32=False)
    result = run_script(RESULTS_TABLE, tf32, ieee)
    assert result.returncode == 0, result.stderr
    _, convergence, _ = parse_tables(result.stdout)
    assert [row["Configuration"] for row in convergence] == ["1x, FP32(TF32), bs 32", "2x, FP32, bs 32"]
