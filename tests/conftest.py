"""Shared fixtures: tiny ImageFolder datasets made of real JPEGs, and running the real train.py (as a new
process, under torchrun, or in this process)."""

import contextlib
import io
import os
import random
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Tests run on 2 cores: one intra-op thread per process keeps torchrun's two workers from fighting.
TEST_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# scripts/test.sh runs one pytest-xdist worker per core. A worker's own torch work (the runs made in this process)
# then gets one thread too: two workers with a thread per core each would make OpenMP's threads spin-wait for
# cores the other worker holds.
IN_PARALLEL_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
if IN_PARALLEL_WORKER:
    torch.set_num_threads(1)

# Small but real: ResNet-18 at 32 px trains fast on a CPU; ResNet-50 is covered by its own tests.
FAST_ARGS = [
    "--device", "cpu", "--model", "resnet18", "--batch-size", "4", "--workers", "0",
    "--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32", "--print-freq", "1",
]


def draw_image(label: int, rng: np.random.Generator, size: int) -> Image.Image:
    """A learnable picture: the class sets the dominant colour and the stripe direction, plus noise."""
    base = np.array([(label * 97) % 256, (label * 57 + 80) % 256, (label * 151 + 30) % 256], dtype=np.float32)
    img = np.tile(base, (size, size, 1))
    stripes = (np.arange(size) // max(1, size // 8)) % 2 * 60.0
    img += stripes[:, None, None] if label % 2 else stripes[None, :, None]
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_imagefolder(root, classes=3, train_per_class=8, val_per_class=3, size=40, seed=0) -> str:
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f"class{c:02d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                draw_image(c, rng, size).save(os.path.join(folder, f"img{i:03d}.JPEG"), quality=90)
    return str(root)


@pytest.fixture
def tiny_data(tmp_path):
    return make_imagefolder(tmp_path / "data")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(args) -> list[str]:
    """`python train.py ARGS`."""
    return [sys.executable, os.path.join(REPO, "train.py"), *map(str, args)]


def torchrun_cmd(args, nproc=2, extra_launcher=()) -> list[str]:
    """`torchrun --nproc-per-node N` on 127.0.0.1 and a free port, launching train.py ARGS."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *extra_launcher,
            os.path.join(REPO, "train.py"), *map(str, args)]


def run_train(args, *, cwd=None, env=None, timeout=300, check=True) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` as a user would; returns the completed process (stdout+stderr text)."""
    full_env = dict(os.environ, **TEST_ENV, **(env or {}))
    proc = subprocess.run(train_cmd(args), cwd=cwd or REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                             f"STDERR:\n{proc.stderr[-4000:]}")
    return proc


def run_torchrun(args, *, nproc=2, env=None, timeout=600, check=True, extra_launcher=()) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **TEST_ENV, **(env or {}))
    proc = subprocess.run(torchrun_cmd(args, nproc, extra_launcher), cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                             f"STDERR:\n{proc.stderr[-4000:]}")
    return proc


def run_train_in_process(args, *, check=True) -> subprocess.CompletedProcess:
    """`train.py ARGS` run by train.cli in this process: what run_train does, without a new interpreter's
    3-5 s of imports. Returns the same CompletedProcess (exit code, stdout, stderr text).

    The run sees what a subprocess with TEST_ENV would: one intra-op thread (so a run here and one in a
    subprocess compute the same bits) and `train.py ...` as sys.argv. What a run changes for the whole process
    (signal handlers, deterministic algorithms, float32 precision, RNGs, environment) is put back afterwards.
    Keep run_train for what only a separate process shows: signals, exit codes seen by a shell, output written
    by DataLoader worker processes."""
    import train

    argv = [str(a) for a in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with _process_state_restored():
        sys.argv = ["train.py", *argv]
        torch.set_num_threads(1)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = train.cli(argv)
            except SystemExit as e:  # argparse's usage errors, as the interpreter would report them
                code = e.code if isinstance(e.code, int) else 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
    proc = subprocess.CompletedProcess(["train.py", *argv], code, stdout.getvalue(), stderr.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"train.cli returned {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                             f"STDERR:\n{proc.stderr[-4000:]}")
    return proc


# Process-wide float32 settings a run may change (train.py --tf32 sets them).
_PRECISION_SETTINGS = ((torch.backends.cudnn.conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision"))


@contextlib.contextmanager
def _process_state_restored():
    signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    argv, threads, environ = sys.argv, torch.get_num_threads(), dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    precision = [(obj, name, getattr(obj, name)) for obj, name in _PRECISION_SETTINGS if hasattr(obj, name)]
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        for sig, handler in signals.items():
            signal.signal(sig, handler)
        sys.argv = argv
        torch.set_num_threads(threads)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = cudnn_benchmark
        for obj, name, value in precision:
            setattr(obj, name, value)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
