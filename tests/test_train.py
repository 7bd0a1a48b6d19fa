"""A user's session with train.py on one process: train, checkpoints, resume, test-only, options, bad input."""

import contextlib
import json
import math
import os

import pytest
import torch
import torchvision

import train
import utils
from conftest import FAST_ARGS, make_imagefolder, run_train, run_train_in_process


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_two_epochs_loss_falls_checkpoints_load_and_test_only_reproduces(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=3, train_per_class=12, val_per_class=3)
    out = tmp_path / "out"
    proc = run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "2", "--lr", "0.002",
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
    test = run_train_in_process(["--data-path", data, "--resume", out / "model_1.pth", "--test-only", *FAST_ARGS])
    assert f"Test: Acc@1 {last_acc1}" in test.stdout


def test_test_only_with_resume_auto_and_no_checkpoint_is_an_error_not_a_score(tmp_path):
    """A mistyped --output-dir must not make the random initialization's Acc@1 pass for the model's."""
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=2)
    empty = tmp_path / "no_run_here"
    proc = run_train_in_process(["--data-path", data, "--output-dir", empty, "--resume", "auto", "--test-only",
                                 *FAST_ARGS], check=False)
    assert proc.returncode == 2 and "Test: Acc@1" not in proc.stdout
    assert proc.stderr.strip() == (f"error: --test-only --resume auto: no checkpoint in {empty} to evaluate; "
                                   "check --output-dir, or pass --resume PATH")


def test_a_fresh_run_sets_an_earlier_runs_checkpoints_aside(tmp_path):
    """A new run started without --resume in a folder of a longer earlier run: its epoch files must not be pruned
    in favour of the earlier run's higher epochs, nor its checkpoint lose to theirs at the next --resume auto."""
    import checkpoint as ckpt_io

    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1)
    out = tmp_path / "out"
    run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "3", "--seed", "1", *FAST_ARGS])
    fresh = run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "1", "--seed", "2",
                                  "--keep-checkpoints", "2", *FAST_ARGS])
    assert (f"fresh start: the 5 checkpoint file(s) of an earlier run in {out} are renamed to *.pth.prev"
            in fresh.stdout)
    assert sorted(p.name for p in out.glob("*.pth*")) == [
        "checkpoint.pth", "checkpoint.pth.prev", "model_0.pth", "model_0.pth.prev", "model_1.pth.prev",
        "model_2.pth.prev", "model_best.pth", "model_best.pth.prev"]
    assert torch.load(out / "model_0.pth", weights_only=True)["args"]["seed"] == 2  # this run's, kept
    assert torch.load(out / "model_2.pth.prev", weights_only=True)["args"]["seed"] == 1
    path, ckpt = ckpt_io.find_resume_checkpoint(str(out), log=print)  # what a requeue with --resume auto takes
    assert ckpt["args"]["seed"] == 2 and ckpt["epoch"] == 0
    # The next fresh start keeps one earlier run: this one's files replace the first run's.
    run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "1", "--seed", "3", *FAST_ARGS])
    assert sorted(p.name for p in out.glob("*.pth.prev")) == ["checkpoint.pth.prev", "model_0.pth.prev",
                                                          "model_best.pth.prev"]
    assert torch.load(out / "model_0.pth.prev", weights_only=True)["args"]["seed"] == 2


def test_sync_bn_over_the_default_group_and_model_ema_build_together(monkeypatch):
    """On CUDA the device group is the default group; SyncBatchNorm layers holding that group object made the
    EMA model's deep copy fail (TypeError: cannot pickle ProcessGroup) at the start of every --sync-bn
    --model-ema run. A one-process gloo group stands in for NCCL's here."""
    from conftest import free_port

    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    info = utils.init_distributed(torch.device("cpu"), "gloo", "env://", 1)
    try:
        assert info.device_group is torch.distributed.group.WORLD
        model = train.build_model("resnet18", None, 3, channels_last=False, device=torch.device("cpu"),
                                  sync_bn_group=info.device_group)
        sync_layers = [m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
        assert sync_layers and all(m.process_group is None for m in sync_layers)  # None: the default group
        ema = train.build_ema(model, world_size=1, batch_size=4, ema_steps=32, ema_decay=0.99998, epochs=10,
                              device=torch.device("cpu"))
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in ema.module.modules())
    finally:
        utils.cleanup_distributed(info)


def test_test_only_with_model_ema_scores_the_ema_weights_too(tmp_path):
    """As torchvision's reference does: --test-only --model-ema reports the EMA model's accuracy, the one the
    training run printed for it; a checkpoint without EMA weights is refused rather than scored at random."""
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=6, val_per_class=3)
    out = tmp_path / "out"
    ema = ["--model-ema", "--model-ema-steps", "1", "--model-ema-decay", "0.9"]
    trained = run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "1", "--seed", "4", *ema,
                                    *FAST_ARGS])
    ema_line = next(ln for ln in trained.stdout.splitlines() if ln.startswith("Test: EMA Acc@1"))
    tested = run_train_in_process(["--data-path", data, "--resume", out / "checkpoint.pth", "--test-only", *ema,
                                   *FAST_ARGS])
    assert f"{ema_line} (6 images)" in tested.stdout and "Test: Acc@1" in tested.stdout
    plain = tmp_path / "plain"
    run_train_in_process(["--data-path", data, "--output-dir", plain, "--epochs", "1", *FAST_ARGS])
    refused = run_train_in_process(["--data-path", data, "--resume", plain / "checkpoint.pth", "--test-only", *ema,
                                    *FAST_ARGS], check=False)
    assert refused.returncode == 2 and "holds no EMA weights" in refused.stderr


def test_test_only_with_weights_uses_the_weights_own_preprocessing():
    """torchvision publishes ResNet50_Weights.IMAGENET1K_V2's 80.858% with resize 232, crop 224: --test-only
    --weights must score it that way, as the reference does, not with the --val-* defaults (256, 224)."""
    parse = train.get_args_parser().parse_args
    common = ["--data-path", "x", "--device", "cpu", "--weights", "ResNet50_Weights.IMAGENET1K_V2"]
    cfg = train.data_config(parse([*common, "--test-only"]), torch.device("cpu"), utils.DistInfo())
    assert (cfg.val_resize_size, cfg.val_crop_size, cfg.interpolation) == (232, 224, "bilinear")
    cfg = train.data_config(parse(common), torch.device("cpu"), utils.DistInfo())  # fine-tuning from them
    assert (cfg.val_resize_size, cfg.val_crop_size) == (256, 224)
    with pytest.raises(train.ConfigError, match="--weights ResNet50_Weights.NO_SUCH"):
        train.data_config(parse([*common[:-1], "ResNet50_Weights.NO_SUCH", "--test-only"]), torch.device("cpu"),
                          utils.DistInfo())


def test_resume_after_epoch_one_matches_uninterrupted_lr_trace_and_epochs(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=8, val_per_class=2)
    common = ["--data-path", data, "--epochs", "3", "--lr", "0.1", "--lr-warmup-epochs", "1",
              "--lr-warmup-method", "linear", "--lr-step-size", "1", "--lr-gamma", "0.5", "--seed", "3", *FAST_ARGS]
    straight = tmp_path / "straight"
    run_train_in_process([*common, "--output-dir", straight])
    part = tmp_path / "part"
    run_train_in_process([*common, "--output-dir", part, "--epochs", "1"])
    resumed = run_train_in_process([*common, "--output-dir", part, "--resume", part / "checkpoint.pth"])
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


# Options that go together share a run: each run checks that its options took effect in what the run wrote.
# What can be checked without a run (optimizer choice, weight-decay groups, clipping, the LR trace) is checked
# by the unit tests below instead.
@pytest.mark.parametrize("extra", [
    ["--amp", "--channels-last", "--model-ema", "--model-ema-steps", "1"],
    ["--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--label-smoothing", "0.1", "--ra-sampler", "--ra-reps", "2",
     "--auto-augment", "ta_wide", "--random-erase", "0.5", "--backend", "tensor", "--use-v2"],
    ["--backend", "fast", "--opt", "adamw", "--lr", "0.001", "--lr-scheduler", "cosineannealinglr",
     "--clip-grad-norm", "1.0"],
    ["--norm-weight-decay", "0", "--opt", "sgd_nesterov", "--use-deterministic-algorithms", "--seed", "0",
     "--lr-scheduler", "exponentiallr"],
], ids=["amp-nhwc-ema", "mixup-cutmix-smoothing-ra-autoaugment-erase-tensor-v2", "fast-adamw-cosine-clip",
        "norm-wd-nesterov-deterministic-exponential"])
def test_each_option_runs_a_short_epoch(tmp_path, extra, in_process, capsys):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=2)
    out = tmp_path / "out"
    assert in_process(["--data-path", str(data), "--output-dir", str(out), "--epochs", "1", *FAST_ARGS, *extra]) == 0
    stdout = capsys.readouterr().out
    assert "Test: Acc@1" in stdout
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    groups, state = ckpt["optimizer"]["param_groups"], ckpt["optimizer"]["state"]
    rec = read_metrics(out)[0]
    assert isinstance(rec["train_loss"], float) and math.isfinite(rec["train_loss"]), rec["train_loss"]
    if "--model-ema" in extra:
        assert "Test: EMA Acc@1" in stdout and "model_ema" in ckpt
        assert isinstance(rec["ema_acc1"], float)
    if "--amp" in extra:
        with open(out / "summary.json") as f:
            summary = json.load(f)
        assert summary["precision"] == "amp_bf16" and summary["memory_format"] == "channels_last"
    if "adamw" in extra:  # the optimizer --opt names, seen in its saved state: AdamW keeps moment estimates
        assert state and all("exp_avg" in s for s in state.values())
    if "sgd_nesterov" in extra:
        assert state and all("momentum_buffer" in s for s in state.values())
        assert all(g["nesterov"] for g in groups)
    if "--norm-weight-decay" in extra:  # (decay, parameter count) per group: BatchNorm's two tensors per layer
        bn_params = sum(2 for m in torchvision.models.resnet18().modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert min((g["weight_decay"], len(g["params"])) for g in groups) == (0.0, bn_params)


def test_label_smoothing_changes_the_training_loss(tmp_path, in_process, capsys):
    data = make_imagefolder(tmp_path / "data", classes=3, train_per_class=2, val_per_class=1)
    losses = {}
    for smoothing in ("0", "0.5"):
        out = tmp_path / f"out{smoothing}"
        assert in_process(["--data-path", str(data), "--output-dir", str(out), "--epochs", "1", *FAST_ARGS,
                           "--max-steps-per-epoch", "1", "--seed", "0", "--use-deterministic-algorithms",
                           "--label-smoothing", smoothing]) == 0
        losses[smoothing] = read_metrics(out)[0]["train_loss"]
    capsys.readouterr()
    # Same seed, same first batch and weights: only the targets differ, so the loss must too.
    assert abs(losses["0.5"] - losses["0"]) > 1e-3, losses


# ------------------------------------------------------------------------------------------------------------
# The pieces the options go through, without a run
# ------------------------------------------------------------------------------------------------------------
def build_optimizer(model, opt, **overrides):
    kwargs = dict(opt=opt, lr=0.1, momentum=0.9, weight_decay=1e-4, norm_weight_decay=None, bias_weight_decay=None,
                  transformer_embedding_decay=None, device=torch.device("cpu"))
    kwargs.update(overrides)
    return train.build_optimizer(model, **kwargs)


def test_build_optimizer_builds_the_named_optimizer():
    model = torch.nn.Linear(4, 3)
    sgd, nesterov = build_optimizer(model, "sgd"), build_optimizer(model, "sgd_nesterov")
    assert type(sgd) is torch.optim.SGD and not any(g["nesterov"] for g in sgd.param_groups)
    assert type(nesterov) is torch.optim.SGD and all(g["nesterov"] for g in nesterov.param_groups)
    assert nesterov.param_groups[0]["momentum"] == 0.9
    rmsprop = build_optimizer(model, "rmsprop")
    # The reference recipe's RMSprop (TF-style): alpha 0.9 and eps 0.0316.
    assert type(rmsprop) is torch.optim.RMSprop
    assert (rmsprop.param_groups[0]["alpha"], rmsprop.param_groups[0]["eps"]) == (0.9, 0.0316)
    assert type(build_optimizer(model, "adamw")) is torch.optim.AdamW
    with pytest.raises(SystemExit):  # an unknown optimizer never gets this far: the parser names the choices
        train.get_args_parser().parse_args(["--opt", "lamb"])


def test_norm_weight_decay_group_holds_exactly_the_batchnorm_parameters():
    model = torchvision.models.resnet18(num_classes=4)
    optimizer = build_optimizer(model, "sgd", norm_weight_decay=0.0)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert set(by_decay) == {0.0, 1e-4}
    assert by_decay[0.0] == bn
    assert by_decay[1e-4] == {id(p) for p in model.parameters()} - bn


def make_train_step(model, optimizer, schedule, *, clip_grad_norm=None, scaler=None):
    return train.TrainStep(model, torch.nn.CrossEntropyLoss(), optimizer, schedule=schedule,
                           scaler=scaler or torch.amp.GradScaler("cpu", enabled=False),
                           autocast=contextlib.nullcontext, device=torch.device("cpu"), clip_grad_norm=clip_grad_norm)


def grad_norm(model):
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "grad-scaler"])
def test_clip_grad_norm_clips_the_gradients_the_optimizer_uses(scaled):
    images, target = torch.randn(8, 16) * 50, torch.randint(0, 4, (8,))  # large inputs: large gradients
    norms = {}
    for clip in (None, 0.5):
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay, the gradients remain
        schedule = utils.LRSchedule(name="steplr", epochs=1, iters_per_epoch=1, base_lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
        make_train_step(model, optimizer, schedule, clip_grad_norm=clip, scaler=scaler)(images, target, 0, 0)
        norms[clip] = grad_norm(model)
    assert norms[None] > 5.0, "the test needs gradients far above the clipping norm"
    assert norms[0.5] == pytest.approx(0.5, rel=1e-4)  # clipped to the norm, and unscaled first


@pytest.mark.parametrize("scheduler", ["steplr", "cosineannealinglr"])
def test_lr_trace_through_train_step_matches_closed_form_per_iteration(scheduler):
    """--lr-warmup-epochs 2, linear warmup from 0.01 x lr, applied per iteration (Goyal et al. 2017, "Accurate,
    Large Minibatch SGD"), then the main schedule counted from the end of warmup (torchvision's SequentialLR)."""
    epochs, iters, base = 6, 3, 0.4
    args = train.get_args_parser().parse_args([
        "--data-path", "unused", "--epochs", str(epochs), "--lr", str(base), "--lr-scheduler", scheduler,
        "--lr-warmup-epochs", "2", "--lr-warmup-method", "linear", "--lr-warmup-decay", "0.01",
        "--lr-step-size", "2", "--lr-gamma", "0.1"])
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=base)
    step = make_train_step(model, optimizer, train.build_lr_schedule(args, iters))
    images, target = torch.randn(2, 4), torch.tensor([0, 1])
    seen = []
    for epoch in range(epochs):
        for i in range(iters):
            _, _, _, lr = step(images, target, epoch, i)
            assert optimizer.param_groups[0]["lr"] == lr
            seen.append(lr)

    def expected(epoch, i):
        if epoch < 2:
            return base * (0.01 + 0.99 * (epoch * iters + i) / (2 * iters))
        e = epoch - 2
        if scheduler == "steplr":
            return base * 0.1 ** (e // 2)
        return base * (1 + math.cos(math.pi * e / (epochs - 2))) / 2

    assert seen == pytest.approx([expected(e, i) for e in range(epochs) for i in range(iters)], rel=1e-12)


def test_resnet50_default_model_trains_a_step(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1, size=32)
    out = tmp_path / "out"
    args = [a for a in FAST_ARGS if a != "resnet18"]
    args.remove("--model")
    proc = run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "1", "--batch-size", "2", *args])
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
    proc = run_train_in_process(["--data-path", root, "--output-dir", tmp_path / "out", *FAST_ARGS], check=False)
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
    with pytest.raises(train.ConfigError, match="--sync-bn needs an accelerator"):
        train.validate_args(args)


@pytest.mark.parametrize("backend", ["pil", "fast"])
def test_progressive_resizing_with_one_size_trains_at_that_size(backend, tmp_path):
    """--min-res R --max-res R replaces --train-crop-size (224 by default) for every backend."""
    import data

    folder = make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1, size=48)
    args = train.get_args_parser().parse_args(["--data-path", folder, "--backend", backend, "--min-res", "32",
                                               "--max-res", "32", "--epochs", "2", "-b", "4", "--workers", "0", "--seed", "0"])
    cfg = train.data_config(args, torch.device("cpu"), utils.DistInfo())
    loaders = data.build_data_loaders(cfg, rank=0, world_size=1)
    loaders.set_train_size(32)  # what every epoch of train_epochs does
    batches = data.make_device_loader(loaders.train, cfg, torch.device("cpu"), train=True, channels_last=False)
    assert {tuple(images.shape[-2:]) for images, _, _ in batches} == {(32, 32)}
