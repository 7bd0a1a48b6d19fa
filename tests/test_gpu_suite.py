"""benchmarks/gpu_suite.sh without a GPU: each measurement is null with its reason and the suite still writes
summary.json; DEVICE=cpu runs the same train.py commands at CPU size, one folder per measurement, and the
summary is read from the benchmark JSON each run wrote there."""

import json
import os
import subprocess
import sys

import importlib.util

import pytest
import torch

from conftest import REPO, TEST_ENV

SUITE = os.path.join(REPO, "benchmarks", "gpu_suite.sh")
MODES = {"model_fp32": "model", "model_amp_eager": "model", "model_amp_compiled": "model",
         "data_cpu_decode": "data", "data_cpu_whole_decode": "data", "data_gpu_decode": "data",
         "full_cpu_decode": "full", "full_gpu_decode": "full", "dali_data": "data", "dali_full": "full"}
HAVE_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
SMALL = {"DEVICE": "cpu", "MODEL": "resnet18", "BATCH": "4", "CROP": "32", "WORKERS": "0", "STEPS": "2",
         "WARMUP": "1", "COMPILE": "0", "IMAGES": "40", "IMAGE_SIZE": "64"}


def run_suite(tmp_path, timeout=300, **env):
    full_env = dict(os.environ, **TEST_ENV, OUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"),
                    PYTHON=sys.executable, **env)
    return subprocess.run(["bash", SUITE], env=full_env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report; on a GPU run the suite itself")
def test_without_a_gpu_every_measurement_is_null_with_its_reason(tmp_path):
    proc = run_suite(tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["imgs_per_sec"] == dict.fromkeys(MODES)
    for name in MODES:
        assert "no CUDA device available" in summary["reasons"][name], name
        assert "no CUDA device available" in (tmp_path / "out" / name / "skipped.txt").read_text()
    assert all(t["value"] is None and t["met"] is None for t in summary["targets"].values())
    assert summary["targets"]["model_amp_compiled"]["target"] == 6000
    assert not (tmp_path / "data").exists()  # nothing to measure, nothing generated


@pytest.mark.slow
def test_on_the_cpu_each_measurement_has_its_folder_and_the_summary_reads_their_json(tmp_path):
    # A result left by an earlier run must not pass for this one's.
    stale = tmp_path / "out" / "data_gpu_decode"
    stale.mkdir(parents=True)
    (stale / "benchmark_data.json").write_text(json.dumps({"imgs_per_sec": 12345.0}))

    proc = run_suite(tmp_path, **SMALL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    ran = ("model_fp32", "model_amp_eager", "data_cpu_decode", "data_cpu_whole_decode", "full_cpu_decode")
    ran += ("dali_data", "dali_full") if HAVE_DALI else ()  # the peer runs its pipeline on the CPU there
    for name in ran:
        result = json.loads((out / name / f"benchmark_{MODES[name]}.json").read_text())
        assert result["steps"] == 2 and result["warmup_steps"] == 1 and result["batch_size"] == 4
        assert summary["imgs_per_sec"][name] == result["imgs_per_sec"] > 0
        assert summary["measurements"][name]["host_ms_per_batch"] == result.get("host_ms_per_batch")
        assert "--benchmark" in proc.stdout and (out / name / "log.txt").is_file()
    assert json.loads((out / "data_cpu_whole_decode" / "benchmark_data.json").read_text())["roi_decode"] is False
    assert summary["measurements"]["full_cpu_decode"]["precision"] != "fp32"  # AMP
    for name in ("data_gpu_decode", "full_gpu_decode"):
        assert summary["imgs_per_sec"][name] is None
        assert "--decode-device cuda needs CUDA" in summary["reasons"][name]
    assert not (stale / "benchmark_data.json").exists()
    assert summary["reasons"]["model_amp_compiled"] == "skipped: COMPILE=0"
    ratio = summary["ratios"]["full_cpu_decode_vs_model_amp_eager"]
    assert ratio == round(summary["imgs_per_sec"]["full_cpu_decode"] / summary["imgs_per_sec"]["model_amp_eager"], 3)
    assert summary["targets"]["full_cpu_decode_vs_model_amp_eager"]["value"] == ratio
    if HAVE_DALI:
        assert json.loads((out / "dali_full" / "benchmark_full.json").read_text())["pipeline"] == "dali"
        vs_dali = summary["ratios"]["full_cpu_decode_vs_dali_full"]
        assert vs_dali == round(summary["imgs_per_sec"]["full_cpu_decode"] / summary["imgs_per_sec"]["dali_full"], 3)
        assert summary["targets"]["full_best_vs_dali_full"]["value"] == vs_dali  # the GPU-decode run is skipped
    else:
        assert "DALI is not installed" in summary["reasons"]["dali_full"]
    # The data came from the project's generator, and is reused as the complete set it was made as.
    marker = json.loads((tmp_path / "data" / ".demo_complete.json").read_text())
    assert marker["kind"] == "photo" and marker["classes"] * marker["train_per_class"] == 40

    # Another IMAGES with the same DATA is refused up front rather than measured.
    proc = run_suite(tmp_path, timeout=120, **dict(SMALL, IMAGES="50"))
    assert proc.returncode == 1
    assert "could not prepare DATA" in proc.stderr and "not a complete demo set" in proc.stderr
    assert "== model_fp32" not in proc.stdout


@pytest.mark.slow
def test_a_failed_measurement_is_null_with_the_last_line_it_printed(tmp_path):
    selected = ("model_fp32", "full_cpu_decode")  # ONLY: one without data and one with, not all ten again
    proc = run_suite(tmp_path, timeout=200, **dict(SMALL, MODEL="no_such_model", IMAGES="20", STEPS="1",
                                                   ONLY=",".join(selected)))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for name in selected:
        assert summary["imgs_per_sec"][name] is None and summary["measurements"][name]["result"] is None
        assert summary["reasons"][name].startswith("failed (exit"), summary["reasons"][name]
        assert "no_such_model" in summary["reasons"][name]
        assert "no_such_model" in (tmp_path / "out" / name / "log.txt").read_text()
    for name in set(MODES) - set(selected):
        assert summary["reasons"][name] == "skipped: not selected (ONLY=model_fp32,full_cpu_decode)", name
        assert not (tmp_path / "out" / name / "log.txt").exists()


def test_only_model_measurements_need_no_data_and_an_unknown_name_is_refused(tmp_path):
    proc = run_suite(tmp_path, timeout=120, **dict(SMALL, ONLY="model_fp32 no_such_measurement"))
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().startswith("gpu_suite.sh: error: ONLY=model_fp32 no_such_measurement: there is no "
                                          "measurement no_such_measurement; choose from model_fp32 ")
    proc = run_suite(tmp_path, timeout=120, **dict(SMALL, MODEL="no_such_model", ONLY="model_fp32"))
    assert proc.returncode == 0, proc.stderr
    assert "== data: not generated" in proc.stdout and not (tmp_path / "data").exists()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reasons"]["model_fp32"].startswith("failed (exit")
    assert sum(reason.startswith("skipped: not selected") for reason in summary["reasons"].values()) == 9


@pytest.mark.parametrize("script", ["gpu_suite.sh", "gpu_check.sh"])
@pytest.mark.parametrize("setting, message", [({"BATCH": "abc"}, "BATCH=abc must be a whole number"),
                                              ({"WORKERS": "-1"}, "WORKERS=-1 must be a whole number"),
                                              ({"DEVICE": "tpu"}, "DEVICE=tpu is not supported; use cuda or cpu")])
def test_a_bad_setting_is_one_line_naming_it_before_anything_runs(script, setting, message, tmp_path):
    env = dict(os.environ, **TEST_ENV, OUT=str(tmp_path / "out"), PYTHON=sys.executable, **setting)
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", script)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"{script}: error: {message}"
    assert not (tmp_path / "out").exists()  # refused before any folder or data was made
