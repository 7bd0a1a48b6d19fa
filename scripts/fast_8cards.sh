#!/usr/bin/env bash
# ResNet50 to 75.9% top-1 in a fraction of 90 epochs, shaped like FFCV's ImageNet recipes (libffcv/ffcv-imagenet,
# rn50_configs): 8 processes x 512 images, SGD with lr 1.7 at a global batch of 4,096 (0.10625 per 256 images),
# a step-free schedule (linear rise to the peak at epoch 2, linear fall to 0 at the last iteration), label
# smoothing 0.1, no weight decay on BatchNorm, progressive resizing from 160 to 192 px (FFCV's ramp for the
# chosen --epochs), evaluation at 256 px with flip averaging, AMP + channels_last; stops at 75.9% (MLPerf's target).
# Usage: bash scripts/fast_8cards.sh --data-path DIR [--epochs 16|24|32|40|88] [train.py options]   (default 40)
# Environment: NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT MAX_RESTARTS PYTHON (see _launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
RECIPE=(
    --model resnet50 --epochs 40
    --opt sgd --momentum 0.9 --wd 1e-4 --norm-weight-decay 0 --label-smoothing 0.1
    --lr-per-256 0.10625 --lr-warmup-epochs 2 --lr-warmup-decay 0.0001 --lr-scheduler linear --lr-min 0
    --min-res 160 --max-res 192 --val-resize-size 292 --val-crop-size 256 --val-flip-tta
    --backend fast --target-acc 75.9
)
launch_recipe fast_8cards 8 1 512 amp "$@"
