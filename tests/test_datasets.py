"""Tests for datasets.py: layout checks, file list and cache, decoding of real (and really
broken) image files, the Dataset's bad-image and seeding behaviour, and --verify-data."""

import io
import json
import os
import pickle
import random
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import data
import datasets
from datasets import (
    BadImageError,
    DataError,
    FileList,
    ImageFolderDataset,
    bad_image,
    decode_pil,
    format_verify_report,
    list_splits,
    run_verify,
    verify_dataset,
)

# ---------------------------------------------------------------------------------------
# Real image files
# ---------------------------------------------------------------------------------------


def noise(height=24, width=32, channels=3, seed=0):
    rng = np.random.RandomState(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.randint(0, 256, shape, dtype=np.uint8)


def encode(image, fmt, **options):
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def jpeg_bytes(height=24, width=32, seed=0, **options):
    return encode(Image.fromarray(noise(height, width, seed=seed)), "JPEG", quality=90, **options)


def with_sof_size(jpeg, width, height):
    """The same JPEG with the frame header claiming another size: a cheap decompression
    bomb (PIL reads the size from the header before decoding anything)."""
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    assert sof > 0, "baseline JPEG expected"
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def corrupt_exif_block():
    """TIFF-structured EXIF with an invalid orientation (9) and a tag whose data runs
    past the end of the block: PIL warns about it while opening the JPEG."""
    entries = struct.pack("<HHII", 0x0112, 3, 1, 9) + struct.pack("<HHII", 0x010F, 2, 1000, 38)
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + struct.pack("<I", 0) + b"abc"
    return b"Exif\x00\x00" + tiff


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def good_file_bytes():
    return {
        "good.JPEG": jpeg_bytes(),
        "gray.JPEG": encode(Image.fromarray(noise(channels=1)), "JPEG"),
        "cmyk.JPEG": encode(Image.frombytes("CMYK", (32, 24), noise(channels=4).tobytes()), "JPEG"),
        "palette.png": encode(Image.fromarray(noise()).convert("P"), "PNG"),
        "palette_trns.png": encode(Image.fromarray(noise()).convert("P"), "PNG", transparency=0),
        "rgba.png": encode(Image.fromarray(noise(channels=4), "RGBA"), "PNG"),
        "la.png": encode(Image.fromarray(noise(channels=2), "LA"), "PNG"),
        "exif.JPEG": jpeg_bytes(exif=corrupt_exif_block()),
    }


def bad_file_bytes():
    good = jpeg_bytes(64, 64)
    return {
        "truncated.JPEG": (good[: len(good) * 6 // 10], "truncated"),
        "empty.JPEG": (b"", "empty file"),
        "text.JPEG": (b"this is a text file, not a JPEG\n", "not an image"),
        "bomb.JPEG": (with_sof_size(good, 20000, 20000), "too large: 20000x20000"),
        "bomb_warning.JPEG": (with_sof_size(good, 10000, 10000), "too large: 10000x10000"),
    }


def make_split(root, split, classes, per_class=3, seed=0):
    for c, name in enumerate(classes):
        for i in range(per_class):
            write(os.path.join(root, split, name, f"img{i}.JPEG"), jpeg_bytes(16, 16, seed=seed + 100 * c + i))


def make_imagenet(root, classes=("cat", "dog"), train=3, val=2):
    make_split(root, "train", classes, train)
    make_split(root, "val", classes, val, seed=7)
    return str(root)


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------------------------------
# decode_pil
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(good_file_bytes()))
def test_decode_pil_gives_loaded_rgb_uint8(name):
    data = good_file_bytes()[name]
    image = decode_pil(data, name)
    assert image.mode == "RGB"
    assert image.size == (32, 24)
    array = np.asarray(image)
    assert array.dtype == np.uint8 and array.shape == (24, 32, 3)
    # Same pixels as PIL's plain conversion: alpha is dropped, not blended with a background.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(array, expected)


def test_decode_pil_drops_alpha_without_blending():
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., :3] = (200, 100, 50)  # fully transparent, colour must survive
    image = decode_pil(encode(Image.fromarray(pixels, "RGBA"), "PNG"))
    assert image.getpixel((0, 0)) == (200, 100, 50)


def test_decode_pil_cmyk_colour():
    # Cyan ink only -> no red, full green and blue.
    image = decode_pil(encode(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=95))
    r, g, b = image.getpixel((4, 4))
    assert r < 30 and g > 225 and b > 225


def test_decode_pil_16bit_png_is_scaled_not_clipped():
    values = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 85).astype(np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    # PIL's own conversion clips everything above 255 to white: the case we guard against.
    naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (naive == 255).mean() > 0.9

    image = decode_pil(data, "deep.png")
    array = np.asarray(image)
    assert image.mode == "RGB" and array.shape == (24, 32, 3)
    expected = (values >> 8).astype(np.uint8)
    assert np.abs(array[..., 0].astype(int) - expected.astype(int)).max() <= 1
    assert array.min() == 0 and array.max() >= 250


def test_decode_pil_dark_16bit_png_stays_dark():
    values = np.full((8, 8), 200, dtype=np.uint16)  # 200 / 65535: almost black
    image = decode_pil(encode(Image.fromarray(values), "PNG"))
    assert np.asarray(image).max() <= 1


def test_decode_pil_silences_pil_exif_warnings(recwarn):
    data = good_file_bytes()["exif.JPEG"]
    # The file really does make PIL warn...
    with pytest.warns(UserWarning):
        Image.open(io.BytesIO(data)).load()
    recwarn.clear()
    # ...but decoding it leaves the log clean.
    image = decode_pil(data, "exif.JPEG")
    assert image.size == (32, 24)
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.parametrize("name", sorted(bad_file_bytes()))
def test_decode_pil_bad_files_raise_bad_image_error(name, recwarn):
    data, reason = bad_file_bytes()[name]
    path = os.path.join("some", "dir", name)
    with pytest.raises(BadImageError) as excinfo:
        decode_pil(data, path)
    assert excinfo.value.path == path
    assert excinfo.value.reason == reason
    assert str(excinfo.value) == f"bad image {path}: {reason} (use --bad-images skip to skip such files)"
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in recwarn)
    assert [str(w.message) for w in recwarn] == []


def test_decode_pil_respects_max_image_pixels(monkeypatch):
    data = jpeg_bytes(40, 40)
    assert decode_pil(data).size == (40, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match=r"too large: 40x40"):
        decode_pil(data, "x.JPEG")


def test_decode_pil_corrupt_scan_data():
    data = bytearray(jpeg_bytes(32, 32))
    sos = data.find(b"\xff\xda")
    for i in range(sos + 20, len(data) - 2, 7):
        data[i] = 0xFF
    with pytest.raises(BadImageError, match=r"bad image c\.JPEG: cannot decode: "):
        decode_pil(bytes(data), "c.JPEG")


def test_bad_image_error_rebuilds_from_message_alone():
    err = bad_image("a/b.JPEG", "truncated")
    rebuilt = BadImageError(str(err))
    assert isinstance(rebuilt, DataError) and isinstance(rebuilt, ValueError)
    assert str(rebuilt) == str(err)


# ---------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------


def test_layout_good(tmp_path):
    root = make_imagenet(tmp_path)
    write(os.path.join(root, "train", "cat", ".DS_Store"), b"junk")  # hidden files are ignored
    os.makedirs(os.path.join(root, "val", ".ipynb_checkpoints"))  # hidden folders are not classes
    classes, lists = list_splits(root)
    assert classes == ["cat", "dog"] and sorted(lists) == ["train", "val"]
    assert {lists[s].root for s in lists} == {os.path.join(root, "train"), os.path.join(root, "val")}


def test_classes_sorted(tmp_path):
    make_imagenet(tmp_path, classes=["n02", "n10", "n01", "a"])
    write(str(tmp_path / "val" / "zz.JPEG"), b"x")  # a loose file is not a class
    assert list_splits(str(tmp_path), ("val",))[0] == ["a", "n01", "n02", "n10"]


def test_layout_missing_data_path(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DataError) as excinfo:
        list_splits(missing)
    assert_one_line_error(excinfo, missing, "does not exist", "train/")


def test_layout_data_path_is_a_file(tmp_path):
    path = write(str(tmp_path / "file.tar"), b"x")
    with pytest.raises(DataError) as excinfo:
        list_splits(path)
    assert_one_line_error(excinfo, path, "not a folder")


@pytest.mark.parametrize("missing", ["train", "val"])
def test_layout_missing_split(tmp_path, missing):
    present = "val" if missing == "train" else "train"
    make_split(tmp_path, present, ["cat"])
    with pytest.raises(DataError) as excinfo:
        list_splits(str(tmp_path))
    assert_one_line_error(excinfo, str(tmp_path), f"no {missing}/ folder")


def test_layout_no_class_folders(tmp_path):
    make_split(tmp_path, "train", ["cat"])
    os.makedirs(tmp_path / "val")
    with pytest.raises(DataError) as excinfo:
        list_splits(str(tmp_path))
    assert_one_line_error(excinfo, os.path.join(str(tmp_path), "val"), "no class folders")


def test_layout_flat_val_folder(tmp_path):
    make_split(tmp_path, "train", ["cat"])
    for i in range(3):
        write(str(tmp_path / "val" / f"ILSVRC2012_val_{i}.JPEG"), jpeg_bytes(8, 8))
    with pytest.raises(DataError) as excinfo:
        list_splits(str(tmp_path))
    assert_one_line_error(excinfo, os.path.join(str(tmp_path), "val"), "3 images but no class folders")


def test_layout_empty_class_folders(tmp_path):
    root = make_imagenet(tmp_path, classes=[f"c{i}" for i in range(8)])
    for i in range(7):
        for name in os.listdir(os.path.join(root, "val", f"c{i}")):
            os.remove(os.path.join(root, "val", f"c{i}", name))
    with pytest.raises(DataError) as excinfo:
        list_splits(root)
    assert_one_line_error(excinfo, os.path.join(root, "val"), "7 empty class folder", "c0, c1, c2, c3, c4 and 2 more")
    assert "c7" not in str(excinfo.value)


def test_layout_no_images_at_all(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            os.makedirs(tmp_path / split / name)
    with pytest.raises(DataError) as excinfo:
        list_splits(str(tmp_path))
    assert_one_line_error(excinfo, os.path.join(str(tmp_path), "train"), "no images")


def test_layout_class_sets_differ(tmp_path):
    make_split(tmp_path, "train", ["a", "b", "c", "d"])
    make_split(tmp_path, "val", ["a", "x", "y"])
    with pytest.raises(DataError) as excinfo:
        list_splits(str(tmp_path))
    assert_one_line_error(excinfo, "class folders differ", "3 only in train/: b, c, d", "2 only in val/: x, y")


def test_layout_unknown_extension(tmp_path):
    root = make_imagenet(tmp_path)
    first = write(os.path.join(root, "train", "cat", "notes.txt"), b"x")
    write(os.path.join(root, "train", "dog", "z.gif"), b"x")
    with pytest.raises(DataError) as excinfo:
        list_splits(root)
    assert_one_line_error(excinfo, first, "and 1 more", "unknown extension", ".jpeg")


def test_layout_extension_case_insensitive(tmp_path):
    root = make_imagenet(tmp_path)
    for name in ("a.jpg", "b.JPG", "c.Png", "d.jpeg"):
        write(os.path.join(root, "train", "cat", name), jpeg_bytes(8, 8))
    files = list_splits(root)[1]["train"]
    assert len(files) == 3 + 4 + 3


# ---------------------------------------------------------------------------------------
# File list and cache
# ---------------------------------------------------------------------------------------


def test_file_list_order_and_labels(tmp_path):
    root = make_imagenet(tmp_path, classes=("b", "a"), train=2)
    write(os.path.join(root, "train", "a", "nested", "deep.JPEG"), jpeg_bytes(8, 8))
    split = os.path.join(root, "train")
    files = list_splits(root)[1]["train"]
    assert files == [
        (os.path.join(split, "a", "img0.JPEG"), 0),
        (os.path.join(split, "a", "img1.JPEG"), 0),
        (os.path.join(split, "a", "nested", "deep.JPEG"), 0),
        (os.path.join(split, "b", "img0.JPEG"), 1),
        (os.path.join(split, "b", "img1.JPEG"), 1),
    ]
    assert all(os.path.isfile(path) for path, _ in files)


def train_list(root, cache):
    """The train split's file list through list_splits, with ``cache`` as its --cache-dataset file."""
    return list_splits(root, ("train",), cache_files={"train": cache})[1]["train"]


def test_file_list_cache_round_trip(tmp_path, monkeypatch):
    root = make_imagenet(tmp_path / "data")
    split = os.path.join(root, "train")
    cache = str(tmp_path / "cache" / "train_files.json")
    scanned = train_list(root, cache)
    with open(cache, encoding="utf-8") as f:
        stored = json.load(f)  # plain JSON
    assert stored["version"] == 2 and stored["classes"] == ["cat", "dog"] and stored["counts"] == [3, 3]
    assert stored["names"].split("\0") == [os.path.relpath(p, split) for p, _ in scanned]
    assert os.listdir(os.path.dirname(cache)) == ["train_files.json"]  # no temp files left

    with monkeypatch.context() as m:
        m.setattr(os, "scandir", refuse_listing)
        assert train_list(root, cache) == scanned


def test_file_list_cache_notices_new_files(tmp_path):
    root = make_imagenet(tmp_path / "data")
    split = os.path.join(root, "train")
    cache = str(tmp_path / "files.json")
    before = train_list(root, cache)
    added = write(os.path.join(split, "dog", "new.JPEG"), jpeg_bytes(8, 8))
    # Make the folder change visible even on filesystems with coarse timestamps.
    stat = os.stat(os.path.dirname(added))
    os.utime(os.path.dirname(added), ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    after = train_list(root, cache)
    assert len(after) == len(before) + 1 and (added, 1) in after


def test_file_list_cache_other_split_dir_or_corrupt(tmp_path):
    root_a = make_imagenet(tmp_path / "a")
    root_b = make_imagenet(tmp_path / "b", train=1)
    cache = str(tmp_path / "files.json")
    train_list(root_a, cache)
    files_b = train_list(root_b, cache)
    assert len(files_b) == 2 and all(p.startswith(root_b) for p, _ in files_b)
    write(cache, b'{"format": "imagenet-file-list", "samp')  # torn file
    assert train_list(root_b, cache) == files_b


def bump_mtime(folder):
    """Make a change to ``folder`` visible even on filesystems with coarse timestamps."""
    stat = os.stat(folder)
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def test_file_list_gives_torchvision_imagefolders_pairs(tmp_path):
    from torchvision.datasets import ImageFolder

    root = make_imagenet(tmp_path, classes=("n02", "n01", "n10"), train=4)
    classes, lists = list_splits(root)
    for split, files in lists.items():
        reference = ImageFolder(os.path.join(root, split))
        assert isinstance(files, FileList) and len(files) == len(reference.samples)
        assert classes == reference.classes
        assert list(files) == reference.samples and files.targets.tolist() == reference.targets
    reference = ImageFolder(os.path.join(root, "train"))
    dataset = ImageFolderDataset(lists["train"], classes, decode_to_tensor)
    assert dataset.samples is lists["train"]  # kept as it is, not copied into Python objects
    assert dataset[5][1] == reference.targets[5] and dataset[5][0].shape == (16, 16, 3)


def test_file_list_as_a_sequence(tmp_path):
    pairs = [("/data/train/a/x.JPEG", 0), ("/data/train/a/ÿ.JPEG", 0), ("rel/b.png", 7)]
    files = FileList.from_pairs(pairs)
    assert len(files) == 3 and list(files) == pairs and files == pairs
    assert files[-1] == ("rel/b.png", 7) and files[np.int64(1)] == pairs[1]
    assert isinstance(files[0][1], int) and files.targets.dtype == np.int64
    assert ("rel/b.png", 7) in files and ("rel/b.png", 6) not in files
    with pytest.raises(IndexError):
        files[3]
    with pytest.raises(ValueError):
        files.targets[0] = 5  # read-only: a stray write would relabel data
    assert pickle.loads(pickle.dumps(files)) == files  # spawn-started workers receive it pickled
    relative = FileList.from_names("/data/train", ["a/x.JPEG", "b/y.JPEG"], [0, 1])
    assert list(relative) == [("/data/train/a/x.JPEG", 0), ("/data/train/b/y.JPEG", 1)]
    with pytest.raises(ValueError):
        FileList.from_names("/data", ["a\0b"], [0])


def test_file_list_keeps_names_that_are_not_utf8(tmp_path):
    root = make_imagenet(tmp_path / "data")
    name = os.fsdecode(b"caf\xe9.JPEG")  # Latin-1 bytes on disk: not valid UTF-8
    path = write(os.path.join(root, "train", "cat", name), jpeg_bytes(8, 8))
    cache = str(tmp_path / "train.json")
    scanned = list_splits(root, cache_files={"train": cache})[1]["train"]
    cached = list_splits(root, cache_files={"train": cache})[1]["train"]
    assert (path, 0) in scanned and cached == scanned
    assert datasets.read_file(cached[list(cached).index((path, 0))][0]) == jpeg_bytes(8, 8)


def private_dirty_kb():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def forked_read_growth_kb(samples):
    """KiB a forked child (as a DataLoader worker is) gains in private memory reading every entry once."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            order = np.random.default_rng(0).permutation(len(samples))
            before = private_dirty_kb()
            for i in order:
                path, label = samples[i]
            os.write(write_fd, str(private_dirty_kb() - before).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return int(answer)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc/self/smaps_rollup")
def test_forked_worker_does_not_copy_the_file_list():
    n = 200_000
    names = [f"n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG" for i in range(n)]
    files = FileList.from_names("/data/imagenet/train", names, [i % 1000 for i in range(n)])
    dataset = ImageFolderDataset(files, [str(c) for c in range(1000)], decode_to_tensor)
    control = list(files)  # the same entries as a list of (path, label) tuples
    ours_mb, control_mb = forked_read_growth_kb(dataset.samples) / 1024, forked_read_growth_kb(control) / 1024
    # Reading a tuple writes its reference count and copies its page: ~190 bytes an entry.
    assert control_mb > 15, control_mb
    assert ours_mb < 3 and ours_mb * 10 < control_mb, (ours_mb, control_mb)


def refuse_listing(*args, **kwargs):
    raise AssertionError("listed a folder")


def count_scandir(monkeypatch):
    """Record every folder os.scandir lists; os.listdir and os.walk must not be used at all."""
    calls = {}
    real = os.scandir

    def counting(path="."):
        key = os.path.normpath(os.fspath(path))
        calls[key] = calls.get(key, 0) + 1
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    monkeypatch.setattr(os, "listdir", refuse_listing)
    monkeypatch.setattr(os, "walk", refuse_listing)
    return calls


def test_start_up_lists_every_folder_once(tmp_path, monkeypatch):
    root = make_imagenet(tmp_path / "data", classes=("a", "b", "c"))
    write(os.path.join(root, "train", "b", "nested", "deep.JPEG"), jpeg_bytes(8, 8))
    calls = count_scandir(monkeypatch)
    splits, classes = data.build_datasets(data.DataConfig(data_path=root), need_train=True)
    assert classes == ["a", "b", "c"] and len(splits["train"]) == 10 and len(splits["val"]) == 6
    folders = [os.path.join(root, s) for s in ("train", "val")]
    folders += [os.path.join(root, s, c) for s in ("train", "val") for c in classes]
    folders.append(os.path.join(root, "train", "b", "nested"))
    assert calls == {os.path.normpath(f): 1 for f in folders}


def cache_config(tmp_path, monkeypatch, root):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # --cache-dataset writes under ~/.cache
    return data.DataConfig(data_path=root, cache_dataset=True)


def test_cache_dataset_fresh_cache_lists_nothing(tmp_path, monkeypatch):
    root = make_imagenet(tmp_path / "data")
    cfg = cache_config(tmp_path, monkeypatch, root)
    first, classes = data.build_datasets(cfg, need_train=True)
    cache_dir = tmp_path / "home" / ".cache" / "resnet50-imagenet" / "filelists"
    assert sorted(name.rsplit("-", 1)[1] for name in os.listdir(cache_dir)) == ["train.json", "val.json"]

    with monkeypatch.context() as m:
        for name in ("scandir", "listdir", "walk"):
            m.setattr(os, name, refuse_listing)
        again, classes_again = data.build_datasets(cfg, need_train=True)
    assert classes_again == classes
    for split in ("train", "val"):
        assert again[split].samples == first[split].samples and len(again[split]) == len(first[split])

    # A file added to a class folder changes the folder's mtime: the cache is stale, the split is listed again.
    added = write(os.path.join(root, "train", "dog", "new.JPEG"), jpeg_bytes(8, 8))
    bump_mtime(os.path.dirname(added))
    calls = count_scandir(monkeypatch)
    after, _ = data.build_datasets(cfg, need_train=True)
    assert (added, 1) in after["train"].samples and len(after["train"]) == len(first["train"]) + 1
    assert calls.get(os.path.join(root, "train", "dog")) == 1 and os.path.join(root, "val", "dog") not in calls


def test_cache_dataset_with_an_unwritable_home_warns_and_lists(tmp_path, monkeypatch, capsys):
    root = make_imagenet(tmp_path / "data")
    home = tmp_path / "home"
    home.write_text("a file where the home folder should be: nothing can be made under it")
    monkeypatch.setenv("HOME", str(home))
    splits, classes = data.build_datasets(data.DataConfig(data_path=root, cache_dataset=True), need_train=True)
    listed, listed_classes = data.build_datasets(data.DataConfig(data_path=root), need_train=True)
    assert classes == listed_classes and all(splits[s].samples == listed[s].samples for s in ("train", "val"))
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: cannot write file list cache ") for w in warnings)


def test_cache_dataset_notices_a_new_class_folder(tmp_path, monkeypatch):
    root = make_imagenet(tmp_path / "data")
    cfg = cache_config(tmp_path, monkeypatch, root)
    data.build_datasets(cfg, need_train=True)
    write(os.path.join(root, "val", "zebra", "img0.JPEG"), jpeg_bytes(8, 8))
    bump_mtime(os.path.join(root, "val"))
    with pytest.raises(DataError) as excinfo:
        data.build_datasets(cfg, need_train=True)
    assert_one_line_error(excinfo, "class folders differ", "1 only in val/: zebra")


def test_cache_written_without_layout_checks_is_not_trusted(tmp_path):
    root = make_imagenet(tmp_path / "data")
    cache = str(tmp_path / "train.json")
    train_list(root, cache)
    with open(cache, encoding="utf-8") as f:
        stored = json.load(f)
    # An odd file the listing in the cache does not know, with the folder's recorded mtime put back.
    odd = write(os.path.join(root, "train", "cat", "notes.txt"), b"x")
    folder = os.path.dirname(odd)
    os.utime(folder, ns=(os.stat(folder).st_atime_ns, stored["dirs"]["cat"]))
    assert len(train_list(root, cache)) == 6  # a fresh, checked cache is trusted
    stored["layout_checked"] = False  # as an unchecked listing would write it
    write(cache, json.dumps(stored).encode())
    with pytest.raises(DataError) as excinfo:
        train_list(root, cache)
    assert_one_line_error(excinfo, odd, "unknown extension")


@pytest.mark.parametrize("damage", ["version 1", "counts disagree"])
def test_stale_or_damaged_cache_is_rebuilt_not_misread(tmp_path, damage):
    root = make_imagenet(tmp_path / "data")
    cache = str(tmp_path / "train.json")
    scanned = list_splits(root, cache_files={"train": cache})[1]["train"]
    with open(cache, encoding="utf-8") as f:
        stored = json.load(f)
    if damage == "version 1":  # the format before: [path, label] pairs, one of them wrong
        stored = {k: stored[k] for k in ("format", "split_dir", "classes", "dirs")}
        stored.update(version=1, samples=[["cat/img0.JPEG", 1]])
    else:
        stored["counts"] = [2, 3]
    write(cache, json.dumps(stored).encode())
    assert list_splits(root, cache_files={"train": cache})[1]["train"] == scanned
    with open(cache, encoding="utf-8") as f:
        assert json.load(f)["counts"] == [3, 3]  # rewritten by the rescan


# ---------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------


def decode_to_tensor(data, path):
    """Module-level transform so DataLoader workers can pickle it."""
    return torch.from_numpy(np.asarray(decode_pil(data, path)).copy())


def random_draws(data, path):
    return torch.rand(4), random.random(), float(np.random.rand())


def mixed_samples(tmp_path):
    """Samples: good, truncated, empty, good, not-an-image, good (labels 0..5)."""
    bad = bad_file_bytes()
    contents = [jpeg_bytes(8, 8, seed=1), bad["truncated.JPEG"][0], b"", jpeg_bytes(8, 8, seed=2),
                bad["text.JPEG"][0], jpeg_bytes(8, 8, seed=3)]
    paths = [write(str(tmp_path / f"s{i}.JPEG"), data) for i, data in enumerate(contents)]
    return [(path, label) for label, path in enumerate(paths)]


def test_dataset_basics(tmp_path):
    root = make_imagenet(tmp_path)
    samples = list_splits(root)[1]["train"]
    ds = ImageFolderDataset(samples, ["cat", "dog"], decode_to_tensor)
    assert len(ds) == 6 and ds.samples == samples and ds.classes == ["cat", "dog"]
    assert isinstance(ds.targets, np.ndarray) and ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    output, target, n_bad = ds[4]
    assert output.shape == (16, 16, 3) and target == 1 and n_bad == 0
    assert ds[np.int64(4)][1] == 1 and ds[-1][1] == 1
    with pytest.raises(IndexError):
        ds[6]


def test_unknown_bad_images_mode_is_refused_by_the_command_line(capsys):
    import train

    with pytest.raises(SystemExit) as exc:
        train.get_args_parser().parse_args(["--bad-images", "ignore"])
    assert exc.value.code == 2 and "--bad-images: invalid choice: 'ignore'" in capsys.readouterr().err


def test_dataset_error_mode_raises(tmp_path):
    samples = mixed_samples(tmp_path)
    ds = ImageFolderDataset(samples, list("abcdef"), decode_to_tensor, bad_images="error")
    with pytest.raises(BadImageError, match="truncated") as excinfo:
        ds[1]
    assert samples[1][0] in str(excinfo.value)


def test_dataset_unreadable_file_is_bad_image(tmp_path):
    samples = mixed_samples(tmp_path)
    os.remove(samples[0][0])
    ds = ImageFolderDataset(samples, list("abcdef"), decode_to_tensor)
    with pytest.raises(BadImageError, match="cannot read") as excinfo:
        ds[0]
    assert samples[0][0] in str(excinfo.value)


def test_dataset_skip_mode_replaces_counts_and_logs_once(tmp_path, capsys):
    samples = mixed_samples(tmp_path)
    ds = ImageFolderDataset(samples, list("abcdef"), decode_to_tensor, bad_images="skip")
    output, target, n_bad = ds[1]  # truncated, empty -> next good is index 3
    assert (target, n_bad) == (3, 2)
    assert torch.equal(output, ds[3][0])
    assert ds[4][1:] == (5, 1)
    ds[1]
    ds[(2, 5)]
    err = capsys.readouterr().err
    for index, reason in ((1, "truncated"), (2, "empty file"), (4, "not an image")):
        line = f"skipping bad image {samples[index][0]}: {reason}"
        assert err.count(line) == 1, err


def test_dataset_skip_mode_wraps_around(tmp_path):
    samples = mixed_samples(tmp_path)[:3]  # good, truncated, empty
    ds = ImageFolderDataset(samples, list("abc"), decode_to_tensor, bad_images="skip")
    assert ds[1][1:] == (0, 2)


def test_dataset_skip_mode_gives_up(tmp_path, capsys):
    path = write(str(tmp_path / "empty.JPEG"), b"")
    ds = ImageFolderDataset([(path, 0)] * 60, ["a"], decode_to_tensor, bad_images="skip")
    with pytest.raises(DataError, match="50 bad images in a row") as excinfo:
        ds[0]
    assert not isinstance(excinfo.value, BadImageError)
    assert capsys.readouterr().err.count("skipping bad image") == 1


def test_dataset_seeded_items_are_reproducible_and_leave_rng_alone(tmp_path):
    samples = mixed_samples(tmp_path)
    ds = ImageFolderDataset(samples, list("abcdef"), random_draws)
    torch.manual_seed(123)
    random.seed(123)
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()

    first = ds[(0, 42)]
    other = ds[(3, 42)]  # same seed, other sample: same draws, order must not matter
    ds[(5, 7)]
    again = ds[(0, 42)]
    different = ds[(0, 43)]

    assert torch.equal(first[0][0], again[0][0]) and first[0][1:] == again[0][1:]
    assert torch.equal(first[0][0], other[0][0])
    assert not torch.equal(first[0][0], different[0][0])
    assert first[0][1] != different[0][1]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    np.testing.assert_array_equal(np.random.get_state()[1], np_state[1])
    # Unseeded items draw from (and advance) the caller's streams.
    ds[0]
    assert not torch.equal(torch.get_rng_state(), torch_state)


def test_dataset_seeded_skip_uses_the_same_seed(tmp_path):
    samples = mixed_samples(tmp_path)
    ds = ImageFolderDataset(samples, list("abcdef"), random_draws, bad_images="skip")
    # random_draws never decodes, so make a file unreadable to force a replacement.
    os.remove(samples[0][0])
    replaced, target, n_bad = ds[(0, 9)]
    direct = ds[(1, 9)][0]
    assert (target, n_bad) == (1, 1)
    assert torch.equal(replaced[0], direct[0]) and replaced[1:] == direct[1:]


def test_bad_image_error_survives_dataloader_workers(tmp_path):
    samples = mixed_samples(tmp_path)
    ds = ImageFolderDataset(samples, list("abcdef"), decode_to_tensor, bad_images="error")
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [0, 3, 4]), batch_size=1, num_workers=2)
    with pytest.raises(BadImageError) as excinfo:
        list(loader)
    assert samples[4][0] in str(excinfo.value)
    assert "not an image" in str(excinfo.value)


def test_skip_mode_through_dataloader_workers(tmp_path):
    samples = mixed_samples(tmp_path)
    ds = ImageFolderDataset(samples, list("abcdef"), decode_to_tensor, bad_images="skip")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    targets = torch.cat([b[1] for b in batches]).tolist()
    n_bad = torch.cat([b[2] for b in batches]).tolist()
    assert targets == [0, 3, 3, 3, 5, 5]
    assert n_bad == [0, 2, 1, 0, 1, 0]


# ---------------------------------------------------------------------------------------
# Verification command
# ---------------------------------------------------------------------------------------


def test_verify_clean_dataset(tmp_path, capsys):
    root = make_imagenet(tmp_path)
    report = verify_dataset(root, workers=2, progress=True)
    assert report["splits"] == {
        "train": {"images": 6, "classes": 2, "bad": []},
        "val": {"images": 4, "classes": 2, "bad": []},
    }
    assert "verify train: 6/6" in capsys.readouterr().err
    assert run_verify(root, workers=0) == 0
    out = capsys.readouterr().out
    assert "train: 6 images in 2 classes" in out and "val: 4 images in 2 classes" in out
    assert "all images decoded cleanly" in out


def test_verify_finds_every_bad_file(tmp_path, capsys, recwarn):
    root = make_imagenet(tmp_path)
    bad = {}
    for name, (data, reason) in bad_file_bytes().items():
        bad[write(os.path.join(root, "train", "dog", name), data)] = reason
    for name, data in good_file_bytes().items():
        write(os.path.join(root, "val", "cat", name), data)

    report = verify_dataset(root, workers=2, progress=False)
    assert report["splits"]["train"]["images"] == 6 + len(bad)
    assert report["splits"]["train"]["bad"] == sorted(bad.items())
    assert report["splits"]["val"] == {"images": 4 + len(good_file_bytes()), "classes": 2, "bad": []}
    assert capsys.readouterr().err == ""  # progress=False: silent

    assert run_verify(root, workers=2) == 1
    out = capsys.readouterr().out
    assert f"{len(bad)} unreadable file(s)" in out
    for path, reason in bad.items():
        assert f"{path}: {reason}" in out
    assert [str(w.message) for w in recwarn] == []


def test_verify_in_process_matches_pool(tmp_path):
    root = make_imagenet(tmp_path)
    write(os.path.join(root, "val", "dog", "empty.JPEG"), b"")
    assert verify_dataset(root, workers=0, progress=False) == verify_dataset(root, workers=2, progress=False)


def test_run_verify_layout_error(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    assert run_verify(missing) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0]
    assert captured.out == ""


def test_format_verify_report_compares_with_imagenet():
    report = {
        "data_path": "D",
        "splits": {
            "train": {"images": 1_281_167, "classes": 1000, "bad": []},
            "val": {"images": 49_990, "classes": 1000, "bad": [("D/val/x/a.JPEG", "truncated")]},
        },
    }
    text = format_verify_report(report)
    assert "train: 1,281,167 images in 1000 classes (matches ImageNet-1k train: 1,281,167)" in text
    assert "val: 49,990 images in 1000 classes (ImageNet-1k val has 50,000: -10 images" in text
    assert "1 unreadable file(s)" in text and "D/val/x/a.JPEG: truncated" in text

    small = {"splits": {"train": {"images": 10, "classes": 2, "bad": []}}}
    assert "ImageNet" not in format_verify_report(small)


@pytest.mark.parametrize("cores, processes, expected", [(24, 1, 16), (24, 4, 6), (24, 48, 1), (3, 2, 1), (8, 1, 8)])
def test_default_workers_shares_this_processes_cores_between_the_nodes_processes(monkeypatch, cores, processes,
                                                                                 expected):
    # The affinity mask, not the machine's core count: SLURM and containers give a job fewer cores.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4 * cores)
    assert datasets.default_workers(processes) == expected
