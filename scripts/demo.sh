#!/usr/bin/env bash
# A few-minute demo on any machine, CPU included: generate a small synthetic ImageFolder
# (data/demo: 10 classes of drawn shapes and patterns), train ResNet50 on it for a few
# epochs, and print the final top-1 accuracy and training throughput.
#
# Usage: bash scripts/demo.sh [train.py options]
#   Extra options are appended last and so override the demo's, e.g. --epochs 8 or --device cpu.
# Runs from the repository root: data/demo and output/demo are created there.
#
# Environment: PYTHON (default python3); DEMO_SKIP_INSTALL=1 skips installing requirements.txt.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
data=data/demo

if [[ ${DEMO_SKIP_INSTALL:-0} != 1 ]]; then
    "$python" -m pip install -q -r requirements.txt
fi

# 1,000 training images: ResNet50 from scratch needs more than a few hundred to generalise,
# and more images cost nothing per step. A no-op when data/demo is already complete.
"$python" scripts/make_demo_data.py "$data" --classes 10 --train-per-class 100 --val-per-class 20 --size 64

# The summary is read from the run's output folder, so follow an --output-dir override
# (last one wins, as in argparse).
output_dir=output/demo
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --output-dir) ((i + 1 < ${#args[@]})) && output_dir=${args[i + 1]} ;;
        --output-dir=*) output_dir=${args[i]#--output-dir=} ;;
    esac
done

# train.py picks the GPU when there is one, else the CPU. Settings chosen to learn within a
# few CPU minutes: 32 px crops (ResNet50 runs ~4x faster than at 64 px); AdamW, because SGD
# at any lr that learns this fast blows up in the first steps of a ResNet50 from scratch;
# cosine decay to settle at the end. No --resume: each demo is a fresh run.
"$python" train.py \
    --data-path "$data" \
    --model resnet50 \
    --seed 0 \
    --epochs 15 \
    --batch-size 32 \
    --opt adamw --lr 0.002 --wd 0.05 \
    --lr-scheduler cosineannealinglr --lr-warmup-epochs 1 --lr-warmup-method linear \
    --workers 2 \
    --train-crop-size 32 --val-resize-size 36 --val-crop-size 32 \
    --print-freq 100 \
    --output-dir "$output_dir" \
    "$@"

# Report from the run's own records (metrics.jsonl, one per epoch, read by metrics.py as
# every other reader does) rather than by parsing the console log, whose format may change.
"$python" - "$output_dir" <<'PY'
import os
import sys

sys.path.insert(0, os.getcwd())  # the repository root (see the cd above)
import metrics

path = os.path.join(sys.argv[1], metrics.METRICS_FILE)
if not os.path.isfile(path):
    sys.exit(f"demo.sh: error: there is no {path}; did train.py finish?")
records = metrics.read_metrics(sys.argv[1])
if not records:
    sys.exit(f"demo.sh: error: {path} is empty; train.py finished no epoch")
last = records[-1]
acc1 = "n/a" if last.get("val_acc1") is None else f"{last['val_acc1']:.2f}%"
# Mean over epochs: one epoch of a few seconds is easily skewed by other work on the machine.
speeds = [r["imgs_per_sec"] for r in records if r.get("imgs_per_sec") is not None]
speed = f"{sum(speeds) / len(speeds):.1f} img/s" if speeds else "n/a"
print(f"demo: final Acc@1 {acc1} (chance 10%) after {len(records)} epochs, training {speed} (mean over epochs)")
PY
