"""Real torchrun processes on the CPU with gloo: two "nodes" on 127.0.0.1 train through the 16-card script, and
two processes on one node agree on a random seed. (One node with two training processes runs in
test_scripts.py, test_run_outputs.py, test_benchmark_modes.py and test_fault_tolerance.py.)"""

import json
import os
import subprocess
import sys

import pytest

from conftest import FAST_ARGS, REPO, TEST_ENV, free_port, make_imagefolder

pytestmark = pytest.mark.slow


def launch_node(node_rank, port, data, out):
    env = dict(os.environ, **TEST_ENV, NNODES="2", NODE_RANK=str(node_rank), NPROC_PER_NODE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHON=sys.executable, MAX_RESTARTS="0")
    cmd = ["bash", os.path.join(REPO, "scripts", "fp32_16cards.sh"), "--data-path", str(data), "--output-dir",
           str(out), "--epochs", "2", "--seed", "0", "--backend", "pil", *FAST_ARGS]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_nodes_train_only_rank0_prints_and_writes_weights_identical(tmp_path):
    """The suite's one two-node run (amp_16cards.sh differs only in options, which test_scripts.py checks)."""
    data = make_imagefolder(tmp_path / "data", classes=2, train_per_class=8, val_per_class=2)
    port = free_port()
    nodes = [launch_node(r, port, data, tmp_path / f"out{r}") for r in (0, 1)]
    outputs = [p.communicate(timeout=400)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert "global batch 8 (2 process(es) x 4)" in outputs[0]
    assert "weights identical on all 2 ranks" in outputs[0]
    # Only rank 0 prints: each step line appears once, and not at all on node 1.
    assert outputs[0].count("Epoch: [0] [2/2]") == 1 and "Epoch: [" not in outputs[1], outputs[1][-3000:]
    out = tmp_path / "out0"
    files = sorted(os.listdir(out))
    assert {"checkpoint.pth", "model_0.pth", "model_1.pth", "metrics.jsonl", "summary.json", "args.json"} <= set(files)
    assert not [f for f in files if ".tmp" in f]
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["world_size"] == 2 and summary["nnodes"] == 2 and summary["global_batch"] == 8
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [0, 1]
    assert not (tmp_path / "out1" / "checkpoint.pth").exists()  # node 1 holds no rank 0: it writes nothing


def test_a_random_seed_is_shared_by_all_ranks(tmp_path):
    """Without --seed each rank must still shuffle with the same seed, or the ranks' shards overlap and part of
    the data is never seen in an epoch."""
    script = tmp_path / "seed.py"
    script.write_text(
        "import sys\nimport utils\n"
        "import torch\ninfo = utils.init_distributed(torch.device('cpu'), 'gloo', 'env://', 2)\n"
        "open(f'{sys.argv[1]}/seed{info.rank}', 'w').write(str(utils.shared_random_seed(info)))\n"
        "utils.cleanup_distributed(info)\n"
    )
    env = dict(os.environ, **TEST_ENV, PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seeds = [(tmp_path / f"seed{rank}").read_text() for rank in (0, 1)]
    assert seeds[0] == seeds[1]
