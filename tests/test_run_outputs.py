"""What a run leaves behind: metrics.jsonl and summary.json with every documented field, --target-acc,
--eval-interval, TensorBoard, continued metrics after a resume, bad images end to end, results tables from
real runs.

Single-process runs go through train.cli in this process (run_train_in_process); a subprocess is kept where the
process itself is under test (its stderr with DataLoader workers) and for torchrun."""

import json
import os
import subprocess
import sys

import pytest

import metrics
from conftest import FAST_ARGS, REPO, make_imagefolder, run_torchrun, run_train, run_train_in_process


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("learn") / "data", classes=2, train_per_class=12,
                            val_per_class=4)


# --target-acc 1 on two learnable classes: reached after the first epoch, which ends the run early.
TARGET_ARGS = ["--epochs", "6", "--lr", "0.002", "--seed", "0", "--target-acc", "1", *FAST_ARGS]


@pytest.fixture(scope="module")
def target_run(learnable, tmp_path_factory):
    """One run that reaches its target: its summary is checked, and it is the 1-card row of a results table."""
    out = tmp_path_factory.mktemp("target") / "out"
    return run_train_in_process(["--data-path", learnable, "--output-dir", out, *TARGET_ARGS]), out


def test_metrics_and_summary_have_every_documented_field(learnable, tmp_path):
    out = tmp_path / "out"
    run_train_in_process(["--data-path", learnable, "--output-dir", out, "--epochs", "2", "--lr", "0.002",
                          "--seed", "0", "--tensorboard", *FAST_ARGS])
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert set(metrics.RECORD_FIELDS) <= set(r)
        assert r["imgs_per_sec"] > 0 and 0 <= r["data_wait_frac"] <= 1 and r["epoch_time_s"] > 0
        assert r["peak_mem_gb"] is None and r["peak_host_rss_gb"] > 0  # CPU: no device memory, host RSS instead
        assert 0 <= r["val_acc1"] <= 100 and r["bad_images"] == 0
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert set(metrics.SUMMARY_FIELDS) <= set(summary)
    assert summary["status"] == "finished" and summary["epochs_run"] == 2 and summary["world_size"] == 1
    assert summary["peak_mem_gb_per_card"] is None and summary["peak_mem_note"]
    assert summary["mean_power_w_per_card"] is None and "cpu" in summary["power_note"].lower()
    assert summary["best_acc1"] == max(r["val_acc1"] for r in records)
    assert summary["versions"]["torch"] and summary["command"].startswith("train.py")
    events = [f for _, _, files in os.walk(out / "tensorboard") for f in files if "tfevents" in f]
    assert events


def test_target_acc_stops_early_and_records_time_and_epochs(target_run):
    proc, out = target_run
    assert "target Acc@1 1.0 reached at epoch 0" in proc.stdout
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["status"] == "target_reached" and summary["reached_target"] is True
    assert summary["epochs_to_target"] == 1 and summary["time_to_target_s"] > 0 and summary["epochs_run"] == 1


def test_eval_interval_skips_evaluations_but_not_the_last(learnable, tmp_path):
    out = tmp_path / "out"
    proc = run_train_in_process(["--data-path", learnable, "--output-dir", out, "--epochs", "3",
                                 "--eval-interval", "2", "--max-steps-per-epoch", "2", *FAST_ARGS])
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["val_acc1"] is not None for r in records] == [False, True, True]
    assert proc.stdout.count("Test: Acc@1") == 2
    assert "ETA" in [line for line in proc.stdout.splitlines() if line.startswith("Epoch 0 |")][0]


def test_resumed_run_continues_metrics_without_duplicate_epochs(learnable, tmp_path):
    out = tmp_path / "out"
    common = ["--data-path", learnable, "--output-dir", out, "--max-steps-per-epoch", "2", *FAST_ARGS]
    run_train_in_process([*common, "--epochs", "2"])
    # A crash after epoch 1's metrics but before its checkpoint: resuming from epoch 0's file reruns epoch 1.
    os.remove(out / "checkpoint.pth")
    os.remove(out / "model_1.pth")
    proc = run_train_in_process([*common, "--epochs", "3", "--resume", "auto"])
    assert "resumed from" in proc.stdout and "model_0.pth" in proc.stdout
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]


def test_bad_images_skip_counts_and_error_names_the_file(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1)
    bad = os.path.join(data, "train", "class01", "img002.JPEG")
    with open(bad, "r+b") as f:
        f.truncate(120)  # a truncated JPEG
    out = tmp_path / "out"
    proc = run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "1", "--bad-images", "skip",
                                 *FAST_ARGS])
    assert proc.stderr.count(f"skipping bad image {bad}") == 1
    assert read_jsonl(out / "metrics.jsonl")[0]["bad_images"] == 1
    # A subprocess: what is checked is the process's whole stderr, DataLoader workers' tracebacks included.
    proc = run_train(["--data-path", data, "--output-dir", tmp_path / "out2", "--epochs", "1", *FAST_ARGS,
                      "--workers", "2"], check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and bad in lines[0] and "--bad-images skip" in lines[0], proc.stderr


@pytest.mark.slow
def test_results_table_from_real_one_and_two_process_runs(learnable, target_run, tmp_path):
    one, two = target_run[1], tmp_path / "two"
    run_torchrun(["--data-path", learnable, "--output-dir", two, *TARGET_ARGS])
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "results_table.py"), one, two],
                          capture_output=True, text=True, check=True)
    table = proc.stdout
    with open(one / "summary.json") as f:
        fps1 = json.load(f)["mean_imgs_per_sec"]
    with open(two / "summary.json") as f:
        fps2 = json.load(f)["mean_imgs_per_sec"]
    assert "Single card" in table and "2 cards" in table and "BatchSize=4" in table
    assert f"{fps2 / (2 * fps1):.2f}" in table  # scalability of the 2-process row
    assert "1/1 runs reached target" in table


# ------------------------------------------------------------------------------------------------------------
# Figures that stay true around checkpoints and resumes
# ------------------------------------------------------------------------------------------------------------
def test_mid_epoch_checkpoint_saves_are_left_out_of_imgs_per_sec(tmp_path, monkeypatch):
    """Saving is not training: 4 timed mid-epoch saves of 1 s each must not divide the epoch's images/s."""
    import time

    import checkpoint as ckpt_io

    save = ckpt_io.CheckpointManager.save

    def slow_save(self, *, epoch_end, **kwargs):
        if not epoch_end:
            time.sleep(1.0)
        return save(self, epoch_end=epoch_end, **kwargs)

    monkeypatch.setattr(ckpt_io.CheckpointManager, "save", slow_save)
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=12, val_per_class=1)
    out = tmp_path / "out"
    run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "1", "--checkpoint-interval", "1",
                          *FAST_ARGS])
    record = read_jsonl(out / metrics.METRICS_FILE)[0]
    timed_images = 4 * (6 - 1)  # 6 steps of 4 images, the first one warmup
    assert timed_images / record["imgs_per_sec"] < 2.0, record  # the saves alone took 4 s of that window
    assert record["epoch_time_s"] > 4.0  # the epoch's wall time does include them


def test_eta_after_a_mid_epoch_resume_counts_whole_epochs(tmp_path, monkeypatch):
    """Resumed at step 5 of 6, the epoch trains one step here: its time must not pass for an epoch's in the ETA,
    and the step log's rate must not divide by the steps done before the resume."""
    import os
    import signal

    import train

    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=12, val_per_class=1)
    out = tmp_path / "out"
    args = ["--data-path", data, "--output-dir", out, "--epochs", "3", "--eval-interval", "10", "--seed", "5",
            *FAST_ARGS]
    call = train.TrainStep.__call__

    def signal_at_epoch_1_step_4(self, images, target, epoch, step):
        result = call(self, images, target, epoch, step)
        if (epoch, step) == (1, 4):
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(train.TrainStep, "__call__", signal_at_epoch_1_step_4)
    assert run_train_in_process(args, check=False).returncode == 75
    monkeypatch.undo()
    resumed = run_train_in_process([*args, "--resume", "auto"])
    assert "epoch 1, step 5" in resumed.stdout
    epoch0, epoch1, _ = read_jsonl(out / metrics.METRICS_FILE)
    # One epoch is left after epoch 1: its ETA is the mean whole-epoch time, epoch 0's (kept in the checkpoint)
    # and epoch 1's scaled from its one step, so at least the mean of the two epochs' wall times; the one step's
    # time alone (what the ETA was) is less, as epoch 1 ran 1 step here against epoch 0's 6.
    assert epoch1["epoch_time_s"] < epoch0["epoch_time_s"]
    assert epoch1["eta_s"] >= (epoch0["epoch_time_s"] + epoch1["epoch_time_s"]) / 2
    # The step line's rate covers the one step run here (it divided by all 6 steps of the epoch).
    line = next(ln for ln in resumed.stdout.splitlines() if ln.startswith("Epoch: [1] [6/6]"))
    step_rate = float(line.split("img/s: ")[1].split()[0])
    assert step_rate < 3 * epoch1["imgs_per_sec"], (line, epoch1["imgs_per_sec"])


def test_power_of_a_resumed_run_says_it_covers_the_resumed_part_only(tmp_path, monkeypatch):
    """Power samples are not carried across processes: the summary must say so rather than pass the last part's
    mean for the run's."""
    import accelerator

    class FakeMonitor:  # what NVML sampling returns on a GPU
        def __init__(self, device):
            pass

        def start(self):
            pass

        def stop(self):
            return 250.0, "NVML board power, mean of 3 samples every 5s on CUDA device 0 (test)"

    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1)
    out = tmp_path / "out"
    args = ["--data-path", data, "--output-dir", out, *FAST_ARGS]
    monkeypatch.setattr(accelerator, "PowerMonitor", FakeMonitor)
    run_train_in_process([*args, "--epochs", "1"])
    first = json.loads((out / "summary.json").read_text())
    assert first["mean_power_w_per_card"] == 250.0 and "resume" not in first["power_note"]
    run_train_in_process([*args, "--epochs", "2", "--resume", "auto"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["power_note"].endswith("; since the resume at epoch 1 only")
