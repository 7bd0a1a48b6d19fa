"""The README's first command, as a user runs it: scripts/demo.sh trains ResNet50 on the built-in demo set and
ends well above chance (10 classes: 10%)."""

import json
import os
import re
import subprocess

import pytest

from conftest import REPO, TEST_ENV

pytestmark = pytest.mark.slow


@pytest.mark.timeout(960)  # above the subprocess's own 900 s limit, which then reports the demo's output
def test_demo_script_trains_resnet50_well_above_chance(tmp_path):
    env = dict(os.environ, **TEST_ENV, DEMO_SKIP_INSTALL="1")  # the test command installed the requirements
    env.pop("OMP_NUM_THREADS")  # the demo runs alone: let it use both cores, as a user's run would
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), "--output-dir", str(tmp_path / "demo")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"demo: final Acc@1 ([\d.]+)% \(chance 10%\)", proc.stdout)
    assert match, proc.stdout[-2000:]
    assert float(match.group(1)) >= 25.0, proc.stdout[-2000:]
    with open(tmp_path / "demo" / "summary.json") as f:
        summary = json.load(f)
    assert summary["model"] == "resnet50" and summary["final_acc1"] == pytest.approx(float(match.group(1)), abs=0.01)
