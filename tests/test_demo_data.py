"""Tests for scripts/make_demo_data.py: layout, real JPEGs, determinism, atomic/skip logic, for both kinds
(learnable shapes, ImageNet-like photos)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_demo_data.py"


@pytest.fixture(scope="module")
def demo():
    """The generator as a module, imported by name as benchmarks/data_pipeline.py does (scripts/ is not a
    package), so that its spawned pool workers can import it too."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.append(str(SCRIPT.parent))
    return importlib.import_module("make_demo_data")


def _digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_counts_and_real_jpegs(demo, tmp_path):
    out = demo.make_demo_dataset(tmp_path / "d", classes=4, train_per_class=3, val_per_class=2, size=32, seed=0)
    assert out == tmp_path / "d"
    expected_classes = ["circle", "square", "triangle", "hstripes"]
    for split, per_class in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(expected_classes)
        for name in expected_classes:
            files = sorted((out / split / name).iterdir())
            assert len(files) == per_class
            for f in files:
                assert f.suffix == ".JPEG"
                assert f.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG magic, not a PNG renamed
                with Image.open(f) as im:
                    assert im.format == "JPEG"
                    assert im.mode == "RGB"
                    assert im.size == (32, 32)
    # Nothing besides train/, val/ and the completion marker; no leftover partial folder.
    assert sorted(p.name for p in out.iterdir()) == sorted(["train", "val", demo.MARKER_NAME])
    assert not (tmp_path / "d.partial").exists()


def test_torchvision_imagefolder_reads_it(demo, tmp_path):
    from torchvision import datasets

    out = demo.make_demo_dataset(tmp_path / "d", classes=3, train_per_class=2, val_per_class=1, size=16)
    train = datasets.ImageFolder(str(out / "train"))
    val = datasets.ImageFolder(str(out / "val"))
    assert train.classes == sorted(["circle", "square", "triangle"])
    assert len(train) == 6 and len(val) == 3
    image, label = train[0]
    assert image.size == (16, 16) and label == 0


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    kwargs = dict(classes=3, train_per_class=2, val_per_class=1, size=24)
    a = _digests(demo.make_demo_dataset(tmp_path / "a", seed=7, **kwargs))
    b = _digests(demo.make_demo_dataset(tmp_path / "b", seed=7, **kwargs))
    c = _digests(demo.make_demo_dataset(tmp_path / "c", seed=8, **kwargs))
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".JPEG")]
    assert all(a[k] != c[k] for k in images)


def test_images_vary_within_a_class(demo, tmp_path):
    out = demo.make_demo_dataset(tmp_path / "d", classes=2, train_per_class=4, val_per_class=1, size=32)
    arrays = [np.asarray(Image.open(f), dtype=np.float32) for f in sorted((out / "train" / "circle").iterdir())]
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert np.abs(arrays[i] - arrays[j]).mean() > 5.0


def test_every_pattern_draws_something(demo):
    """Each class must show a visible pattern: a flat image would be unlearnable."""
    for index, name in enumerate(demo.PATTERNS):
        image = demo.render_image(index, 48, np.random.default_rng([0, index]))
        pixels = np.asarray(image, dtype=np.float32)
        assert pixels.shape == (48, 48, 3), name
        # Spread well beyond the noise (sigma <= 20) means foreground and background both show.
        assert pixels.reshape(-1, 3).std(axis=0).max() > 25.0, name


def test_complete_output_is_skipped(demo, tmp_path):
    kwargs = dict(classes=2, train_per_class=2, val_per_class=1, size=16, seed=3)
    out = demo.make_demo_dataset(tmp_path / "d", **kwargs)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    (out / "keep.txt").write_text("a file the generator must not remove")
    assert demo.make_demo_dataset(tmp_path / "d", **kwargs) == out
    assert (out / "keep.txt").exists()
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_existing_folder_with_other_settings_is_refused(demo, tmp_path):
    demo.make_demo_dataset(tmp_path / "d", classes=2, train_per_class=2, val_per_class=1, size=16, seed=0)
    with pytest.raises(FileExistsError, match="not a complete demo set"):
        demo.make_demo_dataset(tmp_path / "d", classes=2, train_per_class=2, val_per_class=1, size=16, seed=1)
    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="delete it or choose another OUT"):
        demo.make_demo_dataset(foreign, classes=2, train_per_class=1, val_per_class=1, size=16)
    assert (foreign / "train").is_dir()  # refused, not deleted


def test_missing_images_make_it_incomplete(demo, tmp_path):
    kwargs = dict(classes=2, train_per_class=2, val_per_class=1, size=16, seed=0)
    out = demo.make_demo_dataset(tmp_path / "d", **kwargs)
    settings = demo._settings(2, 2, 1, 16, 0)
    assert demo.is_complete(out, settings)
    next((out / "val" / "square").iterdir()).unlink()
    assert not demo.is_complete(out, settings)
    with pytest.raises(FileExistsError):
        demo.make_demo_dataset(out, **kwargs)


def test_interrupted_run_leaves_no_output_and_recovers(demo, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_render = demo.render_image

    def failing_render(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        return real_render(*args, **kwargs)

    monkeypatch.setattr(demo, "render_image", failing_render)
    with pytest.raises(KeyboardInterrupt):
        demo.make_demo_dataset(tmp_path / "d", classes=2, train_per_class=2, val_per_class=1, size=16)
    assert not (tmp_path / "d").exists()
    assert (tmp_path / "d.partial").exists()

    monkeypatch.setattr(demo, "render_image", real_render)
    out = demo.make_demo_dataset(tmp_path / "d", classes=2, train_per_class=2, val_per_class=1, size=16)
    assert len(list(out.rglob("*.JPEG"))) == 6
    assert not (tmp_path / "d.partial").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(classes=1), "--classes must be 2.."),
        (dict(classes=99), "--classes must be 2.."),
        (dict(train_per_class=0), "--train-per-class and --val-per-class must be >= 1"),
        (dict(val_per_class=0), "--train-per-class and --val-per-class must be >= 1"),
        (dict(size=8), "--size must be >= 16"),
    ],
)
def test_bad_settings_are_rejected(demo, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        demo.make_demo_dataset(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_default_size_is_a_few_hundred_images(demo):
    import inspect

    defaults = inspect.signature(demo.make_demo_dataset).parameters
    total = defaults["classes"].default * (defaults["train_per_class"].default + defaults["val_per_class"].default)
    assert 200 <= total <= 1000
    assert defaults["size"].default == 64


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, str(SCRIPT), str(out), "--classes", "2", "--train-per-class", "2", "--val-per-class", "1", "--size", "16"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "wrote 6 images" in first.stdout
    assert len(list(out.rglob("*.JPEG"))) == 6
    second = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "already complete" in second.stdout
    bad = subprocess.run(args[:3] + ["--seed", "5"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "delete it or choose another OUT" in bad.stderr
    bad_size = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "x"), "--size", "4"], capture_output=True, text=True, timeout=60)
    assert bad_size.returncode == 2
    assert "--size must be >= 16" in bad_size.stderr


def test_classes_are_learnable(demo, tmp_path):
    """A tiny CNN must beat chance clearly within seconds, or the demo cannot show learning."""
    import torch
    from torch import nn

    out = demo.make_demo_dataset(tmp_path / "d", classes=10, train_per_class=20, val_per_class=6, size=16, seed=0)

    def load(split):
        xs, ys = [], []
        for label, name in enumerate(list(demo.PATTERNS)[:10]):
            for f in sorted((out / split / name).iterdir()):
                xs.append(np.asarray(Image.open(f), dtype=np.float32) / 255.0)
                ys.append(label)
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)
        # Per-image normalisation: colours are random, so only the pattern should matter.
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return x, torch.tensor(ys)

    x_train, y_train = load("train")
    x_val, y_val = load("val")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x_val).argmax(dim=1) == y_val).float().mean().item()
    assert accuracy > 0.3, f"val accuracy {accuracy:.2f} is too close to chance (0.10)"


# ---------------------------------------------------------------------------------------
# --kind photo: ImageNet-like files for the benchmarks
# ---------------------------------------------------------------------------------------

PHOTO = dict(classes=2, train_per_class=3, val_per_class=1, seed=0)


def test_photo_kind_writes_imagenet_like_jpegs(demo, tmp_path):
    out = demo.make_photo_dataset(tmp_path / "p", workers=1, gray_fraction=0.0, **PHOTO)
    files = sorted(out.rglob("*.JPEG"))
    assert len(files) == 8
    assert sorted(p.name for p in (out / "train").iterdir()) == ["class000", "class001"]
    sizes, qualities = set(), set()
    for f in files:
        assert f.read_bytes()[:3] == b"\xff\xd8\xff"
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            sizes.add(im.size)
            pixels = np.asarray(im, dtype=np.float32)
            qualities.add(tuple(im.quantization[0][:8]))  # the luminance table follows the quality
        assert pixels.std() > 15.0, f  # a picture, not a flat field
    assert sizes <= {(500, 375), (375, 500)}
    assert len(qualities) > 1  # qualities vary between files
    # Realistic file sizes: ImageNet's JPEGs average ~110 KB; a flat or pure-noise file would be far off.
    mean_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
    assert 20 < mean_kb < 250, mean_kb
    marker = json.loads((out / demo.MARKER_NAME).read_text())
    expected = "photos" if importlib.util.find_spec("skimage") else "noise"
    assert marker["kind"] == "photo" and marker["content"] == expected
    assert demo.is_complete(out, marker)


def test_photo_kind_is_the_same_with_a_spawned_pool(demo, tmp_path):
    """Workers are started by spawn (fresh interpreters that import the module): the files do not depend on
    how many write them."""
    one = _digests(demo.make_photo_dataset(tmp_path / "one", workers=1, size=96, **PHOTO))
    two = _digests(demo.make_photo_dataset(tmp_path / "two", workers=2, size=96, **PHOTO))
    assert one == two and len([k for k in one if k.endswith(".JPEG")]) == 8
    other = _digests(demo.make_photo_dataset(tmp_path / "other", workers=1, size=96, **dict(PHOTO, seed=1)))
    assert all(other[k] != one[k] for k in one if k.endswith(".JPEG"))


def test_photo_kind_grayscale_and_cmyk_files(demo, tmp_path):
    out = demo.make_photo_dataset(tmp_path / "p", classes=2, train_per_class=10, val_per_class=1, size=64,
                                  workers=1, gray_fraction=0.3, cmyk_fraction=0.3)
    modes = [Image.open(f).mode for f in sorted(out.rglob("*.JPEG"))]
    assert {"RGB", "L", "CMYK"} <= set(modes)


def test_photo_kind_interrupted_run_leaves_no_output(demo, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write = demo._write_photo

    def failing_write(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(task)

    monkeypatch.setattr(demo, "_write_photo", failing_write)
    with pytest.raises(KeyboardInterrupt):
        demo.make_photo_dataset(tmp_path / "p", workers=1, size=64, **PHOTO)
    assert not (tmp_path / "p").exists() and (tmp_path / "p.partial").exists()
    monkeypatch.setattr(demo, "_write_photo", real_write)
    out = demo.make_photo_dataset(tmp_path / "p", workers=1, size=64, **PHOTO)
    assert len(list(out.rglob("*.JPEG"))) == 8 and not (tmp_path / "p.partial").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(classes=1), "--classes must be 2..1000"),
        (dict(size=20), "--size \\(the long side\\) must be >= 32"),
        (dict(val_per_class=0), "--train-per-class and --val-per-class must be >= 1"),
        (dict(gray_fraction=0.8, cmyk_fraction=0.5), "sum to at most 1"),
    ],
)
def test_photo_kind_bad_settings_are_rejected(demo, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        demo.make_photo_dataset(tmp_path / "p", **{**PHOTO, "workers": 1, **kwargs})
    assert not (tmp_path / "p").exists()


def test_photo_kind_command_line(tmp_path):
    """The benchmarks' call: spawned workers from the script run as __main__, then reuse, then refusal of a
    folder made with other settings (here: the shapes kind)."""
    out = tmp_path / "photo"
    args = [sys.executable, str(SCRIPT), str(out), "--kind", "photo", "--classes", "2", "--train-per-class", "3",
            "--val-per-class", "1", "--size", "64", "--workers", "2"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "wrote 8 ImageNet-like JPEGs (2 classes, 64x48 and 48x64" in first.stdout
    assert len(list(out.rglob("*.JPEG"))) == 8
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already complete" in again.stdout
    shapes = subprocess.run([sys.executable, str(SCRIPT), str(out), "--classes", "2", "--train-per-class", "3",
                             "--val-per-class", "1"], capture_output=True, text=True, timeout=60)
    assert shapes.returncode == 2 and "delete it or choose another OUT" in shapes.stderr
    bad = subprocess.run(args[:3] + ["--kind", "photo", "--size", "8"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--size (the long side) must be >= 32" in bad.stderr
