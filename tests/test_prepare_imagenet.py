"""Tests for prepare_imagenet.py on miniature archives in the official ILSVRC2012 formats.

The archives are built here the way the real ones are laid out: an outer train tar of
per-class tars, a flat val tar, and a devkit tar.gz whose meta.mat is a `synsets`
struct array (made with scipy.io.savemat) plus the ground-truth text file.
"""

import io
import os
import shutil
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import prepare_imagenet as prep  # noqa: E402

scipy_io = pytest.importorskip("scipy.io", reason="tests build meta.mat with scipy (pip install scipy)")

WNIDS = ["n00000001", "n00000002", "n00000003"]
# ILSVRC2012_ID of each val image, in val image order (IDs are 1-based into WNIDS).
VAL_IDS = [2, 1, 3, 3, 1, 2]
OLD_MTIME = 1_000_000_000  # a 2001 timestamp: files still carrying it were not rewritten


def jpeg_bytes(seed, size=16):
    """A real, small JPEG whose colour depends on `seed`, so every file differs."""
    image = Image.new("RGB", (size, size + seed % 5),
                      ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_bytes(files):
    """An uncompressed tar holding {name: bytes}, as bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            add_bytes(tar, name, data)
    return buffer.getvalue()


def make_meta_mat(path, wnids, train_per_class):
    """Write a meta.mat with the real layout: (N, 1) struct array `synsets`.

    Leaf classes get ILSVRC2012_ID 1..len(wnids); one extra non-leaf synset follows,
    as in the real file where IDs 1001..1860 are internal WordNet nodes.
    """
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    synsets = np.zeros((len(wnids) + 1, 1), dtype=[(f, "O") for f in fields])
    for i, wnid in enumerate(wnids):
        synsets[i, 0] = (np.array([[i + 1]], dtype=np.uint16), wnid, f"class {i}", "a leaf",
                         np.array([[0]], dtype=np.uint8), np.zeros((1, 0)),
                         np.array([[0]], dtype=np.uint8),
                         np.array([[train_per_class]], dtype=np.uint16))
    parent = len(wnids) + 1
    synsets[len(wnids), 0] = (np.array([[parent]], dtype=np.uint16), "n09999999", "parent",
                              "an inner node", np.array([[len(wnids)]], dtype=np.uint8),
                              np.arange(1, len(wnids) + 1, dtype=np.uint16).reshape(1, -1),
                              np.array([[1]], dtype=np.uint8), np.array([[0]], dtype=np.uint16))
    scipy_io.savemat(path, {"synsets": synsets})


def build_imagenet(root, wnids=WNIDS, tar_wnids=None, train_per_class=2, val_ids=VAL_IDS):
    """Write the three official files under `root`; return paths and expected contents.

    `tar_wnids` lets the train tar hold fewer classes than the devkit describes.
    """
    root.mkdir(parents=True, exist_ok=True)
    tar_wnids = wnids if tar_wnids is None else tar_wnids
    train = {}
    train_tar = root / prep.TRAIN_TAR_NAME
    with tarfile.open(train_tar, "w") as outer:
        for c, wnid in enumerate(tar_wnids):
            files = {f"{wnid}_{k}.JPEG": jpeg_bytes(10 * c + k) for k in range(train_per_class)}
            train[wnid] = files
            add_bytes(outer, f"{wnid}.tar", tar_bytes(files))
    val = {}
    val_tar = root / prep.VAL_TAR_NAME
    with tarfile.open(val_tar, "w") as tar:
        for i, class_id in enumerate(val_ids, start=1):
            name = f"ILSVRC2012_val_{i:08d}.JPEG"
            data = jpeg_bytes(100 + i, size=20)
            # An ID outside the class list (bad-input tests) has no expected folder.
            val[name] = (wnids[class_id - 1] if class_id <= len(wnids) else None, data)
            add_bytes(tar, name, data)
    data_dir = root / "devkit_build" / prep.DEVKIT_DIR_NAME / "data"
    data_dir.mkdir(parents=True)
    make_meta_mat(data_dir / "meta.mat", wnids, train_per_class)
    (data_dir / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{i}\n" for i in val_ids))
    devkit = root / prep.DEVKIT_NAME
    with tarfile.open(devkit, "w:gz") as tar:
        tar.add(root / "devkit_build" / prep.DEVKIT_DIR_NAME, arcname=prep.DEVKIT_DIR_NAME)
    shutil.rmtree(root / "devkit_build")
    return {"train_tar": train_tar, "val_tar": val_tar, "devkit": devkit,
            "train": train, "val": val}


@pytest.fixture
def imagenet(tmp_path):
    return build_imagenet(tmp_path / "downloads")


def full_args(data, out):
    return ["--train-tar", str(data["train_tar"]), "--val-tar", str(data["val_tar"]),
            "--devkit", str(data["devkit"]), "--output", str(out), "--no-progress"]


def all_files(folder):
    """{relative path: bytes} of every file below `folder`, hidden ones included."""
    result = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, folder)] = f.read()
    return result


def expected_files(data):
    expected = {}
    for wnid, files in data["train"].items():
        for name, content in files.items():
            expected[os.path.join("train", wnid, name)] = content
    for name, (wnid, content) in data["val"].items():
        expected[os.path.join("val", wnid, name)] = content
    return expected


def age_all_files(folder):
    for dirpath, _, names in os.walk(folder):
        for name in names:
            os.utime(os.path.join(dirpath, name), (OLD_MTIME, OLD_MTIME))


def mtime(path):
    return int(os.stat(path).st_mtime)


# --------------------------------------------------------------------------- full runs


def test_full_run_writes_layout_and_labels_val(imagenet, tmp_path, capsys):
    out = tmp_path / "out"
    assert prep.main(full_args(imagenet, out)) == 0
    # Exactly the expected files with the original bytes: nothing extra, no temp or .partial.
    assert all_files(out) == expected_files(imagenet)
    # Val images sit in the class the ground truth gives them (ID 2 -> second wnid, ...).
    for i, class_id in enumerate(VAL_IDS, start=1):
        assert (out / "val" / WNIDS[class_id - 1] / f"ILSVRC2012_val_{i:08d}.JPEG").is_file()
    with Image.open(out / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG") as image:
        assert image.format == "JPEG"
    stdout = capsys.readouterr().out
    assert "train: 6 of 6 images, 3 of 3 classes: complete" in stdout
    assert "val: 6 of 6 images, 3 of 3 classes: complete" in stdout


def test_source_folder_with_official_names(imagenet, tmp_path):
    out = tmp_path / "out"
    source = str(imagenet["train_tar"].parent)
    assert prep.main(["--source", source, "--output", str(out), "--no-progress"]) == 0
    assert all_files(out) == expected_files(imagenet)


def test_split_train_only_needs_no_val(imagenet, tmp_path):
    out = tmp_path / "out"
    argv = ["--train-tar", str(imagenet["train_tar"]), "--devkit", str(imagenet["devkit"]),
            "--split", "train", "--output", str(out), "--no-progress"]
    assert prep.main(argv) == 0
    assert sorted(os.listdir(out)) == ["train"]


def test_flat_val_dir(imagenet, tmp_path, capsys):
    flat = tmp_path / "val_flat"
    flat.mkdir()
    for name, (_, content) in imagenet["val"].items():
        (flat / name).write_bytes(content)
    (flat / "README.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["--val-dir", str(flat), "--devkit", str(imagenet["devkit"]), "--split", "val",
            "--output", str(out), "--no-progress"]
    assert prep.main(argv) == 0
    expected = {k: v for k, v in expected_files(imagenet).items() if k.startswith("val")}
    assert all_files(out) == expected
    captured = capsys.readouterr()
    assert "README.txt" in captured.err  # the stray file is reported, not copied
    # A second run writes nothing and leaves files untouched.
    age_all_files(out)
    assert prep.main(argv) == 0
    assert "val: images written 0, already present 6" in capsys.readouterr().out
    assert {mtime(os.path.join(out, p)) for p in expected} == {OLD_MTIME}


def test_devkit_as_extracted_folder(imagenet, tmp_path):
    extracted = tmp_path / "devkit_extracted"
    with tarfile.open(imagenet["devkit"]) as tar:
        for member in tar.getmembers():
            if member.isfile():
                target = extracted / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    devkit = prep.read_devkit(str(extracted))
    assert devkit.val_labels == [WNIDS[i - 1] for i in VAL_IDS]


# --------------------------------------------------------------------------- resume


def test_interrupted_run_resumes_without_redoing_finished_work(imagenet, tmp_path, capsys):
    out = tmp_path / "out"
    assert prep.main(full_args(imagenet, out)) == 0
    capsys.readouterr()
    # Simulate an interruption: class 2 was mid-way (only a .partial folder with one
    # image and some junk), and only half of val was written, one of it cut short.
    unfinished = WNIDS[1]
    partial = out / "train" / (unfinished + prep.PARTIAL_SUFFIX)
    os.rename(out / "train" / unfinished, partial)
    (partial / f"{unfinished}_1.JPEG").unlink()
    (partial / "junk.JPEG").write_bytes(b"half written")
    val_names = sorted(imagenet["val"])
    for name in val_names[:3]:
        wnid = imagenet["val"][name][0]
        (out / "val" / wnid / name).unlink()
    cut_name = val_names[3]
    cut = out / "val" / imagenet["val"][cut_name][0] / cut_name
    cut.write_bytes(cut.read_bytes()[:10])
    leftover_tmp = out / "val" / imagenet["val"][val_names[0]][0] / f".{val_names[0]}.tmp"
    leftover_tmp.write_bytes(b"partial temp")
    age_all_files(out)

    assert prep.main(full_args(imagenet, out)) == 0
    stdout = capsys.readouterr().out
    assert "train: classes written 1 (2 images), finished earlier 2, unfinished redone 1" in stdout
    assert "val: images written 4, already present 2" in stdout
    # Result is exact again: junk and temp files gone, every image has the original bytes.
    assert all_files(out) == expected_files(imagenet)
    # Finished classes and finished val images were not rewritten.
    for wnid in (WNIDS[0], WNIDS[2]):
        for name in imagenet["train"][wnid]:
            assert mtime(out / "train" / wnid / name) == OLD_MTIME
    for name in val_names[4:]:
        assert mtime(out / "val" / imagenet["val"][name][0] / name) == OLD_MTIME
    for name in val_names[:4]:
        assert mtime(out / "val" / imagenet["val"][name][0] / name) != OLD_MTIME


def test_prepare_train_reports_skipped_and_redone(imagenet, tmp_path):
    out = tmp_path / "out"
    (out / "train" / WNIDS[0]).mkdir(parents=True)  # marked finished: must not be touched
    (out / "train" / (WNIDS[2] + prep.PARTIAL_SUFFIX)).mkdir()
    bar = prep.ProgressBar(6, "train", enabled=False)
    result = prep.prepare_train(str(imagenet["train_tar"]), str(out), bar)
    assert result.skipped == [WNIDS[0]]
    assert result.written == [WNIDS[1], WNIDS[2]]
    assert result.redone == [WNIDS[2]]
    assert result.images == 4
    assert os.listdir(out / "train" / WNIDS[0]) == []
    assert not (out / "train" / (WNIDS[2] + prep.PARTIAL_SUFFIX)).exists()


# --------------------------------------------------------------------------- final check


def test_missing_class_is_named_and_exits_1(tmp_path, capsys):
    wnids = WNIDS + ["n00000004"]
    data = build_imagenet(tmp_path / "downloads", wnids=wnids, tar_wnids=WNIDS,
                          val_ids=[1, 2, 3, 4])
    out = tmp_path / "out"
    (out / "train" / "n77777777").mkdir(parents=True)  # stray folder: reported as extra
    argv = ["--train-tar", str(data["train_tar"]), "--devkit", str(data["devkit"]),
            "--split", "train", "--output", str(out), "--no-progress"]
    assert prep.main(argv) == 1
    stdout = capsys.readouterr().out
    assert "train: 6 of 8 images, 4 of 4 classes: INCOMPLETE" in stdout
    assert "missing classes (1): n00000004" in stdout
    assert "unexpected folders (1): n77777777" in stdout


def test_wrong_count_and_partial_are_reported(imagenet, tmp_path, capsys):
    out = tmp_path / "out"
    assert prep.main(full_args(imagenet, out)) == 0
    (out / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").unlink()
    os.rename(out / "train" / WNIDS[2], out / "train" / (WNIDS[2] + prep.PARTIAL_SUFFIX))
    capsys.readouterr()
    argv = ["--check-only", "--devkit", str(imagenet["devkit"]), "--output", str(out)]
    assert prep.main(argv) == 1
    stdout = capsys.readouterr().out
    assert f"{WNIDS[0]} 1 of 2" in stdout
    assert f"missing classes (1): {WNIDS[2]}" in stdout
    assert f"unfinished classes (1; .partial folders, redone by a rerun): {WNIDS[2]}" in stdout
    assert "val: 6 of 6 images, 3 of 3 classes: complete" in stdout


def test_check_without_devkit_uses_official_totals(tmp_path):
    (tmp_path / "train" / "n00000001").mkdir(parents=True)
    (tmp_path / "train" / "n00000001" / "a.JPEG").write_bytes(jpeg_bytes(1))
    expected = prep.expectation_for("train", None)
    assert (expected.num_classes, expected.num_images) == (1000, 1_281_167)
    report = prep.check_split(str(tmp_path / "train"), "train", expected)
    assert not report.complete
    text = prep.format_report(report)
    assert "1 of 1,281,167 images, 1 of 1,000 classes: INCOMPLETE" in text
    assert "--devkit" in text


def test_devkit_note_flags_non_official_devkit(imagenet):
    devkit = prep.read_devkit(str(imagenet["devkit"]))
    assert "not the official 1,000" in prep.devkit_note(devkit)


# --------------------------------------------------------------------------- devkit parsing


def test_read_devkit_keeps_leaf_synsets_only(imagenet):
    devkit = prep.read_devkit(str(imagenet["devkit"]))
    assert devkit.id_to_wnid == {1: WNIDS[0], 2: WNIDS[1], 3: WNIDS[2]}  # not the parent node
    assert devkit.train_counts == {w: 2 for w in WNIDS}
    assert devkit.val_labels == [WNIDS[i - 1] for i in VAL_IDS]


# --------------------------------------------------------------------------- bad input


def assert_one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prepare_imagenet: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_missing_train_tar_exits_2(imagenet, tmp_path, capsys):
    missing = tmp_path / "nope.tar"
    argv = ["--train-tar", str(missing), "--split", "train", "--output", str(tmp_path / "out")]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, str(missing), "--train-tar")
    assert not (tmp_path / "out").exists()


def test_train_tar_that_is_not_a_tar_exits_2(tmp_path, capsys):
    bogus = tmp_path / "train.tar"
    bogus.write_bytes(b"this is not a tar archive" * 40)
    argv = ["--train-tar", str(bogus), "--split", "train", "--output", str(tmp_path / "out"),
            "--no-progress"]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, str(bogus), "not a readable tar")


def test_val_tar_that_is_not_a_tar_exits_2(imagenet, tmp_path, capsys):
    bogus = tmp_path / "val.tar"
    bogus.write_bytes(b"\x00garbage" * 200)
    argv = ["--val-tar", str(bogus), "--devkit", str(imagenet["devkit"]), "--split", "val",
            "--output", str(tmp_path / "out"), "--no-progress"]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, str(bogus))


def test_inner_member_that_is_not_a_tar_exits_2(tmp_path, capsys):
    outer_path = tmp_path / "train.tar"
    with tarfile.open(outer_path, "w") as outer:
        add_bytes(outer, "n00000001.tar", b"not a tar" * 100)
    argv = ["--train-tar", str(outer_path), "--split", "train", "--output", str(tmp_path / "out"),
            "--no-progress"]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, "n00000001.tar", "not a readable tar")
    assert not (tmp_path / "out" / "train" / "n00000001").exists()


def test_truncated_train_tar_exits_2(imagenet, tmp_path, capsys):
    with tarfile.open(imagenet["train_tar"]) as tar:
        second = tar.getmembers()[1]
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(imagenet["train_tar"].read_bytes()[:second.offset_data + 700])
    out = tmp_path / "out"
    argv = ["--train-tar", str(truncated), "--split", "train", "--output", str(out),
            "--no-progress"]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, str(truncated), second.name)
    # The first class is complete; the cut one stays unfinished so a rerun redoes it.
    assert (out / "train" / WNIDS[0]).is_dir()
    assert not (out / "train" / WNIDS[1]).exists()


@pytest.mark.parametrize("bad_name", ["../evil.tar", "/abs/evil.tar", "a/../../evil.tar"])
def test_unsafe_member_names_are_rejected(tmp_path, capsys, bad_name):
    outer_path = tmp_path / "train.tar"
    with tarfile.open(outer_path, "w") as outer:
        add_bytes(outer, bad_name, tar_bytes({"x.JPEG": jpeg_bytes(1)}))
    out = tmp_path / "deep" / "out"
    argv = ["--train-tar", str(outer_path), "--split", "train", "--output", str(out),
            "--no-progress"]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, "unsafe member name", str(outer_path))
    assert not list((tmp_path / "deep").glob("evil*"))
    assert os.listdir(out / "train") == []


def test_unsafe_name_inside_class_tar_is_rejected(tmp_path, capsys):
    outer_path = tmp_path / "train.tar"
    with tarfile.open(outer_path, "w") as outer:
        add_bytes(outer, "n00000001.tar", tar_bytes({"../../evil.JPEG": jpeg_bytes(1)}))
    argv = ["--train-tar", str(outer_path), "--split", "train", "--output",
            str(tmp_path / "a" / "b"), "--no-progress"]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, "unsafe member name", "n00000001.tar")
    assert not list(tmp_path.rglob("evil*"))


def test_devkit_without_meta_exits_2(imagenet, tmp_path, capsys):
    devkit = tmp_path / "devkit.tar.gz"
    with tarfile.open(devkit, "w:gz") as tar:
        add_bytes(tar, "ILSVRC2012_devkit_t12/readme.txt", b"hello")
    argv = ["--val-tar", str(imagenet["val_tar"]), "--devkit", str(devkit), "--split", "val",
            "--output", str(tmp_path / "out")]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, str(devkit), "meta.mat")


def test_ground_truth_with_unknown_id_exits_2(tmp_path, capsys):
    data = build_imagenet(tmp_path / "downloads", val_ids=[1, 2, 9])
    argv = full_args(data, tmp_path / "out")
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, "ILSVRC2012_validation_ground_truth.txt:3", "9")


def test_val_needs_devkit(imagenet, tmp_path, capsys):
    argv = ["--val-tar", str(imagenet["val_tar"]), "--split", "val",
            "--output", str(tmp_path / "out")]
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, "--devkit")


def test_missing_scipy_gives_install_hint(imagenet, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    argv = full_args(imagenet, tmp_path / "out")
    assert prep.main(argv) == 2
    assert_one_line_error(capsys, "pip install scipy", "meta.mat")


def test_help_and_bad_options_return_codes(capsys):
    assert prep.main(["--help"]) == 0
    assert prep.main(["--output", "x", "--split", "test"]) == 2
    capsys.readouterr()


# --------------------------------------------------------------------------- progress bar


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_bar_throttles_and_reports_rate_and_eta():
    clock = FakeClock()
    stream = io.StringIO()
    bar = prep.ProgressBar(100, "train images", stream=stream, min_interval=1.0, clock=clock)
    bar.skip(20)  # done by an earlier run: counts toward position, not rate
    for _ in range(30):
        bar.advance(1)
    assert len(stream.getvalue().splitlines()) == 1  # many updates, one draw
    clock.now += 10.0
    bar.advance(0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    # 50 of 100 done; 30 written in 10 s -> 3.0/s; 50 left -> ETA 16.7 s, shown to the nearest second.
    assert lines[1] == "train images: 50/100  50.0% 3.0/s elapsed 0:00:10 ETA 0:00:17"
    bar.close()
    assert len(stream.getvalue().splitlines()) == 3


def test_progress_bar_disabled_writes_nothing():
    stream = io.StringIO()
    bar = prep.ProgressBar(10, "x", stream=stream, enabled=False)
    bar.advance(5)
    bar.close()
    assert stream.getvalue() == ""
