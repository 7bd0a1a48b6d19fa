"""The input pipeline factory: every backend yields normalized batches on the device; the device-decode path
(nvJPEG on CUDA) run with the CPU as the device gives the same batch as the CPU-side uint8 path."""

import os

import pytest
import torch

import data
import datasets
import presets
from conftest import make_imagefolder


def first_batch(cfg, channels_last=False):
    loaders = data.build_data_loaders(cfg, rank=0, world_size=1)
    loaders.train_sampler.set_epoch(0)
    dl = data.make_device_loader(loaders.train, cfg, torch.device("cpu"), train=True, channels_last=channels_last)
    return next(iter(dl)), loaders


@pytest.fixture
def folder(tmp_path):
    return make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=2, size=48)


def cfg_for(folder, **kw):
    base = dict(data_path=folder, batch_size=4, workers=0, train_crop_size=32, val_resize_size=36, val_crop_size=32,
                seed=5)
    base.update(kw)
    return data.DataConfig(**base)


@pytest.mark.parametrize("backend", ["pil", "tensor", "fast"])
def test_every_backend_gives_normalized_float_batches(folder, backend):
    (images, targets, n_bad), _ = first_batch(cfg_for(folder, backend=backend), channels_last=True)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert targets.dtype == torch.int64 and n_bad.sum() == 0
    assert -3.0 < images.mean().item() < 3.0 and images.std().item() > 0.05


def test_device_decode_on_cpu_matches_cpu_side_fast_path(folder):
    (fast, t_fast, _), _ = first_batch(cfg_for(folder, backend="fast"))
    (dev, t_dev, _), _ = first_batch(cfg_for(folder, backend="fast", decode_on_device=True))
    assert torch.equal(t_fast, t_dev)
    # Same crop parameters (same per-sample seeds); the decoders differ only in rounding.
    diff = (fast - dev).abs() * torch.tensor(presets.IMAGENET_STD).view(1, 3, 1, 1) * 255
    assert diff.mean().item() < 2.0, diff.mean().item()


def test_device_decode_skip_replaces_a_corrupt_jpeg_and_counts_it(tmp_path):
    folder = make_imagefolder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1, size=40)
    bad = os.path.join(folder, "train", "class00", "img000.JPEG")
    with open(bad, "rb") as f:
        good_bytes = f.read()
    with open(bad, "wb") as f:  # a JPEG header with garbage after it: only a real decode finds out
        f.write(good_bytes[:200] + b"\x00" * 50)
    cfg = cfg_for(folder, backend="fast", decode_on_device=True, bad_images="skip")
    (images, targets, n_bad), _ = first_batch(cfg)
    assert images.shape[0] == 4 and int(n_bad.sum()) == 1
    cfg = cfg_for(folder, backend="fast", decode_on_device=True, bad_images="error")
    with pytest.raises(datasets.BadImageError, match="img000.JPEG"):
        first_batch(cfg)


def test_val_loader_covers_each_image_once(folder):
    loaders = data.build_data_loaders(cfg_for(folder, backend="fast"), rank=0, world_size=1)
    dl = data.make_device_loader(loaders.val, cfg_for(folder), torch.device("cpu"), train=False,
                                 channels_last=False)
    assert sum(b[0].shape[0] for b in dl) == 4


def test_too_small_dataset_for_one_global_batch_is_a_clear_error(folder):
    with pytest.raises(datasets.DataError, match="fewer than one global batch"):
        data.build_data_loaders(cfg_for(folder, batch_size=8), rank=0, world_size=2)


def test_pipeline_benchmark_generates_its_images_with_the_project_generator(tmp_path):
    """benchmarks/data_pipeline.py without --data: ImageNet-like files from scripts/make_demo_data.py."""
    from PIL import Image

    paths = _pipeline_benchmark().generate_images(str(tmp_path), 5, seed=3)
    assert len(paths) == len(set(paths)) == 5
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "JPEG" and max(im.size) == 500 and min(im.size) == 375
    assert os.path.isfile(tmp_path / "photos" / ".demo_complete.json")


def _pipeline_benchmark():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("data_pipeline_benchmark",
                                                  os.path.join(REPO, "benchmarks", "data_pipeline.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _run_pipeline_benchmark(tmp_path, *extra):
    """benchmarks/data_pipeline.py on 8 tiny JPEGs (one grayscale), one round, no DataLoader part."""
    from test_transforms import jpeg_bytes

    for i in range(8):
        folder = tmp_path / "data" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i}.JPEG").write_bytes(jpeg_bytes(40, 56, seed=i, mode="L" if i == 3 else "RGB"))
    threads = torch.get_num_threads()
    try:
        return _pipeline_benchmark().main(["--data", str(tmp_path / "data"), "--num-images", "8", "--batch-size", "4",
                                           "--rounds", "2", "--crop-size", "24", "--workers", "0", *extra])
    finally:
        torch.set_num_threads(threads)  # the script pins one thread for its measurement


def test_pipeline_benchmark_without_dali_says_why_and_profiles_ours(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as where DALI is not installed
    affinity = os.sched_getaffinity(0)
    result = _run_pipeline_benchmark(tmp_path, "--profile")
    out = capsys.readouterr().out
    assert os.sched_getaffinity(0) == affinity  # pinned to one core for the rounds only
    assert result["dali"] is False and result["dali_skipped"].startswith("DALI is not installed")
    assert "pip install nvidia-dali-cuda130" in result["dali_skipped"]
    lines = out.splitlines()
    assert any(line.startswith("reference (torchvision preset, PIL)") for line in lines)
    ours = next(line for line in lines if line.startswith("ours (FastTrainTransform + normalize)"))
    assert f"{result['ratio_cpu']:.2f}x the reference" in ours
    assert any(line.startswith("DALI CPU") and "skipped: DALI is not installed" in line for line in lines)
    assert result["reference_img_per_cpu_s"] > 0 and result["fast_img_per_cpu_s"] > 0
    assert len(result["ratio_cpu_per_round"]) == 2
    profile = result["profile"]
    assert profile[0].startswith("cProfile of ours, 8 images") and len(profile) > 3
    assert "\n".join(profile) in out


def test_pipeline_benchmark_measures_dali_side_by_side(tmp_path, capsys):
    pytest.importorskip("nvidia.dali", reason="DALI is not installed (pip install nvidia-dali-cuda130); it is "
                                              "not a dependency")
    result = _run_pipeline_benchmark(tmp_path)
    out = capsys.readouterr().out
    assert result["dali"] is True and result["dali_img_per_cpu_s"] > 0
    assert len(result["ratio_cpu_vs_dali_per_round"]) == 2 and result["ratio_cpu_vs_dali"] > 0
    dali = next(line for line in out.splitlines() if line.startswith("DALI CPU (image_random_crop, 1 thread)"))
    assert f"ours {result['ratio_cpu_vs_dali']:.2f}x DALI" in dali
