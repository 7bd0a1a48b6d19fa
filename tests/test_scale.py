"""benchmarks/scale.py: start-up time and worker memory on a synthetic tree of empty files, run tiny."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TEST_ENV

SCRIPT = os.path.join(REPO, "benchmarks", "scale.py")


def load_scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_counts_are_imagenet_train():
    scale = load_scale()
    counts = scale.class_counts(1000, None)
    assert len(counts) == 1000 and sum(counts) == 1_281_167 and max(counts) - min(counts) == 1
    assert scale.class_counts(3, 5) == [5, 5, 5]
    args = scale.parse_args(["--quick"])
    assert sum(scale.class_counts(args.classes, args.per_class)) < 20_000


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc/self/smaps_rollup")
def test_scale_benchmark_on_a_tiny_tree(tmp_path, capsys):
    root, out = tmp_path / "tree", tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--classes", "4", "--per-class", "50", "--root", str(root),
                           "--repeats", "1", "--json", str(out)],
                          env=dict(os.environ, **TEST_ENV), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # The tree is kept in --root: 4 class folders of 50 empty files.
    files = [root / "train" / c / name for c in os.listdir(root / "train") for name in os.listdir(root / "train" / c)]
    assert len(os.listdir(root / "train")) == 4 and len(files) == 200
    assert all(f.name.endswith(".JPEG") and f.stat().st_size == 0 for f in files)

    result = json.loads(out.read_text())
    assert result["tree"]["files"] == 200 and result["tree"]["created"] is True
    startup = result["startup"]
    assert startup["files"] == 200
    for key in ("ours_scan", "ours_cache", "torchvision"):
        assert startup["first_s"][key] > 0 and startup["warm_s"][key] > 0
    assert startup["cache_file_mb"] >= 0 and startup["page_cache"].startswith("not dropped")
    memory = result["memory"]
    assert memory["entries"] == 200 and memory["ours_size_mb"] > 0 and memory["control_size_mb"] > 0
    assert isinstance(memory["ours_growth_mb"], float) and isinstance(memory["control_growth_mb"], float)
    for line in ("ours: one scan", "ours: fresh --cache-dataset file", "torchvision ImageFolder",
                 "ours (datasets.FileList)", "control: list of tuples", "ratio control / ours"):
        assert line in proc.stdout, line

    # A second run on the same --root reuses the tree.
    scale = load_scale()
    assert scale.main(["--classes", "4", "--per-class", "50", "--root", str(root), "--repeats", "1",
                       "--skip-memory"]) == 0
    printed = capsys.readouterr().out
    assert "(reused)" in printed and "worker memory: not measured (--skip-memory)" in printed


def test_scale_refuses_a_root_holding_another_tree(tmp_path):
    scale = load_scale()
    root = tmp_path / "tree"
    scale.build_tree(str(root), [2, 2])
    with pytest.raises(SystemExit, match="--root .* train/ folder of another size"):
        scale.main(["--classes", "3", "--per-class", "2", "--root", str(root)])
