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


def test_run_clock_adds_lost_time_only_after_the_checkpoint_it_ran_from(tmp_path):
    """The same run's clock, written after the checkpoint being resumed, is lost work. Another run's clock, a resume
    from another checkpoint (an older epoch's file: a choice, not a loss), or an unreadable clock change nothing."""
    crashed = ckpt_io.RunState(world_size=1, global_batch=4)
    crashed.wall_offset = 60.0
    saved = crashed.state_dict()  # its newest checkpoint, at 60 s
    crashed.wall_offset = 100.0
    ckpt_io.RunClock(crashed, str(tmp_path)).write()  # its last tick, at 100 s

    def resumed_from(checkpoint: dict) -> tuple[float, list[str]]:
        state, lines = ckpt_io.RunState(world_size=1, global_batch=4), []
        state.load_state_dict(checkpoint)
        ckpt_io.RunClock(state, str(tmp_path)).count_lost_time(lines.append)
        return state.wall_time(), lines

    wall, lines = resumed_from(saved)
    assert wall == pytest.approx(100.0, abs=0.5)
    assert lines and lines[0].startswith("resume: the run went on for 40 s after that checkpoint")
    assert resumed_from(dict(saved, run_id="another run"))[0] == pytest.approx(60.0, abs=0.5)
    assert resumed_from(dict(saved, wall_time_s=30.0)) == (pytest.approx(30.0, abs=0.5), [])  # an older epoch's
    (tmp_path / ckpt_io.CLOCK).write_text("{not json")
    assert resumed_from(saved) == (pytest.approx(60.0, abs=0.5), [])


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


# ------------------------------------------------------------------------------------------------------------
# --resume auto over several processes: rank 0 chooses, every rank loads that file
# ------------------------------------------------------------------------------------------------------------
FIND_ON_EACH_RANK = """
import os, sys
import torch
import checkpoint, utils

info = utils.init_distributed(torch.device("cpu"), "gloo", "env://", 1)
for view in ("shared", "stale", "none"):
    # Each rank on its own "node" with --output-dir out on its own disk; with view "shared", node1/out is node0/out.
    os.chdir(os.path.join(sys.argv[1], view, f"node{info.rank}"))
    epoch = {"rank0": 2, "stale": 5}.get(view if info.rank else "rank0")
    if view == "shared" and info.rank:
        utils.barrier(info)  # rank 0 has made node0/out
        os.symlink(os.path.join(sys.argv[1], view, "node0", "out"), "out")
    elif epoch is not None:
        os.makedirs("out", exist_ok=True)
        torch.save({"model": {}, "epoch": epoch}, os.path.join("out", "checkpoint.pth"))
    if view == "shared" and not info.rank:
        utils.barrier(info)
    manager = checkpoint.CheckpointManager("out", {}, dist_info=info, keep=None)
    try:
        path, ckpt = manager.find("auto", log=lambda *a: None)
        result = f"{os.path.realpath(path)} epoch {ckpt['epoch']}"
    except checkpoint.CheckpointError as e:
        result = f"error: {e}"
    sys.stdout.write(f"{view} rank {info.rank}: {result}\\n")  # one write per rank: the ranks share stdout
utils.cleanup_distributed(info)
"""


@pytest.mark.slow
def test_resume_auto_loads_the_file_rank_0_chose_on_every_rank(tmp_path):
    """Two ranks that see different folders under the same --output-dir (node-local disks) must not start from
    different states: rank 1 loads the file rank 0 chose; where it finds another state under that name, or no
    file, both ranks stop with one line saying why. (Each rank choosing for itself resumed rank 1 at epoch 5
    and rank 0 at epoch 2, or started rank 1 afresh.)"""
    import subprocess
    import sys

    from conftest import REPO, TEST_ENV, torchrun_cmd

    script = tmp_path / "find.py"
    script.write_text(FIND_ON_EACH_RANK)
    env = dict(os.environ, **TEST_ENV, PYTHONPATH=REPO)
    for view in ("shared", "stale", "none"):
        for rank in (0, 1):
            (tmp_path / view / f"node{rank}").mkdir(parents=True)
    proc = subprocess.run(torchrun_cmd([], nproc=2)[:-1] + [str(script), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {view: sorted(ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith(view + " "))
             for view in ("shared", "stale", "none")}
    shared = os.path.realpath(tmp_path / "shared" / "node0" / "out" / "checkpoint.pth")
    assert lines["shared"] == [f"rank 0: {shared} epoch 2", f"rank 1: {shared} epoch 2"]
    stale = ("error: rank 1 sees another out/checkpoint.pth than rank 0 (epoch 5 against 2); --output-dir must be "
             "one folder that every node sees")
    assert lines["stale"] == [f"rank 0: {stale}", f"rank 1: {stale}"]
    missing = ("error: rank 1 cannot load out/checkpoint.pth, which rank 0 resumes from (--resume out/checkpoint.pth: "
               "no such checkpoint file); --output-dir must be one folder that every node sees")
    assert lines["none"] == [f"rank 0: {missing}", f"rank 1: {missing}"]
