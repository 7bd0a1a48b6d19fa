"""fileio.atomic_write follows the durability rules in order, keeps the old file on failure and gives the new
file the permissions a plain open() would."""

import os
import stat

import pytest

import fileio


def test_atomic_write_order_write_flush_fsync_replace_fsync_dir(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    data = b'{"status": "finished"}\n'
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def write(f):
        calls.append(("write",))
        f.write(data)

    def recording_fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            calls.append(("fsync dir",))
        else:
            # What the file holds on disk at fsync time: all of it only if it was flushed first.
            calls.append(("fsync file", st.st_size))
        real_fsync(fd)

    def recording_replace(src, dst):
        assert os.path.dirname(os.path.abspath(src)) == str(tmp_path), "the temporary file must be in the same folder"
        calls.append(("replace", os.path.abspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", recording_fsync)
    monkeypatch.setattr(fileio.os, "replace", recording_replace)
    fileio.atomic_write(str(path), write)
    assert calls == [("write",), ("fsync file", len(data)), ("replace", str(path)), ("fsync dir",)]
    assert path.read_bytes() == data
    assert os.listdir(tmp_path) == ["summary.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text("old")

    def fails_half_way(f):
        f.write("new, but only ha")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        fileio.atomic_write(str(path), fails_half_way, binary=False)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["cache.json"]


def test_new_file_gets_open_permissions_and_a_replaced_file_keeps_its_own(tmp_path):
    old_mask = os.umask(0o022)
    try:
        fileio.atomic_write(str(tmp_path / "new.JPEG"), lambda f: f.write(b"x"))
        (tmp_path / "kept").write_text("old")
        os.chmod(tmp_path / "kept", 0o640)
        fileio.atomic_write(str(tmp_path / "kept"), lambda f: f.write("new"), binary=False)
    finally:
        os.umask(old_mask)
    # Readable by the group and others, as open() makes it (mkstemp alone would give 0600).
    assert stat.S_IMODE(os.stat(tmp_path / "new.JPEG").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "kept").st_mode) == 0o640
    assert (tmp_path / "kept").read_text() == "new"
