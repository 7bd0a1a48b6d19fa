#!/usr/bin/env bash
# ResNet50 to 75.9% top-1 with LARS, shaped like MLPerf's ResNet-50 reference: 8 processes x 480 images (global
# batch 3,840). Hyperparameters from the MLPerf reference point nearest this batch (mlcommons/logging rcps_resnet,
# global batch 3,264: base lr 10.5, 2 warmup epochs, weight decay 5e-5, momentum 0.9, converged in 34-37 epochs):
# polynomial decay (power 2) to 1e-4 over 37 epochs, label smoothing 0.1, trust coefficient 0.001, epsilon 0, no
# weight decay or trust ratio on BatchNorm and bias, AMP + channels_last; stops at 75.9%.
# Usage: bash scripts/lars_8cards.sh --data-path DIR [train.py options]
# Environment: NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT MAX_RESTARTS PYTHON (see _launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
RECIPE=(
    --model resnet50 --epochs 37
    --opt lars --momentum 0.9 --wd 5e-5 --lars-trust-coefficient 0.001 --lars-eps 0 --label-smoothing 0.1
    --lr 10.5 --lr-warmup-epochs 2 --lr-warmup-decay 0.001 --lr-scheduler poly --lr-power 2 --lr-min 1e-4
    --backend fast --target-acc 75.9
)
launch_recipe lars_8cards 8 1 480 amp "$@"
