"""Training that survives kills, preemption and dead ranks, and resumes bit-exactly.

Every interruption below is a real signal sent to a real process; the final weights are compared bit for bit
with an uninterrupted run of the same seed (CPU, --use-deterministic-algorithms)."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (FAST_ARGS, REPO, TEST_ENV, make_imagefolder, run_torchrun, run_train, run_train_in_process,
                      torchrun_cmd, train_cmd)

pytestmark = pytest.mark.slow

EPOCHS = 3


@pytest.fixture(scope="module")
def det_data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("det") / "data", classes=3, train_per_class=8, val_per_class=2)


def det_args(data, out, *extra):
    return ["--data-path", data, "--output-dir", out, "--epochs", EPOCHS, "--seed", "11",
            "--use-deterministic-algorithms", *FAST_ARGS, *extra]


def weights(out):
    return torch.load(os.path.join(out, "checkpoint.pth"), weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def straight_run(det_data, tmp_path_factory):
    """The uninterrupted run, in this process: one thread, as in the subprocesses below, so the same bits."""
    out = tmp_path_factory.mktemp("straight") / "out"
    run_train_in_process(det_args(det_data, out))
    return out


@pytest.fixture(scope="module")
def straight(straight_run):
    return weights(straight_run)


@pytest.fixture(scope="module")
def straight_ddp_run(det_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight_ddp") / "out"
    run_torchrun(det_args(det_data, out))
    return out


@pytest.fixture(scope="module")
def straight_ddp(straight_ddp_run):
    return weights(straight_ddp_run)


def died_after_first_epoch(run_dir, out):
    """`out` as a run of the same arguments leaves it when it dies right after epoch 0: that epoch's checkpoint,
    taken from the uninterrupted run (the same bits as a run stopped there)."""
    os.makedirs(out)
    for name in ("checkpoint.pth", "model_0.pth"):
        shutil.copyfile(os.path.join(run_dir, "model_0.pth"), os.path.join(out, name))


def start(cmd, env=None):
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, **TEST_ENV, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


GLOO_TIMEOUTS = ("Timed out waiting 15000ms", "Application timeout caused pair closure")


def wait_for(proc, needle, timeout=240) -> str:
    """Read the process's output until a line contains `needle` (or one of a tuple); returns everything read."""
    needles = needle if isinstance(needle, tuple) else (needle,)
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if any(n in line for n in needles):
            return "".join(seen)
    raise AssertionError(f"never saw {needle!r}; output:\n{''.join(seen)[-3000:]}")


def test_resume_after_an_epoch_is_bitwise_identical(det_data, tmp_path):
    """MixUp/CutMix draw from the global RNGs at every step, so only a resume that restores the python, numpy and
    torch RNG states saved in the checkpoint continues the interrupted run's draws."""
    mix = ("--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--epochs", "2")
    straight = tmp_path / "straight"
    run_train(det_args(det_data, straight, *mix))
    out = tmp_path / "out"
    run_train(det_args(det_data, out, *mix, "--epochs", "1"))
    proc = run_train(det_args(det_data, out, *mix, "--resume", "auto"))
    assert "resumed from" in proc.stdout
    assert_same_weights(weights(out), weights(straight))


def test_sigterm_mid_epoch_saves_exits_75_and_resume_is_bitwise_identical(det_data, straight, tmp_path):
    out = tmp_path / "out"
    proc = start(train_cmd(det_args(det_data, out)))
    wait_for(proc, "Epoch: [1] [3/")
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, rest
    assert "preempted by signal" in rest and "checkpoint saved at epoch 1 step" in rest
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["step_in_epoch"] >= 3
    resumed = run_train_in_process(det_args(det_data, out, "--resume", "auto"))
    assert f"epoch 1, step {ckpt['step_in_epoch']}" in resumed.stdout
    assert "went on for" not in resumed.stdout  # the preemption saved: nothing to add to the wall time
    assert_same_weights(weights(out), straight)


def test_sigterm_during_evaluation_stops_after_that_epochs_checkpoint(det_data, straight, tmp_path, monkeypatch):
    """A signal that arrives while the model is evaluated ends the run with the end-of-epoch checkpoint: the next
    epoch does not start, and nothing is saved twice (SIGKILL follows SIGTERM within seconds under torchrun)."""
    import train

    evaluate, sent = train.evaluate, []

    def evaluate_then_signal(*args, **kwargs):
        stats = evaluate(*args, **kwargs)
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # to this process, whose handler train.py has installed
        return stats

    monkeypatch.setattr(train, "evaluate", evaluate_then_signal)
    out = tmp_path / "out"
    proc = run_train_in_process(det_args(det_data, out), check=False)
    monkeypatch.undo()
    assert proc.returncode == 75, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"preempted by signal {int(signal.SIGTERM)}: checkpoint saved at the end of epoch 0" in proc.stdout
    assert "Epoch: [1]" not in proc.stdout
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["step_in_epoch"] == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "preempted"
    resumed = run_train_in_process(det_args(det_data, out, "--resume", "auto"))
    assert "epoch 1, step 0" in resumed.stdout
    assert_same_weights(weights(out), straight)


def test_sigusr1_to_the_whole_process_group_with_workers_saves_and_exits_75(det_data, tmp_path):
    """SLURM signals every process of the job: DataLoader workers must ignore it while the main process saves."""
    out = tmp_path / "out"
    proc = start(train_cmd(det_args(det_data, out, "--workers", "2")))
    wait_for(proc, "Epoch: [0] [2/")
    os.killpg(proc.pid, signal.SIGUSR1)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, rest[-3000:]
    assert f"preempted by signal {int(signal.SIGUSR1)}" in rest
    assert torch.load(out / "checkpoint.pth", weights_only=True)["step_in_epoch"] >= 2


def test_sigkill_at_random_points_never_corrupts_and_ends_identical(det_data, straight, tmp_path):
    """SIGKILL with a checkpoint written every step, so kills land during writes too."""
    out = tmp_path / "out"
    rng = random.Random(0)
    args = det_args(det_data, out, "--resume", "auto", "--checkpoint-interval", "1")
    for _ in range(3):
        proc = start(train_cmd(args))
        wait_for(proc, "training resnet18")
        time.sleep(rng.uniform(1.0, 4.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        leftovers = [p for p in os.listdir(out) if p.endswith(".pth")]
        for name in leftovers:  # every visible checkpoint loads
            torch.load(out / name, weights_only=True)
    run_train_in_process(args)
    assert_same_weights(weights(out), straight)


# train.py with the run clock ticking every 0.2 s (30 s in real runs) and epoch 1's steps slowed to 0.6 s each, so
# that a kill in epoch 1 loses seconds of work done after epoch 0's checkpoint.
SLOW_EPOCH_1 = """
import sys, time
import checkpoint, train
checkpoint.CLOCK_INTERVAL_S = 0.2
step = train.TrainStep.__call__
def slow_in_epoch_1(self, images, target, epoch, i):
    if epoch == 1:
        time.sleep(0.6)
    return step(self, images, target, epoch, i)
train.TrainStep.__call__ = slow_in_epoch_1
sys.exit(train.cli(sys.argv[1:]))
"""


def test_time_lost_to_a_sigkill_counts_in_the_resumed_runs_wall_time(det_data, tmp_path):
    """A crash that saved nothing still cost the time since the last checkpoint: the resume adds it back from
    run_clock.json, so wall_time_s is what the run took, not what its checkpoints saw."""
    out = tmp_path / "out"
    proc = start([sys.executable, "-c", SLOW_EPOCH_1, *map(str, det_args(det_data, out))])
    try:
        wait_for(proc, "Epoch: [1] [1/")  # epoch 0's checkpoint is written; epoch 1 takes 6 x 0.6 s
        saved_at = torch.load(out / "checkpoint.pth", weights_only=True)["wall_time_s"]
        deadline, clock = time.time() + 60, {}
        while time.time() < deadline and clock.get("wall_time_s", 0) - saved_at < 1.2:  # 1.2 s of epoch 1 ticked
            time.sleep(0.05)
            with contextlib.suppress(OSError, ValueError):
                clock = json.loads((out / "run_clock.json").read_text())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    clock = json.loads((out / "run_clock.json").read_text())
    assert ckpt["epoch"] == 0 and clock["run_id"] == ckpt["run_id"], "killed too late: epoch 1 had ended"
    assert clock["checkpoint_wall_time_s"] == ckpt["wall_time_s"] == saved_at
    lost = clock["wall_time_s"] - ckpt["wall_time_s"]
    assert lost >= 1.2, (clock, ckpt["wall_time_s"])

    resumed = run_train_in_process(det_args(det_data, out, "--resume", "auto"))
    assert f"resume: the run went on for {lost:.0f} s after that checkpoint" in resumed.stdout, resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["wall_time_s"] > clock["wall_time_s"]
    final = torch.load(out / "checkpoint.pth", weights_only=True)
    assert final["run_id"] == ckpt["run_id"] and final["wall_time_s"] == pytest.approx(summary["wall_time_s"], abs=1)


def test_torchrun_sigterm_saves_and_resume_matches_uninterrupted(det_data, straight_ddp, tmp_path):
    out = tmp_path / "out"
    proc = start(torchrun_cmd(det_args(det_data, out)))
    wait_for(proc, "Epoch: [1] [2/")
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to its workers
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "preempted by signal" in rest, rest[-3000:]
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_states"]) == 2
    run_torchrun(det_args(det_data, out, "--resume", "auto"))
    assert_same_weights(weights(out), straight_ddp)


def test_torchrun_resume_after_an_epoch_is_bitwise_identical(det_data, straight_ddp_run, straight_ddp, tmp_path):
    out = tmp_path / "out"
    died_after_first_epoch(straight_ddp_run, out)
    proc = run_torchrun(det_args(det_data, out, "--resume", "auto"))
    assert "resumed from" in proc.stdout
    assert_same_weights(weights(out), straight_ddp)


def test_resume_with_another_world_size_warns_and_finishes(det_data, straight_run, tmp_path):
    out = tmp_path / "out"
    died_after_first_epoch(straight_run, out)  # one process, batch 4
    proc = run_torchrun(det_args(det_data, out, "--epochs", "2", "--resume", "auto"))
    assert "warning: resuming with world size 2 and global batch 8 (checkpoint: 1, 4)" in proc.stdout
    assert "scale --lr with the global batch" in proc.stdout
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1


def test_killed_worker_is_restarted_by_torchrun_and_job_finishes(det_data, straight_ddp, tmp_path):
    out = tmp_path / "out"
    proc = start(torchrun_cmd(det_args(det_data, out, "--resume", "auto", "--checkpoint-interval", "2"),
                              extra_launcher=["--max-restarts", "1"]))
    wait_for(proc, "Epoch: [1] [2/")
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[1]), signal.SIGKILL)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, rest[-3000:]
    assert "resumed from" in rest
    assert_same_weights(weights(out), straight_ddp)


def test_stopped_peer_ends_the_job_with_an_error_instead_of_a_hang(det_data, tmp_path):
    out = tmp_path / "out"
    proc = start(torchrun_cmd(det_args(det_data, out, "--dist-timeout", "0.25", "--epochs", "50")))
    wait_for(proc, "Epoch: [0] [2/")
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(workers[1]), signal.SIGSTOP)
    started = time.time()
    try:
        # The surviving rank gives up in a collective after --dist-timeout 0.25 minutes, not for another reason:
        # gloo says so in one of two ways, depending on whether the wait was in a collective or on the peer's pair.
        seen = wait_for(proc, GLOO_TIMEOUTS, timeout=150)
        gave_up = time.time() - started
        # torchrun would now wait its grace period for the frozen worker, which cannot answer SIGTERM: end it.
        os.kill(int(workers[1]), signal.SIGKILL)
        rest, _ = proc.communicate(timeout=120)
    finally:
        for w in workers:
            try:
                os.kill(int(w), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode != 0
    assert 10 <= gave_up < 150, seen[-3000:]  # the 15 s timeout (its collective may have begun just before the stop)
    assert any(message in seen + rest for message in GLOO_TIMEOUTS)


def test_nonfinite_loss_stops_naming_epoch_and_step_and_keeps_good_checkpoint(det_data, straight_run, tmp_path):
    out = tmp_path / "out"
    died_after_first_epoch(straight_run, out)
    good = weights(out)
    proc = run_train_in_process(det_args(det_data, out, "--resume", "auto", "--lr", "1e30"), check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "NaN or Inf at epoch 1, step" in proc.stderr
    assert_same_weights(weights(out), good)


def test_exact_evaluation_at_world_size_1_2_3(tmp_path):
    data = make_imagefolder(tmp_path / "data", classes=3, train_per_class=4, val_per_class=0)
    make_imagefolder(tmp_path / "valsrc", classes=3, train_per_class=0, val_per_class=3)
    # a 7-image validation set: 3 + 3 + 1
    for c in range(3):
        src, dst = tmp_path / "valsrc" / "val" / f"class{c:02d}", tmp_path / "data" / "val" / f"class{c:02d}"
        for i, f in enumerate(sorted(src.iterdir())):
            if c < 2 or i == 0:
                os.rename(f, dst / f.name)
    out = tmp_path / "out"
    run_train_in_process(["--data-path", data, "--output-dir", out, "--epochs", "1", "--seed", "0", *FAST_ARGS])
    test_only = ["--data-path", data, "--resume", out / "checkpoint.pth", "--test-only", *FAST_ARGS]
    results = []
    for proc in (run_train_in_process(test_only), run_torchrun(test_only, nproc=2), run_torchrun(test_only, nproc=3)):
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("Test: Acc@1")][-1]
        results.append(line)
    assert all("(7 images)" in r for r in results), results
    assert len(set(results)) == 1, results


def test_resume_without_seed_keeps_the_interrupted_runs_data_seed(det_data, tmp_path):
    """A run started without --seed draws one; --resume auto must continue with it, or the resumed epoch would
    take its remaining batches from a different shuffle (repeating some images, never showing others)."""
    out = tmp_path / "out"
    no_seed = [a for a in det_args(det_data, out) if a not in ("--seed", "11")]
    run_train_in_process([*no_seed, "--epochs", "1"])
    first = torch.load(out / "checkpoint.pth", weights_only=True)
    proc = run_train_in_process([*no_seed, "--epochs", "2", "--resume", "auto"])
    assert "continuing with the checkpoint's data seed" in proc.stdout
    second = torch.load(out / "checkpoint.pth", weights_only=True)
    assert second["epoch"] == 1
    assert second["sampler"]["seed"] == first["sampler"]["seed"] == first["args"]["seed"] == second["args"]["seed"]
    with open(out / "args.json") as f:
        assert json.load(f)["seed"] == first["args"]["seed"]
