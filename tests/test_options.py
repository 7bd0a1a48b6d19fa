"""Every option is checked where it is declared: a bad value ends with one line naming the option, exit code 2,
before any process group, worker or model starts. NaN and infinity are never valid numbers."""

import re
import subprocess

import pytest

import options
import train
from conftest import TEST_ENV, train_cmd


def numeric_options():
    """(flag, a valid value, how many values it takes) for every option that takes numbers."""
    parser = train.get_args_parser()
    found = []
    for action in parser._actions:
        if getattr(action.type, "__name__", None) in ("int", "float") and action.option_strings:
            flag = max(action.option_strings, key=len)
            found.append((flag, action.default if action.default is not None else 1, action.nargs or 1))
    return found


def test_every_numeric_option_is_typed():
    flags = {flag for flag, _, _ in numeric_options()}
    assert len(flags) >= 35
    assert {"--lr", "--mixup-alpha", "--train-crop-size", "--label-smoothing", "--clip-grad-norm",
            "--dist-timeout", "--workers", "--seed", "--target-acc", "--model-ema-decay"} <= flags


@pytest.mark.parametrize("flag,valid,count", numeric_options())
@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "abc"])
def test_bad_numbers_end_with_one_line_naming_the_option(flag, valid, count, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        train.get_args_parser().parse_args([flag, *[bad] * count])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    args = train.get_args_parser().parse_args([flag, *[str(valid)] * count])  # and the default itself is accepted
    value = getattr(args, train.get_args_parser()._option_string_actions[flag].dest)
    assert value == (valid if count == 1 else [valid] * count)


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "0"], "--lr: must be > 0, got 0"),
    (["--label-smoothing", "1"], "--label-smoothing: must be in [0, 1), got 1"),
    (["--augmix-severity", "11"], "--augmix-severity: must be in [1, 10], got 11"),
    (["--epochs", "2.5"], "--epochs: expected a whole number >= 1, got '2.5'"),
    (["--opt", "lamb"], "--opt: invalid choice: 'lamb'"),
    (["--lr-scheduler", "onecycle"], "cosineannealinglr"),  # the choices are listed
    (["--backend", "dali"], "--backend: invalid choice"),
    (["--compile-mode", "fast"], "--compile-mode: invalid choice"),
    (["--interpolation", "cubic"], "--interpolation: invalid choice"),
])
def test_rules_and_choices_are_named(argv, needle, capsys):
    with pytest.raises(SystemExit):
        train.get_args_parser().parse_args(argv)
    assert needle in capsys.readouterr().err


def test_choices_accept_any_case():
    args = train.get_args_parser().parse_args(["--opt", "SGD_Nesterov", "--backend", "FAST", "--interpolation",
                                               "Bicubic"])
    assert (args.opt, args.backend, args.interpolation) == ("sgd_nesterov", "fast", "bicubic")


def test_fast_backend_interpolations_are_checked_with_the_options():
    args = train.get_args_parser().parse_args(["--data-path", "x", "--device", "cpu", "--backend", "fast",
                                               "--interpolation", "nearest"])
    with pytest.raises(train.ConfigError, match="--interpolation nearest is not supported by --backend fast"):
        train.validate_args(args)


@pytest.mark.parametrize("pipeline", [["--backend", "fast"], ["--decode-device", "cuda"]])
def test_augmentations_the_uint8_pipelines_lack_are_refused_not_dropped(pipeline, monkeypatch):
    """--backend fast and --decode-device cuda (with any --backend) have no auto-augment or random erasing: a run
    asking for them must stop before training instead of training without them."""
    monkeypatch.setattr(options.accelerator, "is_nvidia", lambda device: True)  # pass the GPU check on this CPU
    name = " ".join(pipeline)
    parse = train.get_args_parser().parse_args
    base = ["--data-path", "x", "--device", "cpu", "--backend", "pil", *pipeline]
    for extra, message in [(["--auto-augment", "ta_wide"], f"--auto-augment ta_wide: {name} crops, resizes and "
                                                           "flips only; use --backend pil"),
                           (["--random-erase", "0.25", "--auto-augment", "ra"],
                            f"--auto-augment ra and --random-erase 0.25: {name} crops"),
                           (["--interpolation", "nearest"], f"--interpolation nearest is not supported by {name}")]:
        with pytest.raises(train.ConfigError, match=re.escape(message)):
            train.validate_args(parse([*base, *extra]))
    train.validate_args(parse([*base, "--interpolation", "bicubic", "--use-v2"]))  # what they do support
    train.validate_args(parse(["--data-path", "x", "--device", "cpu", "--auto-augment", "ta_wide",
                               "--random-erase", "0.25"]))  # the pil preset applies both


def test_a_user_sees_one_line_and_exit_code_2():
    proc = subprocess.run(train_cmd(["--data-path", "x", "--lr", "nan"]), capture_output=True, text=True,
                          env={**__import__("os").environ, **TEST_ENV}, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["train.py: error: argument --lr: must be > 0, got nan (see --help)"]


def test_lr_per_256_is_the_linear_scaling_rule_with_warmup_and_explicit_values_win():
    """--lr-per-256 (what the launch scripts pass) resolves once the global batch is known; without it the lr and
    warmup are torchvision's defaults."""
    def resolved(argv, world_size):
        args = train.get_args_parser().parse_args(argv)
        note = options.resolve_lr(args, world_size)
        return args.lr, args.lr_warmup_epochs, note

    lr, warmup, note = resolved(["--lr-per-256", "0.1", "-b", "64"], 8)
    assert (lr, warmup) == (pytest.approx(0.2), 5)
    assert note == "global batch 512 (8 process(es) x 64), lr 0.2 (0.1 x 512 / 256), warmup 5 epochs"
    assert resolved(["--lr-per-256", "0.1", "-b", "32"], 8)[:2] == (pytest.approx(0.1), 0)  # 256: no warmup
    assert resolved(["-b", "512"], 8)[:2] == (0.1, 0)  # no rule: torchvision's defaults whatever the batch
    lr, warmup, note = resolved(["--lr-per-256", "0.1", "--lr", "0.5", "--lr-warmup-epochs", "2", "-b", "512"], 8)
    assert (lr, warmup) == (0.5, 2) and "lr 0.5 (given), warmup 2 epochs" in note
