"""--benchmark model|data|full: each runs on the CPU and ends with one JSON line; torchrun reports the global
rate; --compile runs a training step."""

import json
import shutil

import pytest

from conftest import FAST_ARGS, make_imagefolder, run_torchrun, run_train, run_train_in_process


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["model", "data", "full"])
def test_each_benchmark_mode_prints_its_json_last(tmp_path, mode):
    args = ["--benchmark", mode, "--benchmark-steps", "3", "--benchmark-warmup", "1", "--output-dir", tmp_path / "out",
            *FAST_ARGS]
    if mode != "model":
        args += ["--data-path", make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1),
                 "--backend", "fast"]
    proc = run_train_in_process(args)
    result = last_json(proc.stdout)
    assert result["benchmark"] == mode and result["steps"] == 3 and result["batch_size"] == 4
    assert result["world_size"] == 1 and result["device"] == "cpu" and result["imgs_per_sec"] > 0
    with open(tmp_path / "out" / f"benchmark_{mode}.json") as f:
        assert json.load(f) == result


@pytest.mark.slow
def test_benchmark_under_torchrun_reports_the_global_rate(tmp_path):
    proc = run_torchrun(["--benchmark", "model", "--benchmark-steps", "3", "--benchmark-warmup", "1",
                         "--output-dir", tmp_path, *FAST_ARGS])
    result = last_json(proc.stdout)
    assert result["world_size"] == 2 and result["imgs_per_sec"] > 0
    assert sum(1 for line in proc.stdout.splitlines() if line.startswith("{")) == 1  # rank 0 only


@pytest.mark.slow
@pytest.mark.timeout(960)  # above run_train's 900 s limit, which then reports the compiler's output
def test_compile_runs_a_training_step_on_cpu(tmp_path):
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler (gcc/cc), none is installed")
    # AlexNet at 64 px (the smallest size its pooling admits): compiling ResNet-18's forward and backward on a
    # clean machine takes ~80 s on 2 cores, AlexNet's ~50 s, of which ~25 s is the compiler's own start. What is
    # tested is the wiring of --compile into the training step; gpu_check.sh compiles ResNet50 on a GPU.
    proc = run_train(["--benchmark", "model", "--compile", "--benchmark-steps", "1", "--benchmark-warmup", "1",
                      "--output-dir", tmp_path, *FAST_ARGS, "--model", "alexnet", "--train-crop-size", "64"],
                     timeout=900)
    result = last_json(proc.stdout)
    assert result["compile"] is True and result["imgs_per_sec"] > 0
    assert result["model"] == "alexnet" and result["crop_size"] == 64
