"""jpeg_roi: region-of-interest JPEG decoding with nvImageCodec's CPU decoder, on real JPEG files.

The region decoder must give exactly the pixels a full decode gives for the same crop, for
every chroma subsampling and at image edges; its full decode must equal Pillow's; everything
it cannot handle must come back as None so that the full-decode path takes over; and neither
its import nor its use may print anything.
"""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import jpeg_roi
import transforms
from conftest import REPO, TEST_ENV
from test_benchmark_modes import last_json
from test_transforms import assert_close_uint8, encode, jpeg_bytes, photo_array, reference_train, seeded


def _unavailable():
    """Why the decoder cannot be used here, or None. requirements.txt installs it on Linux x86_64 and
    aarch64; a skip names what is missing so that it is never silent."""
    try:
        jpeg_roi.open_decoder()
    except jpeg_roi.RoiUnavailable as e:
        return str(e)
    return None


MISSING = _unavailable()
needs_decoder = pytest.mark.skipif(MISSING is not None, reason=f"region decoder unavailable: {MISSING}")


@pytest.fixture(scope="module")
def decoder():
    if MISSING is not None:
        pytest.skip(f"region decoder unavailable: {MISSING}")
    return jpeg_roi.open_decoder()


def pillow_decode(data):
    """The reference pixels: Pillow's whole-image decode (its own libjpeg-turbo build), HWC uint8 RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


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
    full = pillow_decode(data)
    np.testing.assert_array_equal(decoder.decode_full(data), full)  # its own full decode is Pillow's, bit for bit
    for top, left, h, w in random_boxes(height, width, 25, seed=subsampling):
        region = decoder.decode(data, left, top, w, h)
        assert region is not None and region.shape == (h, w, 3)
        np.testing.assert_array_equal(region, full[top : top + h, left : left + w],
                                      err_msg=f"box top={top} left={left} h={h} w={w}")


@needs_decoder
@pytest.mark.parametrize("subsampling", [1, 2], ids=["422", "420"])
def test_one_column_regions_keep_their_chroma_neighbours(decoder, subsampling):
    """Every column of the image as a region one pixel wide (and a few rows high), the iMCU boundaries and
    the last column included: libjpeg would upsample a lone column on a boundary as if it were the edge."""
    height, width = 24, 37
    data = jpeg_bytes(height, width, seed=7, quality=90, subsampling=subsampling)
    full = pillow_decode(data)
    for left in range(width):
        for top, h in [(0, 1), (5, 7), (height - 3, 3)]:
            np.testing.assert_array_equal(decoder.decode(data, left, top, 1, h), full[top : top + h, left : left + 1],
                                          err_msg=f"column {left}, rows {top}-{top + h}")


@needs_decoder
def test_grayscale_region_is_expanded_to_rgb(decoder):
    data = jpeg_bytes(90, 120, seed=3, mode="L")
    full = pillow_decode(data)
    region = decoder.decode(data, 17, 9, 60, 50)
    np.testing.assert_array_equal(region, full[9:59, 17:77])
    assert (region[..., 0] == region[..., 2]).all()
    np.testing.assert_array_equal(decoder.decode_full(data), full)


# ---------------------------------------------------------------------------------------
# What the region decoder declines (the full path then decides)
# ---------------------------------------------------------------------------------------


@needs_decoder
def test_declines_what_it_cannot_do(decoder):
    good = jpeg_bytes(48, 64, seed=0)
    cmyk = jpeg_bytes(48, 64, seed=0, mode="CMYK")
    png = encode(Image.fromarray(photo_array(48, 64, 1)), "PNG")
    assert decoder.decode(cmyk, 0, 0, 10, 10) is None  # colour conventions left to PIL
    assert decoder.decode_full(cmyk) is None
    assert decoder.decode(png, 0, 0, 10, 10) is None  # not a JPEG
    assert decoder.decode(good[: len(good) // 2], 0, 0, 10, 10) is None  # truncated, even above the cut
    assert decoder.decode(good[:200] + bytes(range(256)) + good[-2:], 0, 0, 10, 10) is None  # garbage after the header
    assert decoder.decode(b"", 0, 0, 1, 1) is None
    assert decoder.decode(good, 60, 0, 10, 10) is None  # region outside the image
    assert decoder.decode(good, 0, 40, 10, 10) is None
    assert decoder.decode(good, 0, 0, 0, 10) is None
    assert decoder.decode(good, -1, 0, 10, 10) is None
    assert decoder.decode(good, 0, 0, 64, 48) is not None  # and the decoder is still fine afterwards


# ---------------------------------------------------------------------------------------
# The training transform with the region decoder
# ---------------------------------------------------------------------------------------


@needs_decoder
def test_train_transform_same_output_with_and_without_region_decode(monkeypatch):
    """Scale-1 crops: the region path gives exactly the whole-decode path's output."""
    used = []
    original = transforms.roi_decode_crop

    def spy(*args):
        result = original(*args)
        used.append(result is not None)
        return result

    monkeypatch.setattr(transforms, "roi_decode_crop", spy)
    with_roi = transforms.FastTrainTransform(crop_size=48, roi_library=jpeg_roi.DECODER)
    whole = transforms.FastTrainTransform(crop_size=48)
    for i, (h, w) in enumerate([(120, 160), (160, 120), (97, 131), (64, 64)] * 3):
        data = jpeg_bytes(h, w, seed=i, quality=80 + i, subsampling=i % 3, mode="L" if i == 5 else "RGB")
        a = seeded(lambda: with_roi(data, "x.jpg"), i)
        b = seeded(lambda: whole(data, "x.jpg"), i)
        assert a.shape == (3, 48, 48) and a.is_contiguous()
        assert torch.equal(a, b), i
    assert len(used) == 12 and all(used)


@needs_decoder
def test_large_crops_are_decoded_whole_at_reduced_scale(monkeypatch):
    """Large image, small output: the crop would keep 3x the output size, so the image is decoded whole at
    reduced DCT scale instead of its region (nvImageCodec has no reduced-scale decode); same tolerance as
    the whole-image reduced path (see test_transforms' docstring)."""
    regions = []
    original = transforms.roi_decode_crop
    monkeypatch.setattr(transforms, "roi_decode_crop", lambda *args: regions.append(args) or original(*args))
    fast = transforms.FastTrainTransform(crop_size=64, roi_library=jpeg_roi.DECODER)
    outputs, refs, small_crops = [], [], 0
    for i in range(16):
        data = jpeg_bytes(384, 512, seed=i, quality=90)
        outputs.append(seeded(lambda: fast(data, "big.jpg"), i))
        refs.append(reference_train(data, i, 64))
        top, left, h, w = seeded(lambda: transforms.sample_crop_params(384, 512), i)  # the crop the transform drew
        small_crops += transforms._dct_scale(min(h, w), 64) == 1
    assert_close_uint8(torch.stack(outputs), torch.stack(refs), 1.0, 4)
    assert 0 < small_crops < 16 and len(regions) == small_crops  # only crops too small to downscale use regions


@needs_decoder
@pytest.mark.parametrize("cut", ["garbage", "truncated", "empty"])
def test_train_transform_bad_files_still_raise(tmp_path, cut):
    good = jpeg_bytes(48, 64, seed=0)
    data = {"garbage": good[:200] + bytes(range(256)) * 4 + good[-2:], "truncated": good[: len(good) // 2],
            "empty": b""}[cut]
    path = str(tmp_path / "bad.jpg")
    transform = transforms.FastTrainTransform(crop_size=32, roi_library=jpeg_roi.DECODER)
    for seed in range(5):  # whichever crop is drawn
        with pytest.raises(datasets.BadImageError) as info:
            seeded(lambda: transform(data, path), seed)
        assert path in str(info.value)


@needs_decoder
def test_cmyk_and_png_fall_back_to_pil():
    transform = transforms.FastTrainTransform(crop_size=32, roi_library=jpeg_roi.DECODER)
    for data in (jpeg_bytes(48, 64, seed=2, mode="CMYK"), encode(Image.fromarray(photo_array(48, 64, 1)), "PNG")):
        out = seeded(lambda: transform(data, "x"), 9)
        assert_close_uint8(out, reference_train(data, 9, 32), 0.5, 1, 3)


@needs_decoder
def test_transform_pickles_into_a_fresh_process(tmp_path):
    """DataLoader workers receive the transform pickled; a spawned process must open its own decoder."""
    import pickle

    transform = transforms.FastTrainTransform(crop_size=24, roi_library=jpeg_roi.DECODER)
    data = jpeg_bytes(60, 80, seed=1)
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(transform))
    (tmp_path / "img.jpg").write_bytes(data)
    script = ("import pickle, sys, torch; t = pickle.load(open(sys.argv[1], 'rb')); torch.manual_seed(5); "
              "out = t(open(sys.argv[2], 'rb').read(), 'img.jpg'); torch.save(out, sys.argv[3])")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.pkl"), str(tmp_path / "img.jpg"),
                    str(tmp_path / "out.pt")], check=True, cwd=str(tmp_path), env=_env_with_repo())
    expected = seeded(lambda: transform(data, "img.jpg"), 5)
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)


def _env_with_repo(**extra):
    env = dict(os.environ, **TEST_ENV, **extra)
    env.pop("PYNVIMGCODEC_VERBOSITY", None)
    env.update(extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------------------
# The --roi-decode modes
# ---------------------------------------------------------------------------------------


@pytest.fixture
def without_nvimgcodec(monkeypatch):
    """This process as on a machine where the wheel is not installed: its import fails, and no decoder has
    been opened yet."""
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)
    monkeypatch.setattr(jpeg_roi, "_decoders", {})


def test_missing_nvimgcodec_falls_back_or_fails_by_mode(without_nvimgcodec):
    data = jpeg_bytes(37, 45, seed=4, subsampling=2)
    assert jpeg_roi.full_decoder() is None  # whole images are decoded by Pillow then
    np.testing.assert_array_equal(transforms._full_jpeg(data, "x.jpg", 37, 45).permute(1, 2, 0).numpy(),
                                  pillow_decode(data))
    library, note = jpeg_roi.prepare("auto")
    assert library is None
    assert note.startswith("JPEG decode: whole images; region-of-interest decode is unavailable: nvImageCodec is "
                           "not installed")
    assert "pip install -r requirements.txt" in note and "\n" not in note
    with pytest.raises(jpeg_roi.RoiUnavailable, match="^--roi-decode on: nvImageCodec is not installed"):
        jpeg_roi.prepare("on")
    assert jpeg_roi.prepare("off") == (None, "JPEG decode: whole images (--roi-decode off)")


@needs_decoder
def test_a_decoder_that_fails_its_self_test_is_not_used(monkeypatch):
    """A decoder that loads but decodes wrongly is caught up front, not paid for on every image."""
    monkeypatch.setattr(jpeg_roi.JpegDecoder, "decode", lambda self, data, *box: np.zeros((32, 40, 3), np.uint8))
    library, note = jpeg_roi.prepare("auto")
    assert library is None and "failed its self-test (pixels differ from Pillow's by" in note
    monkeypatch.setattr(jpeg_roi.JpegDecoder, "decode", lambda self, data, *box: None)
    with pytest.raises(jpeg_roi.RoiUnavailable, match="failed its self-test .it declined a plain JPEG"):
        jpeg_roi.prepare("on")


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
    receive the transform pickled as in a run of its own, and open their own decoder."""
    from conftest import FAST_ARGS, run_train_in_process

    return run_train_in_process(["--benchmark", "data", "--benchmark-steps", "3", "--benchmark-warmup", "1",
                                 *FAST_ARGS, "--data-path", data, "--backend", "fast", "--workers", "2",
                                 "--output-dir", tmp_path / "out", *extra], check=check)


@needs_decoder
def test_train_benchmark_decodes_regions_in_workers(jpeg_folder, tmp_path):
    proc = _benchmark_data(jpeg_folder, tmp_path, "--roi-decode", "on")
    assert "JPEG decode: only each crop's region (nvImageCodec" in proc.stdout
    result = last_json(proc.stdout)
    assert result["roi_decode"] is True and result["workers"] == 2 and result["imgs_per_sec"] > 0


def test_train_without_nvimgcodec_falls_back_or_stops_by_mode(jpeg_folder, tmp_path, without_nvimgcodec):
    proc = _benchmark_data(jpeg_folder, tmp_path)  # --roi-decode auto
    assert "region-of-interest decode is unavailable: nvImageCodec is not installed" in proc.stdout
    assert last_json(proc.stdout)["roi_decode"] is False
    proc = _benchmark_data(jpeg_folder, tmp_path, "--roi-decode", "on", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --roi-decode on: nvImageCodec is not installed (")
    assert lines[0].endswith("pip install -r requirements.txt installs it with the nvJPEG wheels "
                             "(nvidia-nvimgcodec-cu13; Linux x86_64 and aarch64)")


def test_roi_decode_on_needs_the_fast_cpu_backend(jpeg_folder, tmp_path):
    proc = _benchmark_data(jpeg_folder, tmp_path, "--roi-decode", "on", "--backend", "pil", check=False)
    assert proc.returncode == 2
    assert "error: --roi-decode on needs --backend fast with CPU decoding" in proc.stderr


# ---------------------------------------------------------------------------------------
# A clean console
# ---------------------------------------------------------------------------------------

# What nvImageCodec prints: its log lines ("[ERROR] [jpeg_parser] Invalid marker") and, at import, the
# libraries it could not load ("Failed to load nvjpeg library! Please install ...").
_NVIMGCODEC_NOISE = ("[ERROR]", "[WARNING]", "[INFO]", "nvjpeg", "nvtiff", "nvimgcodec", "Failed to load")


def _noise(text):
    return [line for line in text.splitlines() if any(word.lower() in line.lower() for word in _NVIMGCODEC_NOISE)]


def _damaged_jpeg():
    """A JPEG whose header is intact and whose data is garbage: the region decoder is tried and declines, so
    nvImageCodec has something to complain about; PIL then gives the verdict."""
    good = jpeg_bytes(40, 40, seed=1)
    return good[:200] + bytes(range(256)) * 2 + good[-2:]


@needs_decoder
def test_train_run_prints_nothing_from_nvimgcodec(tmp_path, monkeypatch):
    """A real `train.py --backend fast` run in its own process, so the import happens there too: stdout and
    stderr hold our lines only, though one file makes the decoder decline (it is skipped as a bad image)."""
    from conftest import FAST_ARGS, make_imagefolder, run_train

    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1, size=40)
    (tmp_path / "data" / "train" / "class00" / "img000.JPEG").write_bytes(_damaged_jpeg())
    Image.fromarray(photo_array(40, 40, 2)).convert("L").save(tmp_path / "data" / "train" / "class01" / "img000.JPEG")
    monkeypatch.delenv("PYNVIMGCODEC_VERBOSITY", raising=False)  # set in this process by jpeg_roi's own import
    proc = run_train([*FAST_ARGS, "--data-path", data, "--backend", "fast", "--epochs", "1", "--bad-images", "skip",
                      "--output-dir", tmp_path / "out"], cwd=str(tmp_path))
    assert "JPEG decode: only each crop's region (nvImageCodec" in proc.stdout
    assert "skipping bad image" in proc.stderr and "img000.JPEG" in proc.stderr
    assert _noise(proc.stdout) == [] and _noise(proc.stderr) == [], proc.stderr


@needs_decoder
def test_a_verbosity_the_user_set_is_kept(tmp_path):
    """The silence is ours: the damaged file makes nvImageCodec log its error when the user asks for its
    messages (PYNVIMGCODEC_VERBOSITY), and nothing when they do not."""
    (tmp_path / "bad.jpg").write_bytes(_damaged_jpeg())
    script = ("import sys, jpeg_roi\n"
              "print('region:', jpeg_roi.open_decoder().decode(open(sys.argv[1], 'rb').read(), 0, 0, 8, 8))\n")
    runs = {}
    for verbosity in (None, "2"):
        env = _env_with_repo(**({} if verbosity is None else {"PYNVIMGCODEC_VERBOSITY": verbosity}))
        runs[verbosity] = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bad.jpg")], env=env,
                                         capture_output=True, text=True, cwd=str(tmp_path), check=True)
        assert "region: None" in runs[verbosity].stdout
    assert _noise(runs[None].stdout + runs[None].stderr) == []
    assert any("[ERROR]" in line for line in _noise(runs["2"].stdout + runs["2"].stderr))
