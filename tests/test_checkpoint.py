"""Checkpoint files on disk: atomic replace, failed writes keep the old file, retention, --resume auto picks
the newest checkpoint that loads and skips corrupt ones."""

import os

import pytest
import torch

import checkpoint as ckpt_io


def state(epoch, step=0, value=0.0):
    return {"model": {"w": torch.full((4,), value)}, "epoch": epoch, "step_in_epoch": step}


def test_save_writes_latest_epoch_and_best_and_loads_weights_only(tmp_path):
    ckpt_io.save_checkpoint(state(0, value=1.0), str(tmp_path), epoch_end=True, epoch=0, is_best=True, keep=None)
    ckpt_io.save_checkpoint(state(1, value=2.0), str(tmp_path), epoch_end=True, epoch=1, is_best=False, keep=None)
    names = sorted(p for p in os.listdir(tmp_path) if not p.startswith("."))
    assert names == ["checkpoint.pth", "model_0.pth", "model_1.pth", "model_best.pth"]
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]["w"][0] == 2.0
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["model"]["w"][0] == 1.0
    assert torch.load(tmp_path / "model_0.pth", weights_only=True)["epoch"] == 0


def test_keep_checkpoints_prunes_oldest_epoch_files(tmp_path):
    for e in range(5):
        ckpt_io.save_checkpoint(state(e), str(tmp_path), epoch_end=True, epoch=e, is_best=e == 1, keep=2)
    assert [e for e, _ in ckpt_io.epoch_checkpoints(str(tmp_path))] == [3, 4]
    assert (tmp_path / "model_best.pth").exists() and (tmp_path / "checkpoint.pth").exists()


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt_io.save_checkpoint(state(0, value=5.0), str(tmp_path), epoch_end=True, epoch=0, is_best=False, keep=None)

    def disk_full(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(ckpt_io.CheckpointError, match="No space left on device.*previous checkpoint is kept"):
        ckpt_io.save_checkpoint(state(1), str(tmp_path), epoch_end=True, epoch=1, is_best=False, keep=None)
    monkeypatch.undo()
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]["w"][0] == 5.0
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p], "temporary file left behind"
    assert not (tmp_path / "model_1.pth").exists()


def test_resume_auto_skips_corrupt_newest(tmp_path, capsys):
    for e in range(3):
        ckpt_io.save_checkpoint(state(e), str(tmp_path), epoch_end=True, epoch=e, is_best=False, keep=None)
    # The newest files are truncated, as a crash in the middle of a non-atomic write would leave them.
    for name in ("checkpoint.pth", "model_2.pth"):
        os.unlink(tmp_path / name)  # break the hard link first, so the other names keep their data
        (tmp_path / name).write_bytes(b"PK\x03\x04 truncated")
    path, ckpt = ckpt_io.find_resume_checkpoint(str(tmp_path), log=print)
    assert path.endswith("model_1.pth") and ckpt["epoch"] == 1
    out = capsys.readouterr().out
    assert "checkpoint.pth" in out and "model_2.pth" in out and "skipping" in out


def test_resume_auto_prefers_mid_epoch_latest_over_older_epoch_file(tmp_path):
    ckpt_io.save_checkpoint(state(0), str(tmp_path), epoch_end=True, epoch=0, is_best=False, keep=None)
    ckpt_io.save_checkpoint(state(0, step=3), str(tmp_path), epoch_end=False, epoch=0, is_best=False, keep=None)
    path, ckpt = ckpt_io.find_resume_checkpoint(str(tmp_path), log=print)
    assert path.endswith("checkpoint.pth") and ckpt["step_in_epoch"] == 3
    assert ckpt_io.find_resume_checkpoint(str(tmp_path / "empty"), log=print) is None


def test_load_rejects_pickled_code_and_names_file(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"model": {}, "fn": os.system}, bad)  # a pickled function: must not be loaded
    with pytest.raises(ckpt_io.CheckpointError, match="evil.pth"):
        ckpt_io.load_checkpoint(str(bad))


def test_output_dir_checks_space_and_writability(tmp_path):
    ckpt_io.check_output_dir(str(tmp_path / "out"), 1000)
    with pytest.raises(ckpt_io.CheckpointError, match="MiB free but two checkpoints need"):
        ckpt_io.check_output_dir(str(tmp_path / "out"), 10**16)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "f").write_text("x")
    with pytest.raises(ckpt_io.CheckpointError, match="not writable"):
        ckpt_io.check_output_dir(str(ro / "f" / "sub"), 1000)


def test_epoch_copies_are_published_without_hard_links(tmp_path, monkeypatch):
    """On a filesystem without hard links, model_{epoch}.pth and model_best.pth are atomic copies."""
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 0}
    ckpt_io.save_checkpoint(state, str(tmp_path), epoch_end=True, epoch=0, is_best=True, keep=None)
    for name in ("checkpoint.pth", "model_0.pth", "model_best.pth"):
        loaded = torch.load(tmp_path / name, weights_only=True)
        assert torch.equal(loaded["model"]["w"], torch.arange(4.0)), name
    assert os.stat(tmp_path / "model_0.pth").st_ino != os.stat(tmp_path / "checkpoint.pth").st_ino
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]
