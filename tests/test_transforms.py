"""transforms.py: the fast uint8 pipeline against the torchvision/PIL reference.

Pixel tolerances, in uint8 levels, for the same crop parameters:
* full-resolution decode (torch's uint8 resampler vs PIL's): mean |diff| < 0.5, 99th
  percentile <= 1, max <= 3 -- both are fixed-point antialiased filters, off by rounding;
* DCT-scaled decode (libjpeg decodes at 1/2, 1/4 or 1/8, then PIL resamples the exact
  fractional box): mean < 1, 99th percentile <= 4 -- a slightly different low-pass
  path, so sharp edges and noise differ by a few levels.
"""

import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import datasets
import presets
import transforms

MEAN, STD = presets.IMAGENET_MEAN, presets.IMAGENET_STD


# ---------------------------------------------------------------------------------------
# Test images: real JPEG/PNG files with photo-like content (smooth shading, edges, noise)
# ---------------------------------------------------------------------------------------


def photo_array(height, width, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fy, fx, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 6.28)
        img[..., c] = 128 + 70 * np.sin(fy * y / height * 6.28 + phase) * np.cos(fx * x / width * 6.28)
    for _ in range(4):  # a few flat-coloured rectangles give sharp edges
        y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        y1, x1 = y0 + rng.integers(3, max(4, height // 2)), x0 + rng.integers(3, max(4, width // 2))
        img[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(image, fmt="JPEG", **kwargs):
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg_bytes(height, width, seed, quality=90, mode="RGB", **kwargs):
    image = Image.fromarray(photo_array(height, width, seed)).convert(mode)
    return encode(image, "JPEG", quality=quality, **kwargs)


def write_and_read(tmp_path, name, data):
    """Round-trip through a real file, as the dataset reads them."""
    path = tmp_path / name
    path.write_bytes(data)
    return path.read_bytes(), str(path)


def reference_train(data, seed, crop_size, interpolation=T.InterpolationMode.BILINEAR, hflip_prob=0.5):
    torch.manual_seed(seed)
    ops = [T.RandomResizedCrop(crop_size, interpolation=interpolation, antialias=True)]
    if hflip_prob > 0:
        ops.append(T.RandomHorizontalFlip(hflip_prob))
    ops.append(T.PILToTensor())
    return T.Compose(ops)(Image.open(io.BytesIO(data)).convert("RGB"))


def reference_eval(data, crop_size, resize_size):
    ops = T.Compose([T.Resize(resize_size, antialias=True), T.CenterCrop(crop_size), T.PILToTensor()])
    return ops(Image.open(io.BytesIO(data)).convert("RGB"))


def seeded(fn, seed):
    torch.manual_seed(seed)
    return fn()


def diff_stats(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    d = (a.to(torch.int16) - b.to(torch.int16)).abs().flatten().float()
    return d.mean().item(), d.quantile(0.99).item(), d.max().item()


def assert_close_uint8(a, b, mean_tol, p99_tol, max_tol=255):
    mean, p99, worst = diff_stats(a, b)
    assert mean < mean_tol and p99 <= p99_tol and worst <= max_tol, (mean, p99, worst)


# ---------------------------------------------------------------------------------------
# sample_crop_params
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(48, 64), (375, 500), (500, 333), (20, 400), (400, 20), (7, 9)])
def test_crop_params_identical_to_torchvision_for_same_seed(size):
    """300 crops in a row from one seed: each must match, and each must use up the same random numbers as
    torchvision's, or the rest of the sequence would differ (one seed, not 300: seeding is most of the time)."""
    height, width = size
    dummy = torch.empty(1, height, width)
    ours = seeded(lambda: [transforms.sample_crop_params(height, width) for _ in range(300)], 0)
    ref = seeded(lambda: [tuple(T.RandomResizedCrop.get_params(dummy, (0.08, 1.0), (3 / 4, 4 / 3)))
                          for _ in range(300)], 0)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a == b, (i, a, b)


def test_crop_params_fallback_is_clamped_central_crop():
    # Extreme aspect ratio and a minimum scale above 1: no try can succeed.
    top, left, h, w = transforms.sample_crop_params(10, 1000, scale=(2.0, 3.0))
    assert (h, w) == (10, round(10 * 4 / 3)) and top == 0 and left == (1000 - w) // 2
    top, left, h, w = transforms.sample_crop_params(1000, 10, scale=(2.0, 3.0))
    assert (h, w) == (round(10 / (3 / 4)), 10) and left == 0 and top == (1000 - h) // 2
    assert transforms.sample_crop_params(30, 30, scale=(2.0, 3.0)) == (0, 0, 30, 30)


def test_crop_params_distribution_matches_random_resized_crop():
    """Different seeds on each side: a distribution check, not an identity check."""
    height, width, n = 375, 500, 3000
    dummy = torch.empty(1, height, width)
    torch.manual_seed(1)
    ours = np.array([transforms.sample_crop_params(height, width) for _ in range(n)], dtype=np.float64)
    torch.manual_seed(2)
    ref = np.array([T.RandomResizedCrop.get_params(dummy, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)],
                   dtype=np.float64)
    for arr in (ours, ref):
        assert (arr[:, 0] + arr[:, 2] <= height).all() and (arr[:, 1] + arr[:, 3] <= width).all()
    area = lambda a: a[:, 2] * a[:, 3] / (height * width)  # noqa: E731
    log_aspect = lambda a: np.log(a[:, 3] / a[:, 2])  # noqa: E731
    centre_y = lambda a: (a[:, 0] + a[:, 2] / 2) / height  # noqa: E731
    for stat in (area, log_aspect, centre_y):
        a, b = stat(ours), stat(ref)
        assert abs(a.mean() - b.mean()) < 0.03, stat
        for q in (0.1, 0.5, 0.9):
            assert abs(np.quantile(a, q) - np.quantile(b, q)) < 0.05, (stat, q)
    # And the distribution is the intended one, not just equal to itself: area ~ U(0.08, 1)
    # truncated by the image bounds, so the median is well inside.
    assert 0.35 < np.median(area(ours)) < 0.6
    assert abs(log_aspect(ours).mean()) < 0.05


# ---------------------------------------------------------------------------------------
# JPEG header
# ---------------------------------------------------------------------------------------


def test_read_jpeg_header_sizes_and_components():
    assert transforms.read_jpeg_header(jpeg_bytes(37, 53, 0)) == (37, 53, 3)
    assert transforms.read_jpeg_header(jpeg_bytes(40, 30, 1, mode="L")) == (40, 30, 1)
    assert transforms.read_jpeg_header(jpeg_bytes(24, 32, 2, mode="CMYK")) == (24, 32, 4)
    assert transforms.read_jpeg_header(jpeg_bytes(33, 65, 3, progressive=True)) == (33, 65, 3)
    exif = Image.Exif()
    exif[0x010E] = "x" * 3000  # a long ImageDescription: a big APP1 segment before the frame header
    with_exif = jpeg_bytes(21, 19, 4, exif=exif.tobytes())
    assert with_exif.find(b"\xff\xc0") > 3000 and transforms.read_jpeg_header(with_exif) == (21, 19, 3)
    png = encode(Image.fromarray(photo_array(16, 16, 0)), "PNG")
    assert transforms.read_jpeg_header(png) is None
    assert transforms.read_jpeg_header(jpeg_bytes(37, 53, 0)[:30]) is None
    assert transforms.read_jpeg_header(b"") is None


# ---------------------------------------------------------------------------------------
# FastTrainTransform / FastEvalTransform against the PIL reference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_fast_train_matches_reference(tmp_path, interpolation):
    mode = T.InterpolationMode(interpolation)
    fast = transforms.FastTrainTransform(crop_size=32, interpolation=interpolation)
    outputs, refs = [], []
    for i, (h, w) in enumerate([(48, 64), (64, 48), (60, 60), (40, 56), (64, 33)] * 4):
        data, path = write_and_read(tmp_path, f"img{i}.jpg", jpeg_bytes(h, w, seed=i, quality=75 + i))
        out = seeded(lambda: fast(data, path), 100 + i)
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32) and out.is_contiguous()
        outputs.append(out)
        refs.append(reference_train(data, 100 + i, 32, mode))
    assert_close_uint8(torch.stack(outputs), torch.stack(refs), 0.5, 1, 3)


def test_fast_train_flip_and_no_flip(tmp_path):
    data = jpeg_bytes(48, 64, seed=5)
    never = transforms.FastTrainTransform(crop_size=24, hflip_prob=0.0)
    always = transforms.FastTrainTransform(crop_size=24, hflip_prob=1.0)
    a = seeded(lambda: never(data, "x.jpg"), 3)
    b = seeded(lambda: always(data, "x.jpg"), 3)
    assert torch.equal(a.flip(-1), b)
    assert not torch.equal(a, b)
    assert_close_uint8(a, reference_train(data, 3, 24, hflip_prob=0.0), 0.5, 1, 3)


def test_fast_train_dct_scaled_path(tmp_path, monkeypatch):
    """Large image, small output: crops >= 3x the output are decoded by libjpeg at reduced scale."""
    scales = []
    original = transforms._load_reduced_jpeg

    def spy(data, scale):
        result = original(data, scale)
        if result is not None:
            scales.append(result[1])
        return result

    monkeypatch.setattr(transforms, "_load_reduced_jpeg", spy)
    fast = transforms.FastTrainTransform(crop_size=32)
    outputs, refs = [], []
    for i in range(12):
        data, path = write_and_read(tmp_path, f"big{i}.jpg", jpeg_bytes(384, 512, seed=i, quality=90))
        out = seeded(lambda: fast(data, path), i)
        assert out.shape == (3, 32, 32) and out.is_contiguous()
        outputs.append(out)
        refs.append(reference_train(data, i, 32))
    assert len(scales) >= 8 and set(scales) <= {2, 4, 8} and max(scales) >= 4, scales
    assert_close_uint8(torch.stack(outputs), torch.stack(refs), 1.0, 4)


def test_fast_eval_matches_reference(tmp_path):
    fast = transforms.FastEvalTransform(crop_size=32, resize_size=36)
    outputs, refs = [], []
    for i, (h, w) in enumerate([(48, 64), (64, 48), (37, 70), (36, 36), (50, 41)]):
        data, path = write_and_read(tmp_path, f"val{i}.jpg", jpeg_bytes(h, w, seed=i))
        out = fast(data, path)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and out.is_contiguous()
        outputs.append(out)
        refs.append(reference_eval(data, 32, 36))
    assert_close_uint8(torch.stack(outputs), torch.stack(refs), 0.5, 1, 3)


def test_fast_eval_dct_scaled_path(tmp_path, monkeypatch):
    scales = []
    original = transforms._load_reduced_jpeg

    def spy(data, scale):
        result = original(data, scale)
        scales.append(None if result is None else result[1])
        return result

    monkeypatch.setattr(transforms, "_load_reduced_jpeg", spy)
    data, path = write_and_read(tmp_path, "big.jpg", jpeg_bytes(300, 400, seed=7))
    out = transforms.FastEvalTransform(crop_size=32, resize_size=36)(data, path)
    assert scales == [4]  # 300 >= 1.5 * 4 * 36
    assert_close_uint8(out, reference_eval(data, 32, 36), 1.0, 4)


def test_png_goes_through_decode_pil(tmp_path, monkeypatch):
    calls = []
    original = datasets.decode_pil

    def spy(data, path="<bytes>"):
        calls.append(path)
        return original(data, path)

    monkeypatch.setattr(datasets, "decode_pil", spy)
    data, path = write_and_read(tmp_path, "a.png", encode(Image.fromarray(photo_array(48, 64, 1)), "PNG"))
    out = seeded(lambda: transforms.FastTrainTransform(crop_size=32)(data, path), 4)
    assert calls == [path]
    assert_close_uint8(out, reference_train(data, 4, 32), 0.5, 1, 3)
    out = transforms.FastEvalTransform(crop_size=32, resize_size=40)(data, path)
    assert_close_uint8(out, reference_eval(data, 32, 40), 0.5, 1, 3)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpeg_come_out_rgb(tmp_path, mode):
    data, path = write_and_read(tmp_path, f"{mode}.jpg", jpeg_bytes(48, 64, seed=2, mode=mode))
    out = seeded(lambda: transforms.FastTrainTransform(crop_size=32)(data, path), 9)
    assert out.shape == (3, 32, 32)
    assert_close_uint8(out, reference_train(data, 9, 32), 0.5, 1, 3)
    if mode == "L":
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    else:
        assert not torch.equal(out[0], out[2])  # real colour survived the CMYK round trip
    assert transforms.FastEvalTransform(crop_size=32, resize_size=40)(data, path).shape == (3, 32, 32)


@pytest.mark.parametrize("cut", ["garbage", "truncated", "empty"])
def test_bad_files_raise_bad_image_error(tmp_path, cut):
    good = jpeg_bytes(48, 64, seed=0)
    data = {"garbage": good[:200] + bytes(range(256)) * 4, "truncated": good[: len(good) // 2], "empty": b""}[cut]
    path = str(tmp_path / "bad.jpg")
    for transform in (transforms.FastTrainTransform(crop_size=32),
                      transforms.FastEvalTransform(crop_size=32, resize_size=36)):
        with pytest.raises(datasets.BadImageError) as info:
            transform(data, path)
        assert path in str(info.value)


def test_a_centre_crop_larger_than_the_resized_image_is_refused():
    # The options' ranges and choices are checked by the command line (tests/test_options.py); this rule is not.
    with pytest.raises(ValueError, match="crop_size 40 is larger than resize_size 32 .--val-crop-size"):
        transforms.FastEvalTransform(crop_size=40, resize_size=32)


# ---------------------------------------------------------------------------------------
# Encoded transforms: the workers' side of --decode-device (tests/test_device_decode.py: the device's)
# ---------------------------------------------------------------------------------------


def test_encoded_train_transform_ships_bytes_and_params():
    data = jpeg_bytes(48, 64, seed=0)
    item = seeded(lambda: transforms.EncodedTrainTransform()(data, "a.jpg"), 11)
    assert item["data"].dtype == torch.uint8 and item["data"].dim() == 1 and item["path"] == "a.jpg"
    assert bytes(item["data"].numpy()) == data
    torch.manual_seed(11)
    crop = transforms.sample_crop_params(48, 64)
    flip = int(torch.rand(1).item() < 0.5)
    assert item["params"].dtype == torch.int64 and item["params"].tolist() == [*crop, flip]
    ev = transforms.EncodedEvalTransform()(data, "a.jpg")
    assert ev["params"].tolist() == [-1] * 5 and bytes(ev["data"].numpy()) == data


def test_encoded_transform_decodes_non_jpeg_on_the_worker():
    png = encode(Image.fromarray(photo_array(40, 50, 3)), "PNG")
    item = transforms.EncodedTrainTransform()(png, "a.png")
    assert item["data"].shape == (3, 40, 50) and item["data"].dtype == torch.uint8
    gray = transforms.EncodedEvalTransform()(jpeg_bytes(40, 50, 0, mode="L"), "g.jpg")
    assert gray["data"].shape == (3, 40, 50)


def test_resize_in_float_matches_the_uint8_path():
    """Resampling in float32 and rounding is what devices do (device_decode); it must agree with the uint8 path."""
    image = torch.from_numpy(photo_array(50, 70, 4)).permute(2, 0, 1)
    for mode in transforms.INTERPOLATIONS:
        a = transforms.resize_uint8(image, (32, 24), mode)
        b = torch.nn.functional.interpolate(image[None].float(), size=(32, 24), mode=mode, antialias=True)
        b = b.round().clamp(0, 255).to(torch.uint8)[0]
        assert a.dtype == b.dtype == torch.uint8 and a.shape == (3, 32, 24)
        assert_close_uint8(a, b, 0.5, 1, 2)


# ---------------------------------------------------------------------------------------
# normalize_batch and MixUp/CutMix
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_batch_equals_torchvision_normalize(channels_last):
    batch = torch.randint(0, 256, (4, 3, 10, 12), dtype=torch.uint8)
    ref = T.Normalize(MEAN, STD)(T.ConvertImageDtype(torch.float32)(batch))
    out = transforms.normalize_batch(batch, MEAN, STD, channels_last=channels_last)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    half = transforms.normalize_batch(batch, MEAN, STD, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, atol=0.02, rtol=0.01)


def test_normalize_one_pass_variant_agrees():
    """The single-kernel variant (chosen on GPUs) computes the same numbers."""
    batch = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)
    scale, shift = torch.rand(1, 3, 1, 1), torch.rand(1, 3, 1, 1)
    a, b = torch.empty(batch.shape), torch.empty(batch.shape)
    transforms._scale_shift_into(a, batch, scale, shift, one_pass=True)
    transforms._scale_shift_into(b, batch, scale, shift, one_pass=False)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, batch.float() * scale + shift)


def test_normalize_batch_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        transforms.normalize_batch(torch.zeros(1, 3, 2, 2), MEAN, STD)


@pytest.mark.parametrize("use_v2", [False, True])
@pytest.mark.parametrize("alphas", [(0.2, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_soft_targets_sum_to_one(use_v2, alphas):
    mix = transforms.get_mixup_cutmix(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], num_classes=5, use_v2=use_v2)
    torch.manual_seed(0)
    images = torch.randn(6, 3, 8, 8)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    changed = 0
    for _ in range(5):
        out_images, soft = mix(images, targets)
        assert out_images.shape == images.shape and soft.shape == (6, 5)
        torch.testing.assert_close(soft.sum(1), torch.ones(6))
        assert (soft >= 0).all()
        # each row mixes only its own label and its neighbour's (the batch is rolled by one)
        for i in range(6):
            assert set(soft[i].nonzero().flatten().tolist()) <= {targets[i].item(), targets[i - 1].item()}
        changed += int(not torch.equal(out_images, images))
    assert changed >= 3


def test_mixup_cutmix_disabled_returns_none():
    assert transforms.get_mixup_cutmix(mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=10) is None


# ---------------------------------------------------------------------------------------
# The benchmark script keeps working (tiny run on an ImageFolder of real JPEGs)
# ---------------------------------------------------------------------------------------


def test_data_pipeline_benchmark_runs(tmp_path):
    import importlib.util
    import json
    import os

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "data_pipeline.py")
    spec = importlib.util.spec_from_file_location("data_pipeline_benchmark", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for i in range(8):
        folder = tmp_path / "data" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i}.JPEG").write_bytes(jpeg_bytes(40, 56, seed=i, mode="L" if i == 3 else "RGB"))
    out = tmp_path / "result.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--data", str(tmp_path / "data"), "--num-images", "8", "--batch-size", "4", "--rounds", "1",
                    "--crop-size", "24", "--workers", "1", "--loader-images", "12", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)  # the script pins one thread for its measurement
    result = json.loads(out.read_text())
    assert result["num_images"] == 8 and result["ratio_cpu"] > 0 and result["ratio_wall"] > 0
    assert result["loader_fast_img_per_wall_s"] > 0 and result["loader_reference_img_per_wall_s"] > 0
