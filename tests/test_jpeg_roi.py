"""jpeg_roi: the region-of-interest JPEG decoder, built from jpeg_roi.c on real JPEG files.

The region decoder must give exactly the pixels a full decode gives for the same crop,
for every chroma subsampling, at image edges and at reduced DCT scale; everything it
cannot handle must come back as None so that the full-decode path takes over.
"""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import jpeg_roi
import transforms
from test_benchmark_modes import last_json
from test_transforms import assert_close_uint8, encode, jpeg_bytes, photo_array, reference_train, seeded


def _can_build():
    """Why the decoder cannot be built here, or None. CI machines have gcc and libjpeg-turbo's headers;
    a skip names what is missing so that it is never silent."""
    if shutil.which(jpeg_roi._compiler()) is None:
        return f"no C compiler ({jpeg_roi._compiler()})"
    probe = subprocess.run([jpeg_roi._compiler(), "-E", "-x", "c", "-"], input="#include <jpeglib.h>\n",
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else "libjpeg headers (jpeglib.h) not installed"


MISSING = _can_build()
needs_decoder = pytest.mark.skipif(MISSING is not None, reason=f"region decoder cannot be built: {MISSING}")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    if MISSING is not None:
        pytest.skip(f"region decoder cannot be built: {MISSING}")
    return jpeg_roi.build(str(tmp_path_factory.mktemp("roi_cache")))


@pytest.fixture(scope="module")
def decoder(library):
    return jpeg_roi.open_decoder(library)


def full_decode(data):
    """The reference pixels: torchvision's whole-image libjpeg-turbo decode, HWC uint8."""
    return transforms._decode_jpeg_full(data, "x.jpg").permute(1, 2, 0).numpy()


def random_boxes(height, width, n, seed):
    """Crops from RandomResizedCrop's distribution plus the four corners and the whole image."""
    torch.manual_seed(seed)
    boxes = [transforms.sample_crop_params(height, width) for _ in range(n)]
    h, w = max(1, height // 3), max(1, width // 3)
    boxes += [(0, 0, h, w), (0, width - w, h, w), (height - h, 0, h, w), (height - h, width - w, h, w),
              (0, 0, height, width)]
    return boxes


# ---------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------


@needs_decoder
@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["444", "422", "420"])
@pytest.mark.parametrize("size", [(375, 500), (61, 47), (200, 133)])
def test_region_equals_full_decode_crop(decoder, subsampling, size):
    height, width = size
    data = jpeg_bytes(height, width, seed=height + subsampling, quality=85, subsampling=subsampling)
    full = full_decode(data)
    for top, left, h, w in random_boxes(height, width, 25, seed=subsampling):
        region = decoder.decode(data, left, top, w, h)
        assert region is not None and region.shape == (h, w, 3)
        np.testing.assert_array_equal(region, full[top : top + h, left : left + w],
                                      err_msg=f"box top={top} left={left} h={h} w={w}")


@needs_decoder
def test_grayscale_region_is_expanded_to_rgb(decoder):
    data = jpeg_bytes(90, 120, seed=3, mode="L")
    full = full_decode(data)
    region = decoder.decode(data, 17, 9, 60, 50)
    np.testing.assert_array_equal(region, full[9:59, 17:77])
    assert (region[..., 0] == region[..., 2]).all()


@needs_decoder
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_scaled_region_equals_window_of_scaled_full_decode(decoder, scale):
    height, width = 384, 512
    data = jpeg_bytes(height, width, seed=scale)
    scaled_h, scaled_w = -(-height // scale), -(-width // scale)  # libjpeg rounds the scaled size up
    whole = decoder.decode(data, 0, 0, scaled_w, scaled_h, scale)
    assert whole is not None and whole.shape == (scaled_h, scaled_w, 3)
    # The scaled whole image is a downscaled picture, not garbage: close to a PIL downscale.
    pil = np.asarray(Image.fromarray(full_decode(data)).resize((scaled_w, scaled_h), Image.BOX))
    assert np.abs(whole.astype(int) - pil).mean() < 4
    for top, left, h, w in [(0, 0, 10, 12), (5, 7, scaled_h - 5, scaled_w - 7), (scaled_h // 2, 3, 9, 20)]:
        np.testing.assert_array_equal(decoder.decode(data, left, top, w, h, scale),
                                      whole[top : top + h, left : left + w])


# ---------------------------------------------------------------------------------------
# What the region decoder declines (the full path then decides)
# ---------------------------------------------------------------------------------------


@needs_decoder
def test_declines_what_it_cannot_do(decoder):
    good = jpeg_bytes(48, 64, seed=0)
    cmyk = jpeg_bytes(48, 64, seed=0, mode="CMYK")
    png = encode(Image.fromarray(photo_array(48, 64, 1)), "PNG")
    assert decoder.decode(cmyk, 0, 0, 10, 10) is None  # colour conventions left to PIL
    assert decoder.decode(png, 0, 0, 10, 10) is None  # not a JPEG: libjpeg errors out, cleanly
    assert decoder.decode(good[: len(good) // 2], 0, 0, 10, 10) is None  # truncated, even above the cut
    assert decoder.decode(b"", 0, 0, 1, 1) is None
    assert decoder.decode(good, 60, 0, 10, 10) is None  # region outside the image
    assert decoder.decode(good, 0, 0, 0, 10) is None
    assert decoder.decode(good, 0, 0, 10, 10, scale=3) is None
    middle = len(good) // 2
    corrupt = good[:middle] + b"\xff\xd5" + good[middle + 2 :]  # a stray marker in the entropy data: libjpeg warns
    assert decoder.decode(corrupt, 0, 0, 64, 48) is None
    assert decoder.decode(good, 0, 0, 64, 48) is not None  # and the decoder is still fine afterwards


# ---------------------------------------------------------------------------------------
# The training transform with the region decoder
# ---------------------------------------------------------------------------------------


@needs_decoder
def test_train_transform_same_output_with_and_without_region_decode(tmp_path, library, monkeypatch):
    """Scale-1 crops: the region path gives exactly the whole-decode path's output."""
    used = []
    original = transforms.roi_decode_crop

    def spy(*args):
        result = original(*args)
        used.append(result is not None and result[1] == 1)
        return result

    monkeypatch.setattr(transforms, "roi_decode_crop", spy)
    with_roi = transforms.FastTrainTransform(crop_size=48, roi_library=library)
    whole = transforms.FastTrainTransform(crop_size=48)
    for i, (h, w) in enumerate([(120, 160), (160, 120), (97, 131), (64, 64)] * 3):
        data = jpeg_bytes(h, w, seed=i, quality=80 + i)
        a = seeded(lambda: with_roi(data, "x.jpg"), i)
        b = seeded(lambda: whole(data, "x.jpg"), i)
        assert a.shape == (3, 48, 48) and a.is_contiguous()
        assert torch.equal(a, b), i
    assert len(used) == 12 and all(used)


@needs_decoder
def test_train_transform_scaled_region_close_to_reference(tmp_path, library):
    """Large image, small output: the crop's region is decoded at reduced DCT scale; same tolerance
    as the whole-image reduced path (see test_transforms' docstring)."""
    fast = transforms.FastTrainTransform(crop_size=32, roi_library=library)
    outputs, refs = [], []
    for i in range(12):
        data = jpeg_bytes(384, 512, seed=i, quality=90)
        outputs.append(seeded(lambda: fast(data, "big.jpg"), i))
        refs.append(reference_train(data, i, 32))
    assert_close_uint8(torch.stack(outputs), torch.stack(refs), 1.0, 4)


@needs_decoder
@pytest.mark.parametrize("cut", ["garbage", "truncated", "empty"])
def test_train_transform_bad_files_still_raise(tmp_path, library, cut):
    good = jpeg_bytes(48, 64, seed=0)
    data = {"garbage": good[:200] + bytes(range(256)) * 4, "truncated": good[: len(good) // 2], "empty": b""}[cut]
    path = str(tmp_path / "bad.jpg")
    transform = transforms.FastTrainTransform(crop_size=32, roi_library=library)
    for seed in range(5):  # whichever crop is drawn
        with pytest.raises(datasets.BadImageError) as info:
            seeded(lambda: transform(data, path), seed)
        assert path in str(info.value)


@needs_decoder
def test_cmyk_and_png_fall_back_to_pil(tmp_path, library):
    transform = transforms.FastTrainTransform(crop_size=32, roi_library=library)
    for data in (jpeg_bytes(48, 64, seed=2, mode="CMYK"), encode(Image.fromarray(photo_array(48, 64, 1)), "PNG")):
        out = seeded(lambda: transform(data, "x"), 9)
        assert_close_uint8(out, reference_train(data, 9, 32), 0.5, 1, 3)


# ---------------------------------------------------------------------------------------
# Build, cache and the --roi-decode modes
# ---------------------------------------------------------------------------------------


@needs_decoder
def test_build_is_cached_and_keyed_by_source(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    path = jpeg_roi.build(cache)
    mtime = (tmp_path / "cache" / path.split("/")[-1]).stat().st_mtime_ns
    assert jpeg_roi.build(cache) == path  # second call: no rebuild
    assert (tmp_path / "cache" / path.split("/")[-1]).stat().st_mtime_ns == mtime
    edited = tmp_path / "jpeg_roi.c"
    edited.write_text(open(jpeg_roi.SOURCE).read() + "\n/* edited */\n")
    monkeypatch.setattr(jpeg_roi, "SOURCE", str(edited))
    assert jpeg_roi.library_path(cache) != path  # an edit of the source builds a new library
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [path.split("/")[-1]]  # no temp files left


def test_missing_compiler_falls_back_or_fails_by_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    cache = str(tmp_path / "cache")
    library, note = jpeg_roi.prepare("auto", cache)
    assert library is None and "whole images" in note and "no-such-cc" in note
    with pytest.raises(jpeg_roi.RoiUnavailable, match="--roi-decode on: no working C compiler"):
        jpeg_roi.prepare("on", cache)
    assert jpeg_roi.prepare("off", cache) == (None, "JPEG decode: whole images (--roi-decode off)")


def test_compile_error_names_the_missing_header(tmp_path, monkeypatch):
    """A compiler that cannot find jpeglib.h: the message says which package to install."""
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text("#!/bin/sh\necho 'jpeg_roi.c:23:10: fatal error: jpeglib.h: No such file or directory' >&2\n"
                       "exit 1\n")
    fake_cc.chmod(0o755)
    monkeypatch.setenv("CC", str(fake_cc))
    library, note = jpeg_roi.prepare("auto", str(tmp_path / "cache"))
    assert library is None
    assert "jpeglib.h: No such file or directory" in note and "libjpeg-turbo" in note and "\n" not in note
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # the failed build left nothing behind


def test_unwritable_cache_falls_back_with_the_reason(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    library, note = jpeg_roi.prepare("auto", str(tmp_path / "a-file" / "cache"))
    assert library is None and f"cannot write to {tmp_path / 'a-file' / 'cache'}" in note


@needs_decoder
def test_a_decoder_that_fails_its_self_test_is_not_used(tmp_path, monkeypatch):
    """A library that loads but decodes wrongly (e.g. an incompatible libjpeg at run time) is caught up front."""
    monkeypatch.setattr(jpeg_roi.RoiDecoder, "decode", lambda self, data, *box, scale=1: np.zeros((32, 40, 3), np.uint8))
    library, note = jpeg_roi.prepare("auto", str(tmp_path / "cache"))
    assert library is None and "failed its self-test (pixels differ from Pillow's by" in note
    monkeypatch.setattr(jpeg_roi.RoiDecoder, "decode", lambda self, data, *box, scale=1: None)
    jpeg_roi.open_decoder.cache_clear()
    with pytest.raises(jpeg_roi.RoiUnavailable, match="failed its self-test .it declined a plain JPEG"):
        jpeg_roi.prepare("on", str(tmp_path / "cache"))


@needs_decoder
def test_transform_pickles_into_a_fresh_process(tmp_path, library):
    """DataLoader workers receive the transform pickled; a spawned process must open the library itself."""
    import pickle

    transform = transforms.FastTrainTransform(crop_size=24, roi_library=library)
    data = jpeg_bytes(60, 80, seed=1)
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(transform))
    (tmp_path / "img.jpg").write_bytes(data)
    script = ("import pickle, sys, torch; t = pickle.load(open(sys.argv[1], 'rb')); torch.manual_seed(5); "
              "out = t(open(sys.argv[2], 'rb').read(), 'img.jpg'); torch.save(out, sys.argv[3])")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.pkl"), str(tmp_path / "img.jpg"),
                    str(tmp_path / "out.pt")], check=True, cwd=str(tmp_path.parent), env=_env_with_repo())
    expected = seeded(lambda: transform(data, "img.jpg"), 5)
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)


def _env_with_repo():
    import os

    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------------------
# train.py --roi-decode, as a user runs it
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    from conftest import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("roi_data"), classes=2, train_per_class=6, val_per_class=1,
                            size=64)


def _benchmark_data(data, tmp_path, *extra, check=True):
    """`train.py --benchmark data` in this process; its two DataLoader workers are forked from it, so they
    receive the transform (and the library path) pickled as in a run of its own."""
    from conftest import FAST_ARGS, run_train_in_process

    return run_train_in_process(["--benchmark", "data", "--benchmark-steps", "3", "--benchmark-warmup", "1",
                                 *FAST_ARGS, "--data-path", data, "--backend", "fast", "--workers", "2",
                                 "--output-dir", tmp_path / "out", *extra], check=check)


@needs_decoder
def test_train_benchmark_decodes_regions_in_workers(jpeg_folder, tmp_path):
    proc = _benchmark_data(jpeg_folder, tmp_path, "--roi-decode", "on")
    assert "JPEG decode: only each crop's region" in proc.stdout
    result = last_json(proc.stdout)
    assert result["roi_decode"] is True and result["workers"] == 2 and result["imgs_per_sec"] > 0


def test_train_without_a_compiler_falls_back_or_stops_by_mode(jpeg_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    proc = _benchmark_data(jpeg_folder, tmp_path)  # --roi-decode auto
    assert "region-of-interest decode is unavailable: no working C compiler" in proc.stdout
    assert last_json(proc.stdout)["roi_decode"] is False
    proc = _benchmark_data(jpeg_folder, tmp_path, "--roi-decode", "on", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --roi-decode on: no working C compiler ({tmp_path / 'no-such-cc'}: [Errno 2] No such file or "
        f"directory: '{tmp_path / 'no-such-cc'}'); install gcc and libjpeg-turbo's headers to enable it"]


def test_roi_decode_on_needs_the_fast_cpu_backend(jpeg_folder, tmp_path):
    proc = _benchmark_data(jpeg_folder, tmp_path, "--roi-decode", "on", "--backend", "pil", check=False)
    assert proc.returncode == 2
    assert "error: --roi-decode on needs --backend fast with CPU decoding" in proc.stderr
