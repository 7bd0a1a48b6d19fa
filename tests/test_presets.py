"""Tests for presets.py: shapes, dtypes, normalization and the options that choose them."""

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from presets import (  # noqa: E402
    AUTO_AUGMENT_POLICIES,
    BACKENDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationPresetEval,
    ClassificationPresetTrain,
)

CROP = 32
# Extremes a normalized pixel can reach: (0 - mean) / std and (1 - mean) / std.
LOW = min(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
HIGH = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))


@pytest.fixture
def jpeg(tmp_path):
    """A real 48x40 JPEG of smooth colour gradients plus noise, opened as RGB."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:40, 0:48]
    pixels = np.stack([xs * 5, ys * 6, (xs + ys) * 3], axis=-1).astype(np.float64)
    pixels += rng.normal(0, 12, pixels.shape)
    path = tmp_path / "sample.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    with Image.open(path) as img:
        return img.convert("RGB")


def _check_output(out, size=CROP):
    assert isinstance(out, torch.Tensor) and type(out) is torch.Tensor, "must be a plain tensor"
    assert out.shape == (3, size, size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= LOW - 1e-4 and out.max() <= HIGH + 1e-4
    assert out.min() < 0, "output does not look normalized (no negative values)"


@pytest.mark.parametrize("use_v2", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy", (None,) + AUTO_AUGMENT_POLICIES)
def test_train_preset_each_policy_backend_version(jpeg, policy, backend, use_v2):
    preset = ClassificationPresetTrain(crop_size=CROP, auto_augment_policy=policy, backend=backend,
                                       use_v2=use_v2)
    torch.manual_seed(0)
    _check_output(preset(jpeg))


@pytest.mark.parametrize("use_v2", [False, True])
@pytest.mark.parametrize("policy", [None, "ra", "augmix"])
def test_train_preset_reproducible_under_torch_seed(jpeg, policy, use_v2):
    """Per-sample seeding relies on every random draw coming from torch's RNG."""
    preset = ClassificationPresetTrain(crop_size=CROP, auto_augment_policy=policy, use_v2=use_v2)
    outs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        outs.append(preset(jpeg))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_train_preset_without_augment_is_normalized_crop(jpeg):
    """With flip off and no policy, channel means match the normalized source closely."""
    preset = ClassificationPresetTrain(crop_size=CROP, hflip_prob=0.0)
    assert not any("Flip" in type(op).__name__ for op in preset.transforms.transforms)
    source = torch.from_numpy(np.array(jpeg)).permute(2, 0, 1).float() / 255
    torch.manual_seed(1)
    out = preset(jpeg)
    # Undo normalization: values must come back inside [0, 1] and near the source's range.
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    restored = out * std + mean
    assert restored.min() >= -1e-4 and restored.max() <= 1 + 1e-4
    assert restored.mean() == pytest.approx(source.mean().item(), abs=0.2)


@pytest.mark.parametrize("use_v2", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_erasing(jpeg, backend, use_v2):
    erasing = ClassificationPresetTrain(crop_size=CROP, random_erase_prob=1.0, backend=backend, use_v2=use_v2)
    plain = ClassificationPresetTrain(crop_size=CROP, random_erase_prob=0.0, backend=backend, use_v2=use_v2)
    torch.manual_seed(2)
    erased = erasing(jpeg)
    torch.manual_seed(2)
    clean = plain(jpeg)
    assert erased.shape == clean.shape == (3, CROP, CROP)
    # No uint8 pixel normalizes to exactly 0 with ImageNet statistics, so zeros mean erased.
    assert (clean == 0).sum() == 0
    assert (erased == 0).sum() >= 3 * 16
    assert "RandomErasing" in repr(erasing) and "RandomErasing" not in repr(plain)


@pytest.mark.parametrize("use_v2", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_preset_shape_and_determinism(jpeg, backend, use_v2):
    preset = ClassificationPresetEval(crop_size=CROP, resize_size=36, backend=backend, use_v2=use_v2)
    out = preset(jpeg)
    _check_output(out)
    assert torch.equal(out, preset(jpeg)), "evaluation must not be random"


def test_eval_backends_and_versions_agree(jpeg):
    outs = [ClassificationPresetEval(crop_size=CROP, resize_size=36, backend=backend, use_v2=use_v2)(jpeg)
            for backend in BACKENDS for use_v2 in (False, True)]
    for out in outs[1:]:
        assert (out - outs[0]).abs().mean() < 0.05


def test_eval_center_crop_location(tmp_path):
    """Resize keeps the aspect ratio and the crop is centered: a centered square survives."""
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, 20:60] = 255  # white 40x40 square in the middle of a black 40x80 image
    path = tmp_path / "square.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    with Image.open(path) as img:
        out = ClassificationPresetEval(crop_size=16, resize_size=20)(img.convert("RGB"))
    assert out.shape == (3, 16, 16)
    # Resized to 20x40, the square covers columns 10..30, i.e. the whole 16x16 center crop.
    assert out.min() > HIGH - 0.5


def test_interpolation_by_name(jpeg):
    preset = ClassificationPresetEval(crop_size=CROP, resize_size=36, interpolation="bicubic")
    assert "bicubic" in repr(preset).lower()
    _check_output(preset(jpeg))


def test_custom_mean_std(jpeg):
    out = ClassificationPresetEval(crop_size=CROP, resize_size=36, mean=(0.0,) * 3, std=(1.0,) * 3)(jpeg)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("argv,needle", [
    (["--backend", "opencv"], "--backend: invalid choice: 'opencv'"),
    (["--auto-augment", "randaug"], "(choose from 'ra', 'ta_wide', 'augmix', 'imagenet', 'cifar10', 'svhn')"),
    (["--random-erase", "1.5"], "--random-erase: must be in [0, 1], got 1.5"),
    (["--interpolation", "cubic"], "--interpolation: invalid choice: 'cubic' (choose from 'nearest', "),
])
def test_bad_preset_options_are_refused_by_the_command_line(argv, needle, capsys):
    import train

    with pytest.raises(SystemExit) as exc:
        train.get_args_parser().parse_args(argv)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_interpolation_mode_passthrough():
    preset = ClassificationPresetTrain(crop_size=CROP, interpolation=InterpolationMode.NEAREST,
                                       auto_augment_policy="ta_wide")
    assert "nearest" in repr(preset).lower()
