"""--decode-device: device_decode.DeviceDecoder and DeviceLoader's decode thread, with the CPU as the device (the
same code; nvImageCodec's CPU backend stands in for nvJPEG, and there are no streams), on real JPEG files."""

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import accelerator
import data
import datasets
import device_decode
import train
from conftest import FAST_ARGS, make_imagefolder, run_train_in_process

CPU = torch.device("cpu")


def config(root, **overrides):
    settings = dict(data_path=root, backend="fast", batch_size=4, workers=0, train_crop_size=32, val_resize_size=40,
                    val_crop_size=32, seed=3)
    return data.DataConfig(**{**settings, **overrides})


def loader_batches(cfg, train=True):
    """One epoch of the DataLoader's batches: uint8 images from the CPU transforms, or the workers' encoded items
    with decode_on_device."""
    loaders = data.build_data_loaders(cfg, rank=0, world_size=1)
    loaders.train_sampler.set_epoch(0)
    return list(loaders.train if train else loaders.val)


def decoder_for(train, gpu_layout=False):
    decoder = device_decode.DeviceDecoder(crop_size=32, device=CPU, resize_size=None if train else 40)
    if gpu_layout:  # what CUDA runs: planar decode, float resampling, the batch rounded once
        decoder._gpu_layout, decoder._params = True, device_decode._decode_params(decoder._nvimgcodec, planar=True)
    return decoder


class ZeroingDecoder:
    """nvImageCodec's batch decoder, returning the images at `zeroed` all zero without an error, as nvJPEG's
    batched decode has done on some GPUs; records each call's output shapes."""

    def __init__(self, real, zeroed=()):
        self.real, self.zeroed, self.shapes = real, set(zeroed), []

    def decode(self, streams, **kwargs):
        images = [np.asarray(image) if image is not None else None for image in self.real.decode(streams, **kwargs)]
        self.shapes.append([image.shape[:2] for image in images])
        return [np.zeros_like(image) if i in self.zeroed else image for i, image in enumerate(images)]


def loader_threads():
    return [t for t in threading.enumerate() if t.name == "device-loader"]


@pytest.fixture
def photos(tmp_path):
    return make_imagefolder(tmp_path / "data", classes=2, train_per_class=6, val_per_class=3, size=64)


@pytest.fixture
def mixed(photos):
    """The photos, with the files the workers decode themselves (a PNG, a grayscale JPEG) and a landscape one."""
    folder = os.path.join(photos, "train", "class00")
    first = Image.open(os.path.join(folder, "img000.JPEG"))
    first.save(os.path.join(folder, "img000.png"))
    os.remove(os.path.join(folder, "img000.JPEG"))
    Image.open(os.path.join(folder, "img001.JPEG")).convert("L").save(os.path.join(folder, "img001.JPEG"))
    first.crop((0, 12, 64, 52)).save(os.path.join(folder, "img002.JPEG"), quality=90)
    return photos


# ---------------------------------------------------------------------------------------
# The decoder: the CPU fast path's crops and pixels
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_same_crops_and_pixels_as_the_cpu_fast_path(mixed, train):
    expected = loader_batches(config(mixed), train)
    encoded = loader_batches(config(mixed, decode_on_device=True), train)
    assert len(expected) == len(encoded) > 1
    same_layout, gpu_layout = decoder_for(train), decoder_for(train, gpu_layout=True)
    for (images, targets, _), (items, encoded_targets, _) in zip(expected, encoded):
        assert torch.equal(targets, encoded_targets)
        batch, bad = same_layout(items)
        assert bad == [] and batch.dtype == torch.uint8 and batch.shape == images.shape
        assert torch.equal(batch, images)  # same region decoder, same crop, same uint8 resampler
        batch, bad = gpu_layout(items)  # float resampling rounded once: off by the rounding only
        diff = (batch.int() - images.int()).abs()
        assert bad == [] and diff.max() <= 1 and diff.float().mean() < 0.5


def test_one_batched_decode_per_batch_of_each_crops_region_only(photos):
    (items, _, _), *_ = loader_batches(config(photos, decode_on_device=True, batch_size=6))
    decoder = decoder_for(train=True)
    decoder._decoder = recorder = ZeroingDecoder(decoder._decoder)
    decoder(items)
    crops = [tuple(item["params"][2:4].tolist()) for item in items]
    assert recorder.shapes == [crops] and len(set(crops)) > 1


def test_the_stream_is_drained_before_each_batched_decode(photos, monkeypatch):
    (items, _, _), *_ = loader_batches(config(photos, decode_on_device=True))
    decoder = decoder_for(train=True)
    events, real_decode, real_drain = [], decoder._decoder.decode, accelerator.drain_current_stream
    monkeypatch.setattr(accelerator, "drain_current_stream", lambda d: events.append("drain") or real_drain(d))
    decoder._decoder = type("Recorder", (), {"decode": lambda self, *a, **k: events.append("decode")
                                             or real_decode(*a, **k)})()
    decoder(items)
    decoder(items)
    assert events == ["drain", "decode", "drain", "decode"]


# ---------------------------------------------------------------------------------------
# Images that come back all zero, and files that cannot be decoded
# ---------------------------------------------------------------------------------------


def test_an_all_zero_decode_is_decoded_again_on_the_cpu_and_recovered(photos):
    (items, _, _), *_ = loader_batches(config(photos, decode_on_device=True))
    decoder = decoder_for(train=True)
    expected, _ = decoder(items)
    decoder._decoder = ZeroingDecoder(decoder._decoder, zeroed=[1, 2])
    batch, bad = decoder(items)
    assert bad == [] and torch.equal(batch, expected)  # Pillow's decode of the same crop, bit for bit


def test_an_image_still_undecodable_on_the_cpu_is_reported_bad(photos, monkeypatch):
    (items, _, _), *_ = loader_batches(config(photos, decode_on_device=True))
    decoder = decoder_for(train=True)
    expected, _ = decoder(items)
    decoder._decoder = ZeroingDecoder(decoder._decoder, zeroed=[2])

    def pillow_fails(data, path):
        raise datasets.bad_image(path, "cannot decode")

    monkeypatch.setattr(datasets, "decode_pil", pillow_fails)
    batch, bad = decoder(items)
    assert bad == [2] and batch[2].eq(0).all()
    assert torch.equal(batch[[0, 1, 3]], expected[[0, 1, 3]])


def test_a_black_image_is_kept(photos):
    """All zero on both paths is a black image, not a fault: the CPU pipeline trains on it too."""
    path = os.path.join(photos, "train", "class00", "img000.JPEG")
    Image.new("RGB", (64, 64)).save(path, quality=90)
    batches = loader_batches(config(photos, decode_on_device=True, batch_size=12))
    batch, bad = decoder_for(train=True)(batches[0][0])
    blank = [i for i, item in enumerate(batches[0][0]) if item["path"] == path]
    assert bad == [] and len(blank) == 1 and batch[blank[0]].eq(0).all() and batch.float().mean() > 10


def test_crop_outside_the_decoded_image_or_an_eval_item_without_resize_size(photos):
    (items, _, _), *_ = loader_batches(config(photos, decode_on_device=True))
    items[1]["params"] = torch.tensor([60, 0, 20, 20, 0])  # rows 60..80 of a 64-row image: the header lied
    batch, bad = decoder_for(train=True)(items)
    assert bad == [1] and batch[1].eq(0).all() and batch[0].float().mean() > 10
    (evaluation, _, _), *_ = loader_batches(config(photos, decode_on_device=True), train=False)
    with pytest.raises(ValueError, match="resize_size"):
        decoder_for(train=True)(evaluation)


def test_corrupt_and_truncated_jpegs_follow_the_bad_image_policy(photos, capsys):
    folder = os.path.join(photos, "train", "class00")
    good = open(os.path.join(folder, "img000.JPEG"), "rb").read()
    with open(os.path.join(folder, "img000.JPEG"), "wb") as f:
        f.write(good[:300] + bytes(range(256)) * 4)  # a valid header, then garbage: only a decode finds out
    with open(os.path.join(folder, "img001.JPEG"), "wb") as f:
        f.write(good[: len(good) // 2])
    cfg = config(photos, decode_on_device=True, bad_images="skip", batch_size=12)
    loaders = data.build_data_loaders(cfg, rank=0, world_size=1)
    loaders.train_sampler.set_epoch(0)
    images, targets, n_bad = next(iter(data.make_device_loader(loaders.train, cfg, CPU, train=True,
                                                               channels_last=False)))
    assert images.shape == (12, 3, 32, 32) and int(n_bad.sum()) == 2 and torch.isfinite(images).all()
    err = capsys.readouterr().err
    assert err.count("skipping bad image") == 2 and "img000.JPEG" in err and "img001.JPEG" in err
    cfg = dataclasses.replace(cfg, bad_images="error")
    with pytest.raises(datasets.BadImageError, match=r"img00[01]\.JPEG: cannot be decoded"):
        next(iter(data.make_device_loader(loaders.train, cfg, CPU, train=True, channels_last=False)))
    assert not loader_threads()


def test_an_evaluation_batch_of_bad_files_only_is_passed_over_not_fatal(photos, capsys):
    """With 6 validation images in batches of 5, the last batch holds one image: when it is bad, that batch has
    no good image to stand in for it. Under --bad-images skip the evaluation goes on without it."""
    import torchvision

    import utils

    last = os.path.join(photos, "val", "class01", "img002.JPEG")
    with open(last, "r+b") as f:
        f.truncate(200)
    cfg = config(photos, decode_on_device=True, bad_images="skip", batch_size=5)
    loaders = data.build_data_loaders(cfg, rank=0, world_size=1)
    val = data.make_device_loader(loaders.val, cfg, CPU, train=False, channels_last=False)
    batches = [(tuple(images.shape), int(n_bad.sum())) for images, _, n_bad in val]
    assert batches == [((5, 3, 32, 32), 0), ((0, 3, 32, 32), 1)]
    assert capsys.readouterr().err.count("skipping bad image") == 1
    model = torchvision.models.resnet18(num_classes=2)
    stats = train.evaluate(model, torch.nn.CrossEntropyLoss(), val, CPU, autocast=contextlib.nullcontext,
                           dist_info=utils.DistInfo())
    assert stats["count"] == 5 and math.isfinite(stats["loss"])


# ---------------------------------------------------------------------------------------
# DeviceLoader's decode thread
# ---------------------------------------------------------------------------------------


class CountingSource:
    """A DataLoader's stand-in: `n` uint8 batches, batch i filled with i; counts the batches taken."""

    def __init__(self, n):
        self.n, self.taken = n, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            self.taken += 1
            images = torch.full((2, 3, 4, 4), i, dtype=torch.uint8)
            yield images, torch.tensor([i, i]), torch.zeros(2, dtype=torch.int64)


def device_loader(source, prepare=None):
    """A DeviceLoader over `source`; `prepare(batch, real_prepare)` replaces its per-batch work when given."""
    loader = data.DeviceLoader(source, CPU, channels_last=False, bad_images="error")
    if prepare is not None:
        real = loader._prepare
        loader._prepare = lambda batch: prepare(batch, real)
    return loader


def wait_for(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)


def test_the_thread_prepares_two_batches_ahead_in_order_and_no_more():
    source, threads = CountingSource(8), []
    loader = device_loader(source, lambda batch, real: threads.append(threading.current_thread().name) or real(batch))
    assert loader.prefetch == 2
    batches = iter(loader)
    first = next(batches)
    wait_for(lambda: len(threads) == 3)
    time.sleep(0.2)  # time to run further ahead, if it did
    assert len(threads) == 3 and source.taken == 3  # the batch in hand and two more ready
    assert set(threads) == {"device-loader"}
    order = [int(targets[0]) for _, targets, _ in [first, *batches]]
    assert order == list(range(8)) and not loader_threads()


def test_steps_do_not_wait_for_decoding():
    def slow(batch, real):
        time.sleep(0.05)  # the decode of one batch
        return real(batch)

    waits, batches = [], iter(device_loader(CountingSource(6), slow))
    while True:
        start = time.perf_counter()
        if next(batches, None) is None:
            break
        waits.append(time.perf_counter() - start)
        time.sleep(0.15)  # the training step
    assert len(waits) == 6 and sum(waits[1:]) < 0.1, waits  # without prefetching: 5 x 0.05 s


def test_an_error_in_the_thread_is_raised_in_the_training_thread():
    def fails_on_batch_2(batch, real):
        if int(batch[1][0]) == 2:
            raise ValueError("cannot decode batch 2")
        return real(batch)

    batches = iter(device_loader(CountingSource(8), fails_on_batch_2))
    assert [int(next(batches)[1][0]) for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="cannot decode batch 2"):
        next(batches)
    assert not loader_threads()


def test_leaving_the_loop_early_ends_the_thread():
    loader = device_loader(CountingSource(8))
    for _ in loader:
        break  # as the training loop does on a stop signal
    assert not loader_threads()

    def failing_step(loader):
        batches = iter(loader)  # held in a local, as train_one_epoch holds it
        next(batches)
        raise RuntimeError("the step failed")

    with pytest.raises(RuntimeError, match="the step failed"):
        failing_step(loader)
    assert not loader_threads()


def test_crop_size_switches_between_epochs(photos):
    cfg = config(photos, decode_on_device=True)
    loaders = data.build_data_loaders(cfg, rank=0, world_size=1)
    loader = data.make_device_loader(loaders.train, cfg, CPU, train=True, channels_last=False)
    sizes = []
    for size in (32, 48):
        loader.set_crop_size(size)
        sizes.append({tuple(images.shape[-2:]) for images, _, _ in loader})
    assert sizes == [{(32, 32)}, {(48, 48)}]


# ---------------------------------------------------------------------------------------
# Exact resume
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_resumes_bitwise_identically(tmp_path, monkeypatch):
    """SIGTERM mid-epoch and --resume auto, with --decode-device's pipeline on the CPU (the option itself wants an
    NVIDIA GPU, so the run's data settings are switched) and MixUp/CutMix drawing from the global RNGs at every
    step while the decode thread works: the weights end as an uninterrupted run's, bit for bit."""
    root = make_imagefolder(tmp_path / "data", classes=3, train_per_class=8, val_per_class=2)
    real_config, real_step = train.data_config, train.TrainStep.__call__
    real_decode = device_decode.DeviceDecoder.__call__
    decoded = []
    monkeypatch.setattr(train, "data_config",
                        lambda *a, **k: dataclasses.replace(real_config(*a, **k), decode_on_device=True))
    monkeypatch.setattr(device_decode.DeviceDecoder, "__call__",
                        lambda self, items: decoded.append(len(items)) or real_decode(self, items))

    def args(out, *extra):
        return ["--data-path", root, "--output-dir", out, "--epochs", "2", "--seed", "11", "--mixup-alpha", "0.2",
                "--cutmix-alpha", "1.0", "--use-deterministic-algorithms", *FAST_ARGS, *extra]

    def signalled_step(self, images, target, epoch, step):
        if (epoch, step) == (1, 2):
            signal.raise_signal(signal.SIGTERM)  # as a scheduler sends it; the run stops after this step
        return real_step(self, images, target, epoch, step)

    run_train_in_process(args(tmp_path / "straight"))
    assert 4 in decoded  # the training batches went through the device decoder
    monkeypatch.setattr(train.TrainStep, "__call__", signalled_step)
    assert run_train_in_process(args(tmp_path / "resumed"), check=False).returncode == train.EXIT_PREEMPTED
    monkeypatch.setattr(train.TrainStep, "__call__", real_step)
    assert "epoch 1, step 3" in run_train_in_process(args(tmp_path / "resumed", "--resume", "auto")).stdout
    a, b = (torch.load(tmp_path / run / "checkpoint.pth", weights_only=True)["model"]
            for run in ("straight", "resumed"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
