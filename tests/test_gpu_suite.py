"""benchmarks/gpu_suite.sh on a machine without a GPU: it still generates its data, runs every measurement,
names the missing device for each, and writes summary.json with every figure it could not take as null."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

MEASUREMENTS = ("model_fp32", "model_amp_eager", "model_amp_compiled", "data_cpu_decode", "data_cpu_whole_decode",
                "data_gpu_decode", "full_cpu_decode", "full_gpu_decode")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report; on a GPU run the suite itself")
def test_gpu_suite_without_a_gpu_reports_each_measurement(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), DATA=str(tmp_path / "data"), IMAGES="30",
               PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh")], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    jpegs = [n for _, _, names in os.walk(tmp_path / "data") for n in names if n.endswith(".JPEG")]
    assert len(jpegs) == 30
    for name in MEASUREMENTS:
        assert f"== {name}: train.py" in proc.stdout
        log = (tmp_path / "out" / f"{name}.log").read_text()
        assert "no CUDA device is available" in log, (name, log[-500:])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["imgs_per_sec"] == {name: None for name in MEASUREMENTS}
    assert summary["roi_vs_whole_decode_data"] is None and summary["targets"]["model_amp_compiled"] == 6000
    assert (tmp_path / "data" / ".complete").read_text() == "30"

    # The data folder is reused only as the complete set it was made as: another size stops the suite up front.
    env["IMAGES"] = "31"
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh")], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "is not a complete set of 31 generated JPEGs" in proc.stderr and "== model_fp32" not in proc.stdout
