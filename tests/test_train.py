"""A user's session with train.py on one process: train, checkpoints, resume, test-only, options, bad input."""

import json
import os

import pytest
import torch
import torchvision

from conftest import FAST_ARGS, make_imagefolder, run_train


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_two_epochs_loss_falls_checkpoints_load_and_test_only_reproduces(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=3, train_per_class=12, val_per_class=3)
    out = tmp_path / "out"
    proc = run_train(["--data-path", data, "--output-dir", out, "--epochs", "2", "--lr", "0.002",
                      "--seed", "1", *FAST_ARGS])
    assert "Epoch: [0]" in proc.stdout and "Epoch: [1]" in proc.stdout
    for key in ("eta:", "lr:", "img/s:", "loss:", "acc1:", "acc5:", "time:", "data:"):
        assert key in proc.stdout, key
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[1]["train_loss"] < records[0]["train_loss"]

    for name in ("checkpoint.pth", "model_0.pth", "model_1.pth", "model_best.pth", "args.json"):
        assert (out / name).exists(), name
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "epoch", "args"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and isinstance(ckpt["args"], dict) and ckpt["args"]["lr"] == 0.002
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(ckpt["model"])  # no 'module.' prefix, no renaming

    last_acc1 = [line for line in proc.stdout.splitlines() if line.startswith("Test: Acc@1")][-1].split()[2]
    test = run_train(["--data-path", data, "--resume", out / "model_1.pth", "--test-only", *FAST_ARGS])
    assert f"Test: Acc@1 {last_acc1}" in test.stdout


def test_resume_after_epoch_one_matches_uninterrupted_lr_trace_and_epochs(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=8, val_per_class=2)
    common = ["--data-path", data, "--epochs", "3", "--lr", "0.1", "--lr-warmup-epochs", "1",
              "--lr-warmup-method", "linear", "--lr-step-size", "1", "--lr-gamma", "0.5", "--seed", "3", *FAST_ARGS]
    straight = tmp_path / "straight"
    run_train([*common, "--output-dir", straight])
    part = tmp_path / "part"
    run_train([*common, "--output-dir", part, "--epochs", "1"])
    resumed = run_train([*common, "--output-dir", part, "--resume", part / "checkpoint.pth"])
    assert "resumed from" in resumed.stdout and "Epoch: [0]" not in resumed.stdout
    a, b = read_metrics(straight), read_metrics(part)
    assert [r["epoch"] for r in b] == [0, 1, 2]
    assert [r["lr"] for r in b] == pytest.approx([r["lr"] for r in a])
    assert [r["global_step"] for r in b] == [r["global_step"] for r in a]


@pytest.fixture
def in_process(monkeypatch):
    """Run train.py's cli in this process (one torch import for many short runs), restoring global state."""
    import signal

    import train

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield train.cli
    torch.use_deterministic_algorithms(deterministic)
    for sig, handler in saved.items():
        signal.signal(sig, handler)


# Options that go together share a run; each option still trains and evaluates for an epoch.
@pytest.mark.parametrize("extra", [
    ["--amp", "--channels-last", "--model-ema", "--model-ema-steps", "1"],
    ["--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--label-smoothing", "0.1", "--ra-sampler", "--ra-reps", "2"],
    ["--auto-augment", "ta_wide", "--random-erase", "0.5", "--backend", "tensor", "--use-v2"],
    ["--backend", "fast", "--opt", "adamw", "--lr", "0.001", "--lr-scheduler", "cosineannealinglr",
     "--clip-grad-norm", "1.0"],
    ["--norm-weight-decay", "0", "--bias-weight-decay", "0", "--opt", "sgd_nesterov",
     "--use-deterministic-algorithms", "--seed", "0", "--lr-scheduler", "exponentiallr"],
    ["--opt", "rmsprop", "--lr", "0.001", "--auto-augment", "ra", "--lr-warmup-epochs", "1",
     "--lr-warmup-method", "linear"],
], ids=["amp-nhwc-ema", "mixup-cutmix-smoothing-ra", "autoaugment-erase-tensor-v2", "fast-adamw-cosine-clip",
        "wd-groups-nesterov-deterministic", "rmsprop-randaugment-warmup"])
def test_each_option_runs_a_short_epoch(tmp_path, extra, in_process, capsys):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=2)
    out = tmp_path / "out"
    assert in_process(["--data-path", str(data), "--output-dir", str(out), "--epochs", "1", *FAST_ARGS, *extra]) == 0
    stdout = capsys.readouterr().out
    assert "Test: Acc@1" in stdout
    if "--model-ema" in extra:
        assert "Test: EMA Acc@1" in stdout
        assert "model_ema" in torch.load(out / "checkpoint.pth", weights_only=True)
    if "--amp" in extra:
        with open(out / "summary.json") as f:
            summary = json.load(f)
        assert summary["precision"] == "amp_bf16" and summary["memory_format"] == "channels_last"
    rec = read_metrics(out)[0]
    assert rec["train_loss"] == rec["train_loss"]  # not NaN


def test_resnet50_default_model_trains_a_step(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1, size=32)
    out = tmp_path / "out"
    args = [a for a in FAST_ARGS if a != "resnet18"]
    args.remove("--model")
    proc = run_train(["--data-path", data, "--output-dir", out, "--epochs", "1", "--batch-size", "2", *args])
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    torchvision.models.resnet50(num_classes=2).load_state_dict(ckpt["model"])
    assert "training resnet50" in proc.stdout


@pytest.mark.parametrize("layout, expected", [
    ("missing", "does not exist"),
    ("file", "not a folder"),
    ("no_val", "val"),
    ("mismatch", "class"),
])
def test_bad_data_path_exits_with_one_line(tmp_path, layout, expected):
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("not a folder")
    elif layout == "no_val":
        make_imagefolder(root, classes=2, train_per_class=1, val_per_class=1)
        for f in (root / "val").rglob("*"):
            if f.is_file():
                f.unlink()
        for d in sorted((root / "val").rglob("*"), reverse=True):
            d.rmdir()
        (root / "val").rmdir()
    elif layout == "mismatch":
        make_imagefolder(root, classes=2, train_per_class=1, val_per_class=1)
        os.rename(root / "val" / "class01", root / "val" / "other")
    proc = run_train(["--data-path", root, "--output-dir", tmp_path / "out", *FAST_ARGS], check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), proc.stderr
    assert str(root) in err[0] and expected in err[0].lower()


def test_missing_data_path_option_is_one_line():
    proc = run_train(["--device", "cpu"], check=False)
    assert proc.returncode == 2 and "--data-path is required" in proc.stderr


def test_verify_data_reports_unreadable_file(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    (tmp_path / "data" / "train" / "class00" / "broken.JPEG").write_bytes(b"not a jpeg")
    proc = run_train(["--data-path", data, "--verify-data", "--workers", "1"], check=False)
    assert proc.returncode == 1
    assert "broken.JPEG" in proc.stdout + proc.stderr


def test_sync_bn_on_cpu_under_torchrun_is_refused_before_starting(monkeypatch):
    import train

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = train.get_args_parser().parse_args(["--data-path", "x", "--device", "cpu", "--sync-bn"])
    with pytest.raises(train.ConfigError, match="--sync-bn needs CUDA"):
        train.validate_args(args)
