"""Tests for the launch scripts (scripts/*.sh, slurm_16cards.sbatch).

Most tests replace the interpreter with a fake PYTHON that prints the torchrun command it gets, so the exact
command each script builds can be checked without starting anything; the fake answers train.py's --dry-run check
as train.py does for good options, and the tests resolve the options with train.py's own parser in process. A few
tests let the real train.py do the check, and the tests at the end run the real train.py for a couple of steps on
CPU through one script per way of launching.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import options
import train as train_py
from conftest import free_port, make_imagefolder

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

# script -> (processes per node, nodes, batch per process, lr by the linear scaling rule, AMP)
RECIPES = {
    "fp32_1card": (1, 1, 280, 0.109375, False),
    "amp_1card": (1, 1, 300, 0.1171875, True),
    "fp32_4cards": (4, 1, 300, 0.46875, False),
    "amp_4cards": (4, 1, 512, 0.8, True),
    "fp32_8cards": (8, 1, 300, 0.9375, False),
    "amp_8cards": (8, 1, 480, 1.5, True),
    "fp32_16cards": (8, 2, 300, 1.875, False),
    "amp_16cards": (8, 2, 480, 3.0, True),
}
MULTI_NODE = {"fp32_16cards", "amp_16cards"}
# Launcher environment that must not leak in from the shell running the tests (scripts/test.sh itself may run
# with TEST_SKIP_INSTALL=1, which would change what the test.sh and demo.sh tests see).
LAUNCH_VARS = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "MAX_RESTARTS", "PYTHON",
               "TEST_SKIP_INSTALL", "TEST_WORKERS", "DEMO_SKIP_INSTALL")
FAKE_MARK = "FAKE_ARGV "
CHECK_MARK = "FAKE_CHECK "
# The fake interpreter: torchrun's command is printed; train.py --dry-run is answered as train.py answers good
# options, after recording what it was asked (with REAL_CHECK=1 the real train.py does the check).
FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys
if "--dry-run" not in sys.argv:
    print({FAKE_MARK!r} + json.dumps(sys.argv[1:]))
elif os.environ.get("REAL_CHECK"):
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
else:
    print({CHECK_MARK!r} + json.dumps({{"argv": sys.argv[1:], "world_size": os.environ.get("WORLD_SIZE")}}),
          file=sys.stderr)  # the launcher keeps the check's stdout to itself
    print("dry run: checked by a stand-in; options checked, nothing started")
"""


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(extra)
    return env


def _write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_python(tmp_path) -> Path:
    return _write_executable(tmp_path / "fake_python", FAKE_PYTHON)


def _run(script: str, args: list[str], env: dict, cwd: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _launch(script: str, args: list[str], fake_python: Path, tmp_path: Path, **env: str) -> tuple[str, list[str]]:
    """Run a launch script with the fake interpreter; return (its summary line, the interpreter's argv)."""
    if script.replace(".sh", "") in MULTI_NODE and "NNODES" not in env:
        env = {"MASTER_ADDR": "10.0.0.1", "NODE_RANK": "0", **env}
    result = _run(script, args, _clean_env(PYTHON=str(fake_python), **env), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fake = [line for line in lines if line.startswith(FAKE_MARK)]
    assert len(fake) == 1, result.stdout
    argv = json.loads(fake[0][len(FAKE_MARK) :])
    checks = [json.loads(line[len(CHECK_MARK) :]) for line in result.stderr.splitlines() if line.startswith(CHECK_MARK)]
    if not env.get("REAL_CHECK"):  # the check saw the very options torchrun gets, with the launch's world size
        torchrun, train = _split(argv)
        world_size = int(_last_value(torchrun, "--nproc-per-node")) * int(_last_value(torchrun, "--nnodes"))
        assert checks == [{"argv": [str(REPO / "train.py"), *train, "--dry-run"], "world_size": str(world_size)}]
    summary = [line for line in lines if not line.startswith(FAKE_MARK)]
    assert len(summary) == 1, result.stdout  # exactly one line before launching
    return summary[0], argv


def _resolved(train: list[str], world_size: int):
    """train.py's parsed options with the lr and warmup resolved for `world_size` processes, and its note."""
    args = train_py.get_args_parser().parse_args(train)
    return args, options.resolve_lr(args, world_size)


def _last_value(argv: list[str], option: str) -> str | None:
    """Value of the last `option V` / `option=V` in argv, as argparse would see it."""
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg[len(option) + 1 :]
    return value


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split the interpreter argv into (torchrun part, train.py arguments)."""
    train_py = str(REPO / "train.py")
    assert train_py in argv, argv
    i = argv.index(train_py)
    return argv[:i], argv[i + 1 :]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_command_line(name, fake_python, tmp_path):
    nproc, nnodes, batch, lr, amp = RECIPES[name]
    summary, argv = _launch(f"{name}.sh", ["--data-path", "/data/imagenet"], fake_python, tmp_path)
    torchrun, train = _split(argv)
    assert torchrun[:2] == ["-m", "torch.distributed.run"]
    assert _last_value(torchrun, "--nproc-per-node") == str(nproc)
    assert _last_value(torchrun, "--nnodes") == str(nnodes)
    assert _last_value(torchrun, "--node-rank") == "0"
    assert _last_value(torchrun, "--master-addr") == ("10.0.0.1" if name in MULTI_NODE else "127.0.0.1")
    assert _last_value(torchrun, "--master-port") == "29500"
    assert _last_value(torchrun, "--max-restarts") == "3"

    assert _last_value(train, "--model") == "resnet50"
    assert _last_value(train, "--epochs") == "90"
    assert _last_value(train, "--momentum") == "0.9"
    assert float(_last_value(train, "--wd")) == 1e-4
    assert _last_value(train, "--lr-scheduler") == "steplr"
    assert _last_value(train, "--lr-step-size") == "30"
    assert float(_last_value(train, "--lr-gamma")) == 0.1
    assert _last_value(train, "--backend") == "fast"
    assert _last_value(train, "--resume") == "auto"
    assert _last_value(train, "--output-dir") == f"output/{name}"
    assert _last_value(train, "--batch-size") == str(batch)
    assert "--lr" not in train and _last_value(train, "--lr-per-256") == "0.1"  # train.py scales the lr
    global_batch = batch * nproc * nnodes
    args, note = _resolved(train, nproc * nnodes)
    assert args.lr == pytest.approx(lr, rel=1e-12)
    assert args.lr == pytest.approx(0.1 * global_batch / 256, rel=1e-12)
    # Every recipe's global batch is above 256, so all warm up.
    assert (args.lr_warmup_epochs, args.lr_warmup_method, args.lr_warmup_decay) == (5, "linear", 0.01)
    assert note == (f"global batch {global_batch} ({nproc * nnodes} process(es) x {batch}), lr {lr:.10g} "
                    f"(0.1 x {global_batch} / 256), warmup 5 epochs")
    assert ("--amp" in train) == amp
    assert ("--channels-last" in train) == amp
    assert train[-2:] == ["--data-path", "/data/imagenet"]  # user arguments come last

    # The recipe's options are train.py's: it parses and validates them as a launched run would (a real run of
    # each recipe would pay ~10 s of process start-up for this; the scripts that train for real are below).
    train_py.validate_args(train_py.get_args_parser().parse_args(train))
    assert summary.startswith(f"{name}: processes={nproc * nnodes} ")
    assert summary.endswith("; checked by a stand-in")  # the check's answer closes the launcher's line


@pytest.mark.parametrize(
    "batch_args",
    [["--batch-size", "64"], ["--batch-size=64"], ["-b", "64"], ["-b64"], ["-b=64"]],
    ids=["long", "long=", "short", "short-joined", "short="],
)
def test_user_batch_rescales_lr(batch_args, fake_python, tmp_path):
    _, argv = _launch("amp_8cards.sh", ["--data-path", "d", *batch_args], fake_python, tmp_path)
    _, train = _split(argv)
    args, note = _resolved(train, 8)
    assert args.batch_size == 64 and args.lr == pytest.approx(0.1 * 64 * 8 / 256)  # 0.2
    assert train[-len(batch_args) :] == batch_args
    assert "global batch 512 (8 process(es) x 64)" in note


def test_last_batch_option_wins(fake_python, tmp_path):
    _, argv = _launch("fp32_1card.sh", ["--data-path", "d", "-b", "512", "--batch-size", "1024"], fake_python, tmp_path)
    assert _resolved(_split(argv)[1], 1)[0].lr == pytest.approx(0.4)


@pytest.mark.parametrize("lr_args", [["--lr", "0.5"], ["--lr=0.5"]], ids=["space", "equals"])
def test_user_lr_wins(lr_args, fake_python, tmp_path):
    _, argv = _launch("fp32_8cards.sh", ["--data-path", "d", "-b", "64", *lr_args], fake_python, tmp_path)
    args, note = _resolved(_split(argv)[1], 8)
    assert args.lr == 0.5 and "lr 0.5 (given)" in note
    assert args.lr_warmup_epochs == 5  # the rule's warmup still applies above a global batch of 256


def test_the_launcher_reports_what_train_py_resolved(fake_python, tmp_path):
    """The real train.py checks the options once, before torchrun, and its answer is the launcher's summary."""
    summary, _ = _launch("amp_8cards.sh", ["--data-path", "d", "-b", "64", "--device", "cpu"], fake_python, tmp_path,
                         REAL_CHECK="1")
    assert summary.endswith("; global batch 512 (8 process(es) x 64), lr 0.2 (0.1 x 512 / 256), warmup 5 epochs")


def test_small_global_batch_has_no_warmup(fake_python, tmp_path):
    _, argv = _launch("fp32_1card.sh", ["--data-path", "d", "-b", "256"], fake_python, tmp_path)
    args, note = _resolved(_split(argv)[1], 1)
    assert (args.lr, args.lr_warmup_epochs) == (pytest.approx(0.1), 0) and note.endswith("warmup 0 epochs")
    _, argv = _launch("fp32_1card.sh", ["--data-path", "d", "-b", "257"], fake_python, tmp_path)
    assert _resolved(_split(argv)[1], 1)[0].lr_warmup_epochs == 5


def test_user_options_override_defaults(fake_python, tmp_path):
    args = ["--data-path", "d", "--output-dir", "runs/x", "--resume", "", "--epochs", "3", "--backend", "pil"]
    _, argv = _launch("amp_1card.sh", args, fake_python, tmp_path)
    _, train = _split(argv)
    assert _last_value(train, "--output-dir") == "runs/x"
    assert _last_value(train, "--resume") == ""
    assert _last_value(train, "--epochs") == "3"
    assert _last_value(train, "--backend") == "pil"


def test_environment_overrides(fake_python, tmp_path):
    summary, argv = _launch(
        "fp32_8cards.sh",
        ["--data-path", "d"],
        fake_python,
        tmp_path,
        NPROC_PER_NODE="2",
        MASTER_PORT="29555",
        MAX_RESTARTS="0",
        MASTER_ADDR="192.168.1.5",
    )
    torchrun, train = _split(argv)
    assert _last_value(torchrun, "--nproc-per-node") == "2"
    assert _last_value(torchrun, "--master-port") == "29555"
    assert _last_value(torchrun, "--max-restarts") == "0"
    assert _last_value(torchrun, "--master-addr") == "192.168.1.5"
    assert _resolved(train, 2)[0].lr == pytest.approx(0.1 * 600 / 256)
    assert "processes=2 " in summary


def test_multi_node_overrides(fake_python, tmp_path):
    summary, argv = _launch(
        "fp32_16cards.sh", ["--data-path", "d"], fake_python, tmp_path, NNODES="4", NODE_RANK="3", MASTER_ADDR="head"
    )
    torchrun, train = _split(argv)
    assert _last_value(torchrun, "--nnodes") == "4"
    assert _last_value(torchrun, "--node-rank") == "3"
    assert _last_value(torchrun, "--master-addr") == "head"
    assert _resolved(train, 32)[0].lr == pytest.approx(0.1 * 300 * 8 * 4 / 256)
    assert "processes=32 " in summary


def test_sixteen_card_script_on_one_node_needs_no_address(fake_python, tmp_path):
    _, argv = _launch("amp_16cards.sh", ["--data-path", "d"], fake_python, tmp_path, NNODES="1")
    torchrun, _ = _split(argv)
    assert _last_value(torchrun, "--nnodes") == "1"
    assert _last_value(torchrun, "--master-addr") == "127.0.0.1"


def test_scripts_work_from_any_cwd(fake_python, tmp_path):
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    result = subprocess.run(
        ["bash", os.path.relpath(SCRIPTS / "fp32_1card.sh", elsewhere), "--data-path", "d"],
        env=_clean_env(PYTHON=str(fake_python)),
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert str(REPO / "train.py") in result.stdout


def _refused(script: str, args: list[str], fake_python: Path, tmp_path: Path, **env: str) -> str:
    """Run a script expected to refuse: exit 2, nothing launched; return stderr."""
    result = _run(script, args, _clean_env(PYTHON=str(fake_python), **env), tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert FAKE_MARK not in result.stdout  # nothing was launched
    assert len(result.stderr.strip().splitlines()) == 1  # one clear line
    return result.stderr


@pytest.mark.parametrize("script", ["fp32_16cards.sh", "amp_16cards.sh"])
@pytest.mark.parametrize("env", [{}, {"NODE_RANK": "0"}, {"MASTER_ADDR": "head"}], ids=["none", "rank-only", "addr-only"])
def test_multi_node_requires_master_addr_and_node_rank(script, env, fake_python, tmp_path):
    err = _refused(script, ["--data-path", "d"], fake_python, tmp_path, **env)
    assert "NNODES=2 needs MASTER_ADDR" in err and "NODE_RANK" in err
    assert f"MASTER_ADDR=node0 NODE_RANK=0 bash scripts/{script}" in err  # an example command


def test_single_node_script_with_nnodes_2_requires_master_addr(fake_python, tmp_path):
    err = _refused("amp_1card.sh", ["--data-path", "d"], fake_python, tmp_path, NNODES="2")
    assert "MASTER_ADDR" in err


@pytest.mark.parametrize("port", ["80", "1023", "0", "abc", "70000", "-5"])
def test_bad_master_port_is_refused(port, fake_python, tmp_path):
    err = _refused("fp32_1card.sh", ["--data-path", "d"], fake_python, tmp_path, MASTER_PORT=port)
    assert "MASTER_PORT must be 1024..65535" in err and f"'{port}'" in err


def test_lowest_unprivileged_port_is_accepted(fake_python, tmp_path):
    _, argv = _launch("fp32_1card.sh", ["--data-path", "d"], fake_python, tmp_path, MASTER_PORT="1024")
    assert _last_value(_split(argv)[0], "--master-port") == "1024"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NPROC_PER_NODE": "0"}, "NPROC_PER_NODE must be a whole number >= 1"),
        ({"NPROC_PER_NODE": "gpu"}, "NPROC_PER_NODE must be a whole number >= 1"),
        ({"NNODES": "x"}, "NNODES must be a whole number >= 1"),
        ({"MAX_RESTARTS": "-1"}, "MAX_RESTARTS must be a whole number >= 0"),
        ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "NODE_RANK=2 must be below NNODES=2"),
    ],
)
def test_bad_environment_is_refused(env, message, fake_python, tmp_path):
    assert message in _refused("fp32_4cards.sh", ["--data-path", "d"], fake_python, tmp_path, **env)


def test_bad_arguments_are_refused_once_before_launching(fake_python, tmp_path):
    """train.py's own one-line error (every option's is tested in test_options.py), from the one check before
    torchrun, which would restart a failing command MAX_RESTARTS times on every node."""
    assert "--data-path is required" in _refused("amp_8cards.sh", [], fake_python, tmp_path, REAL_CHECK="1")


def test_help_is_printed_once_and_nothing_launches(fake_python, tmp_path):
    result = _run("fp32_1card.sh", ["--help"], _clean_env(PYTHON=str(fake_python), REAL_CHECK="1"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: train.py") and "--lr-per-256" in result.stdout
    assert FAKE_MARK not in result.stdout


def test_slurm_example_launches_16_card_amp(fake_python, tmp_path):
    """Run the sbatch file with stand-ins for scontrol and srun; node 1's view of the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_executable(bin_dir / "scontrol", '#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] && printf "gpu-a\\ngpu-b\\n"\n')
    # srun stand-in: drop srun's own options, run the command as the second node would.
    _write_executable(
        bin_dir / "srun",
        '#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\nSLURM_NODEID=1 exec "$@"\n',
    )
    env = _clean_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHON=str(fake_python),
        DATA="/datasets/imagenet",
        SLURM_JOB_NODELIST="gpu-[a-b]",
        SLURM_JOB_ID="123456",
        SLURM_JOB_NUM_NODES="2",
        SLURM_SUBMIT_DIR=str(REPO),
    )
    result = _run("slurm_16cards.sbatch", ["--epochs", "1"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    fake = [line for line in result.stdout.splitlines() if line.startswith(FAKE_MARK)]
    torchrun, train = _split(json.loads(fake[0][len(FAKE_MARK) :]))
    assert _last_value(torchrun, "--master-addr") == "gpu-a"
    assert _last_value(torchrun, "--node-rank") == "1"
    assert _last_value(torchrun, "--nnodes") == "2"
    assert _last_value(torchrun, "--nproc-per-node") == "8"
    assert _last_value(torchrun, "--master-port") == str(20000 + 123456 % 10000)
    assert "--amp" in train and "--channels-last" in train
    assert _last_value(train, "--data-path") == "/datasets/imagenet"
    assert _resolved(train, 16)[0].lr == pytest.approx(3.0)
    assert train[-1:] == ["1"] and _last_value(train, "--epochs") == "1"  # sbatch arguments forwarded


def test_slurm_example_requires_data(tmp_path):
    result = _run("slurm_16cards.sbatch", [], _clean_env(SLURM_SUBMIT_DIR=str(REPO)), tmp_path)
    assert result.returncode != 0
    assert "set DATA to the ImageNet folder" in result.stderr


# --- scripts/test.sh and scripts/demo.sh --------------------------------------------------------


@pytest.fixture
def logging_python(tmp_path) -> Path:
    """A fake interpreter that appends its argv to a log and exits with $FAKE_RC for pytest.

    Inline programs (`-c`, `-`, such as demo.sh's report) run with the real interpreter. For train.py it writes a metrics.jsonl record into --output-dir, as the
    real trainer does after each epoch.
    """
    log = tmp_path / "calls.jsonl"
    return _write_executable(
        tmp_path / "logging_python",
        f"""#!{sys.executable}
import json, os, sys
argv = sys.argv[1:]
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(argv) + "\\n")
if argv and argv[0] in ("-c", "-"):
    os.execv({sys.executable!r}, [{sys.executable!r}] + argv)
if argv[:2] == ["-m", "pytest"]:
    sys.exit(int(os.environ.get("FAKE_RC", "0")))
if argv[:2] == ["-m", "pip"]:
    sys.exit(int(os.environ.get("FAKE_PIP_RC", "0")))
if argv and argv[0] == "train.py":
    out = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--output-dir"][-1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for epoch, (acc, speed) in enumerate([(31.0, 100.0), (77.5, 123.4)]):
            f.write(json.dumps({{"epoch": epoch, "val_acc1": acc, "imgs_per_sec": speed}}) + "\\n")
""",
    )


def _calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# One pytest-xdist worker per core this process may use, at most 8; the user's own options come last and win.
DEFAULT_TEST_WORKERS = str(min(len(os.sched_getaffinity(0)), 8))


@pytest.mark.parametrize("rc", [0, 1, 5])
def test_test_sh_installs_then_runs_pytest_with_its_exit_code(rc, logging_python, tmp_path):
    env = _clean_env(PYTHON=str(logging_python), FAKE_RC=str(rc))
    result = _run("test.sh", ["-m", "not slow", "tests/test_x.py"], env, tmp_path)
    assert result.returncode == rc, result.stderr
    assert _calls(tmp_path) == [
        ["-m", "pip", "install", "-q", "-r", "requirements-dev.txt"],
        ["-m", "pytest", "-n", DEFAULT_TEST_WORKERS, "--dist", "worksteal", "-m", "not slow", "tests/test_x.py"],
    ]


def test_test_sh_skip_install_and_pip_failure(logging_python, tmp_path):
    skip = _run("test.sh", [], _clean_env(PYTHON=str(logging_python), TEST_SKIP_INSTALL="1"), tmp_path)
    assert skip.returncode == 0
    assert _calls(tmp_path) == [["-m", "pytest", "-n", DEFAULT_TEST_WORKERS, "--dist", "worksteal"]]

    (tmp_path / "calls.jsonl").unlink()
    broken = _run("test.sh", [], _clean_env(PYTHON=str(logging_python), FAKE_PIP_RC="3"), tmp_path)
    assert broken.returncode == 3
    assert "requirements-dev.txt' failed" in broken.stderr and "TEST_SKIP_INSTALL=1" in broken.stderr
    assert [c[:2] for c in _calls(tmp_path)] == [["-m", "pip"]]  # pytest not run after a failed install


def test_test_sh_counts_cores_whatever_omp_num_threads_says(logging_python, tmp_path):
    """GNU nproc answers OMP_NUM_THREADS when it is set (the README's CPU commands set it to 1)."""
    env = _clean_env(PYTHON=str(logging_python), TEST_SKIP_INSTALL="1", OMP_NUM_THREADS="1")
    assert _run("test.sh", [], env, tmp_path).returncode == 0
    assert _calls(tmp_path) == [["-m", "pytest", "-n", DEFAULT_TEST_WORKERS, "--dist", "worksteal"]]


def test_test_sh_workers_setting(logging_python, tmp_path):
    one_at_a_time = _run("test.sh", ["-x"], _clean_env(PYTHON=str(logging_python), TEST_SKIP_INSTALL="1",
                                                       TEST_WORKERS="0"), tmp_path)
    assert one_at_a_time.returncode == 0, one_at_a_time.stderr
    assert _calls(tmp_path) == [["-m", "pytest", "-x"]]  # no xdist option: runs without pytest-xdist too

    (tmp_path / "calls.jsonl").unlink()
    bad = _run("test.sh", [], _clean_env(PYTHON=str(logging_python), TEST_WORKERS="two"), tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "test.sh: error: TEST_WORKERS must be a whole number of pytest workers (0: no parallel workers), got 'two'")
    assert _calls(tmp_path) == []  # refused before installing or testing anything


@pytest.mark.parametrize("skip_install", [False, True])
def test_demo_sh_generates_trains_and_reports(skip_install, logging_python, tmp_path):
    out = tmp_path / "demo_out"
    env = _clean_env(PYTHON=str(logging_python), **({"DEMO_SKIP_INSTALL": "1"} if skip_install else {}))
    result = _run("demo.sh", ["--epochs", "2", "--output-dir", str(out)], env, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = [c for c in _calls(tmp_path) if c[0] not in ("-c", "-")]
    expected_first = [] if skip_install else [["-m", "pip", "install", "-q", "-r", "requirements.txt"]]
    assert calls[: len(expected_first)] == expected_first
    assert calls[len(expected_first)][:2] == ["scripts/make_demo_data.py", "data/demo"]
    train = calls[len(expected_first) + 1]
    assert train[0] == "train.py"
    assert _last_value(train, "--data-path") == "data/demo"
    assert _last_value(train, "--model") == "resnet50"
    assert _last_value(train, "--seed") == "0"
    assert train[-4:] == ["--epochs", "2", "--output-dir", str(out)]
    assert "Acc@1 77.50%" in result.stdout  # the last epoch's accuracy
    assert "111.7 img/s" in result.stdout  # the mean throughput over epochs
    assert "after 2 epochs" in result.stdout


def test_demo_sh_fails_clearly_without_metrics(tmp_path):
    # An interpreter whose train.py does nothing: the report must say so instead of passing.
    quiet = _write_executable(
        tmp_path / "quiet_python",
        f"#!{sys.executable}\nimport os, sys\nif sys.argv[1:2] in (['-c'], ['-']):\n"
        f"    os.execv({sys.executable!r}, [{sys.executable!r}] + sys.argv[1:])\n",
    )
    env = _clean_env(PYTHON=str(quiet), DEMO_SKIP_INSTALL="1")
    result = _run("demo.sh", ["--output-dir", str(tmp_path / "none")], env, tmp_path, timeout=120)
    assert result.returncode != 0
    assert "metrics.jsonl" in result.stderr and "did train.py finish?" in result.stderr


# --- real runs: the scripts train a few steps of train.py on CPU ---------------------------------
# One run per way of launching (one process, one node with two processes, two nodes); every recipe's options are
# checked against train.py's parser in test_recipe_command_line. The 1-card and 4-card runs take one precision
# each: AMP on CPU trains in test_train.py, and fp32 under torchrun in test_distributed.py, which also runs
# fp32_16cards.sh as two local nodes.

@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory) -> Path:
    return Path(make_imagefolder(tmp_path_factory.mktemp("data") / "tiny", classes=2, train_per_class=8,
                                 val_per_class=4, size=32))


SMOKE_ARGS = [
    "--device", "cpu", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "4", "--workers", "0",
    "--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32", "--model", "resnet18",
]  # fmt: skip


def _real_run(script: str, data: Path, out: Path, env: dict, cwd: Path, timeout: int = 300) -> subprocess.Popen:
    args = ["bash", str(SCRIPTS / script), "--data-path", str(data), *SMOKE_ARGS, "--output-dir", str(out)]
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"launch timed out:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return output


def _assert_trained(out: Path, output: str, precision: str) -> None:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["epoch"] for r in records] == [0], output[-4000:]
    assert records[0]["val_acc1"] is not None
    assert json.loads((out / "summary.json").read_text())["precision"] == precision  # the recipe's, applied


@pytest.mark.slow  # torchrun and its worker: two processes
def test_single_process_script_trains_and_sigusr1_to_it_saves_and_stops(tiny_imagefolder, tmp_path):
    """The 1-card script trains (its first epoch is checked), and SLURM's --signal=USR1, which goes to the
    launched command, torchrun, reaches train.py: the launcher has torchrun forward it. (By default torchrun dies
    of SIGUSR1 and its worker, in its own session, trains on without a checkpoint.)"""
    out = tmp_path / "out"
    env = _clean_env(NPROC_PER_NODE="1", MASTER_PORT=str(free_port()), MAX_RESTARTS="0")
    args = ["bash", str(SCRIPTS / "fp32_1card.sh"), "--data-path", str(tiny_imagefolder), *SMOKE_ARGS,
            "--epochs", "100", "--output-dir", str(out)]
    proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        seen = []
        for line in proc.stdout:  # the script execs torchrun: proc.pid is torchrun's
            seen.append(line)
            if line.startswith("Epoch: [1]"):
                proc.send_signal(signal.SIGUSR1)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker too, had it been left behind
    output = "".join(seen) + rest
    assert proc.returncode != -signal.SIGUSR1, output[-3000:]  # torchrun did not die of it
    assert f"preempted by signal {int(signal.SIGUSR1)}" in output, output[-3000:]
    assert (out / "checkpoint.pth").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert records[0]["epoch"] == 0 and records[0]["val_acc1"] is not None
    assert json.loads((out / "summary.json").read_text())["precision"] == "fp32"  # the recipe's, applied


@pytest.mark.slow
# With NPROC_PER_NODE=2 the 8-card recipes build the very command of the 4-card ones (same per-process
# batch, so the same LR); test_recipe_command_line checks each recipe's own command.
def test_multi_process_amp_script_trains(tiny_imagefolder, tmp_path):
    out = tmp_path / "out"
    env = _clean_env(NPROC_PER_NODE="2", MASTER_PORT=str(free_port()), MAX_RESTARTS="0")
    output = _finish(_real_run("amp_4cards.sh", tiny_imagefolder, out, env, tmp_path))
    _assert_trained(out, output, "amp_bf16")
    assert "global batch 8 (2 process(es) x 4), lr 0.003125 (0.1 x 8 / 256), warmup 0 epochs" in output
