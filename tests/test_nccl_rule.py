"""NCCL's rule on the CPU: the default process group reduces device tensors only.

Every GPU run goes through torchrun, so even one card initializes NCCL, which has no backend for CPU tensors: a
host value (a loss sum, a count, a flag) all-reduced on the default group raises "No backend type associated with
device type cpu". A default group created with backend `cuda:gloo` refuses CPU tensors in exactly the same way,
so these runs (two real torchrun processes, `--device cpu --dist-backend cuda:gloo`) fail if any host reduction
goes back to the default group. They cover what a first GPU run does: two epochs of training with evaluation and
checkpoints, a resume, a test-only evaluation, the full benchmark, and a SIGTERM to one rank."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import FAST_ARGS, REPO, TEST_ENV, make_imagefolder, run_torchrun, torchrun_cmd

pytestmark = pytest.mark.slow

NCCL_LIKE = ["--dist-backend", "cuda:gloo"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("nccl") / "data", classes=2, train_per_class=8, val_per_class=3)


def test_cuda_gloo_default_group_refuses_cpu_tensors(tmp_path):
    """The premise: a host reduction on such a default group fails as it would under NCCL."""
    script = tmp_path / "premise.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "dist.init_process_group('cuda:gloo')\n"
        "try:\n"
        "    dist.all_reduce(torch.ones(1))\n"
        "except RuntimeError as e:\n"
        "    sys.stdout.write(f'refused: {e}\\n')  # one write per rank: the two ranks share stdout\n"
        "dist.destroy_process_group()\n"
    )
    proc = subprocess.run(torchrun_cmd([], nproc=2)[:-1] + [str(script)], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, **TEST_ENV), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("refused: No backend type associated with device type cpu") == 2, proc.stdout


def test_training_resume_test_only_and_benchmark_under_nccls_rule(data, tmp_path):
    out = tmp_path / "out"
    common = ["--data-path", data, "--output-dir", out, "--seed", "3", *FAST_ARGS, *NCCL_LIKE]

    trained = run_torchrun([*common, "--epochs", "2", "--checkpoint-interval", "1"])
    assert trained.stdout.count("Test: Acc@1") == 2
    assert "weights identical on all 2 ranks" in trained.stdout
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(0.0 <= r["val_acc1"] <= 100.0 and r["imgs_per_sec"] > 0 for r in records)

    resumed = run_torchrun([*common, "--epochs", "3", "--resume", "auto"])
    assert "resumed from" in resumed.stdout and "epoch 2, step 0" in resumed.stdout
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 2

    tested = run_torchrun([*common, "--test-only", "--resume", out / "checkpoint.pth"])
    assert "Test: Acc@1" in tested.stdout and "(6 images)" in tested.stdout  # every val image exactly once

    bench_out = tmp_path / "bench"
    run_torchrun(["--data-path", data, "--output-dir", bench_out, "--benchmark", "full", "--benchmark-steps", "3",
                  "--benchmark-warmup", "1", *FAST_ARGS, *NCCL_LIKE])
    result = json.loads((bench_out / "benchmark_full.json").read_text())
    assert result["world_size"] == 2 and result["imgs_per_sec"] > 0 and result["host_ms_per_batch"] >= 0


def worker_pids(torchrun_pid: int) -> list[int]:
    with open(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_sigterm_to_one_rank_stops_both_at_the_same_step(data, tmp_path):
    """Only rank 1 gets the signal; the ranks agree on it at a check step, both stop there, rank 0 saves."""
    out = tmp_path / "out"
    args = ["--data-path", data, "--output-dir", out, "--seed", "5", "--epochs", "200", *FAST_ARGS, *NCCL_LIKE]
    proc = subprocess.Popen(torchrun_cmd(args), cwd=REPO, env=dict(os.environ, **TEST_ENV), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "Epoch: [2]" in line:
                break
        workers = worker_pids(proc.pid)
        assert len(workers) == 2, "".join(seen)[-2000:]
        signalled = time.monotonic()
        os.kill(max(workers), signal.SIGTERM)  # one worker only (torchrun starts rank 0 first)
        answered = None
        for line in proc.stdout:
            seen.append(line)
            if "preempted by signal" in line:
                answered = time.monotonic() - signalled
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(seen)
    assert answered is not None, output[-3000:]
    assert answered < 10, f"the SIGTERM took {answered:.1f}s to be answered"
    assert proc.returncode != 0  # torchrun reports the workers' exit code 75 as a failure
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] >= 1
