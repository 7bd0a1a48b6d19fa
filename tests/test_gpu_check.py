"""benchmarks/gpu_check.sh and benchmarks/decode_race_check.py on a machine without a GPU: every GPU item is
skipped with its reason; DEVICE=cpu runs the very same commands on the CPU (it trains, checkpoints, resumes,
runs deterministically, and the decode check compares real batches); a wrong decoded batch is caught."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, TEST_ENV, make_imagefolder

CHECK = os.path.join(REPO, "benchmarks", "gpu_check.sh")
ITEMS = ("decode_race", "host_time", "deterministic", "compile_resume")
# ResNet-18 at 32 px on generated 64 px photos, 4 images a step: the GPU check's commands at CPU size.
SMALL = {"DEVICE": "cpu", "MODEL": "resnet18", "CROP": "32", "BATCH": "4", "STEPS": "3", "COMPILE": "0",
         "WORKERS": "0", "RACE_BATCHES": "3", "HOST_STEPS": "3", "IMAGE_SIZE": "64"}


@pytest.fixture(scope="module")
def race():
    spec = importlib.util.spec_from_file_location("decode_race_check",
                                                  os.path.join(REPO, "benchmarks", "decode_race_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check(tmp_path, timeout=300, **env):
    full_env = dict(os.environ, **TEST_ENV, OUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"),
                    PYTHON=sys.executable, **env)
    proc = subprocess.run(["bash", CHECK], env=full_env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=timeout)
    result_file = tmp_path / "out" / "gpu_check.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return proc, result


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report; on a GPU run the check itself")
def test_without_a_gpu_every_item_is_skipped_with_the_reason(tmp_path):
    proc, result = run_check(tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(result["items"]) == set(ITEMS) and result["failed"] == []
    for name in ITEMS:
        item = result["items"][name]
        assert item["status"] == "skipped", (name, item)
        assert "no CUDA device available" in item["reason"] and "DEVICE=cpu" in item["reason"]
    assert not (tmp_path / "data").exists()  # nothing to measure, nothing generated


@pytest.mark.slow
def test_on_the_cpu_it_trains_resumes_runs_deterministically_and_compares_batches(tmp_path):
    proc, result = run_check(tmp_path, **SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    items = result["items"]
    assert {name: items[name]["status"] for name in ITEMS} == dict.fromkeys(ITEMS, "ok"), items
    out = tmp_path / "out" / "gpu_check"

    resume = items["compile_resume"]["figures"]
    assert resume["epochs"] == [0, 1] and "epoch 1, step 0" in resume["resumed_line"]
    assert all(acc is not None for acc in resume["ema_acc1"])
    for name in ("checkpoint.pth", "model_0.pth", "model_1.pth"):
        assert (out / "compile_resume" / name).is_file(), name
    assert "resumed from" in (out / "compile_resume" / "resume.log").read_text()
    assert json.loads((out / "compile_resume" / "args.json").read_text())["model_ema"] is True

    det = items["deterministic"]["figures"]
    assert det["run_a"] == det["run_b"] and det["run_a"]["train_loss"] is not None
    assert json.loads((out / "deterministic" / "run_a" / "args.json").read_text())["use_deterministic_algorithms"]

    decode = items["decode_race"]["figures"]
    assert decode["batches"] == 3 and decode["images"] == 12 and decode["corrupted"] == 0
    assert decode["race"]["status"] == "skipped" and "CUDA" in decode["race"]["reason"]

    host = items["host_time"]["figures"]
    assert host["decode_device"] == "cpu" and host["steps"] == 3
    assert host["host_ms_per_batch"] is None or host["host_ms_per_batch"] > 0  # absent until train.py reports it
    assert "CPU decoding" in items["host_time"]["reason"]
    # The photos came from the project's generator, sized for STEPS batches and one validation batch.
    marker = json.loads((tmp_path / "data" / ".demo_complete.json").read_text())
    assert marker["kind"] == "photo" and marker["train_per_class"] * 10 >= 4 * 3


def test_an_item_that_fails_is_reported_and_sets_the_exit_status(tmp_path):
    """A command that overruns ITEM_TIMEOUT is a failed item with the reason; the JSON is still complete."""
    proc, result = run_check(tmp_path, timeout=120, **dict(SMALL, ITEM_TIMEOUT="1"))  # less than torch's import
    assert proc.returncode == 1, proc.stderr
    assert result["failed"] == list(ITEMS)
    for name in ITEMS:
        assert "timed out after 1 s (ITEM_TIMEOUT)" in result["items"][name]["reason"], result["items"][name]


# ---------------------------------------------------------------------------------------
# decode_race_check.py
# ---------------------------------------------------------------------------------------


def test_compare_batch_tolerates_decoder_rounding_and_flags_a_wrong_image(race):
    gen = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=gen)
    assert race.compare_batch(reference.clone(), reference)["corrupted_images"] == []
    # Another decoder's rounding: a level or two here and there.
    rounding = (reference.to(torch.int16) + torch.randint(-2, 3, reference.shape, generator=gen)).clamp(0, 255)
    figures = race.compare_batch(rounding.to(torch.uint8), reference)
    assert figures["corrupted_images"] == [] and 0 < figures["max_mean_abs_diff"] < 2
    # What the race does: an image holds another image's pixels.
    swapped = reference.clone()
    swapped[2] = reference[0]
    figures = race.compare_batch(swapped, reference)
    assert figures["corrupted_images"] == [2] and figures["max_mean_abs_diff"] > 20
    assert figures["mean_abs_diffs"][2] > 20 and figures["mean_abs_diffs"][0] == 0
    with pytest.raises(ValueError, match="differ in shape"):
        race.compare_batch(reference[:2], reference)


@pytest.fixture
def square_data(tmp_path):
    """Square images, so that any image's crop fits any other (the corrupted-batch test swaps them)."""
    return make_imagefolder(tmp_path / "data", classes=3, train_per_class=3, val_per_class=1, size=40)


def race_args(data, out):
    # 9 images make 2 batches of 4 an epoch: 3 batches cross an epoch boundary.
    return ["--data", data, "--device", "cpu", "--batch-size", "4", "--batches", "3", "--crop-size", "32",
            "--workers", "0", "--json", str(out)]


def test_decode_check_on_the_cpu_compares_every_batch(race, square_data, tmp_path, capsys):
    out = tmp_path / "race.json"
    assert race.main(race_args(square_data, out)) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and result["batches"] == 3 and result["images"] == 12
    assert result["corrupted"] == 0 and result["max_mean_abs_diff"] < 2 and result["batched_decodes"] == 3
    assert result["race"]["status"] == "skipped" and "--device cpu" in result["race"]["reason"]
    assert result["control"]["status"] == "skipped"
    assert "0 corrupted" in capsys.readouterr().out


def test_decode_check_exits_1_when_a_batch_holds_other_images(race, square_data, tmp_path, monkeypatch):
    def other_images(self, streams):  # pixels that are not the item's own (its crop upside down), as the race gives
        images = race.device_decode.DeviceDecoder._decode_batch(self, streams)
        return [np.ascontiguousarray(np.asarray(image)[::-1]) for image in images]

    monkeypatch.setattr(race.DelayedDecoder, "_batched_decode", other_images)
    out = tmp_path / "race.json"
    assert race.main(race_args(square_data, out)) == race.EXIT_CORRUPTED
    result = json.loads(out.read_text())
    assert result["status"] == "failed" and result["corrupted"] == 3 and result["corrupted_batches"] == [0, 1, 2]
    assert result["max_mean_abs_diff"] > 5 and result["median_mean_abs_diff"] > 2


def test_decode_check_bad_input_is_one_clear_line(race, tmp_path, capsys):
    assert race.main(["--data", str(tmp_path / "missing"), "--device", "cpu"]) == race.EXIT_BAD_INPUT
    assert "make_demo_data.py" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert race.main(["--data", str(tmp_path), "--device", "cuda"]) == race.EXIT_BAD_INPUT
        assert "no CUDA device is available; use --device cpu" in capsys.readouterr().err
