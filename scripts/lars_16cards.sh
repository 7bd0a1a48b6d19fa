#!/usr/bin/env bash
# ResNet50 to 75.9% top-1 with LARS on two nodes of 8: 16 processes x 480 images (global batch 7,680).
# Hyperparameters from the MLPerf reference point nearest this batch (mlcommons/logging rcps_resnet, global batch
# 8,192: base lr 17, 5 warmup epochs, weight decay 2e-4, momentum 0.9, converged in 41-44 epochs): polynomial decay
# (power 2) to 1e-4 over 44 epochs, label smoothing 0.1, trust coefficient 0.001, epsilon 0, no weight decay or
# trust ratio on BatchNorm and bias, AMP + channels_last; stops at 75.9%.
# Usage, on each node: MASTER_ADDR=node0 NODE_RANK=0|1 bash scripts/lars_16cards.sh --data-path DIR [options]
# Environment: NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT MAX_RESTARTS PYTHON (see _launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
RECIPE=(
    --model resnet50 --epochs 44
    --opt lars --momentum 0.9 --wd 2e-4 --lars-trust-coefficient 0.001 --lars-eps 0 --label-smoothing 0.1
    --lr 17 --lr-warmup-epochs 5 --lr-warmup-decay 0.001 --lr-scheduler poly --lr-power 2 --lr-min 1e-4
    --backend fast --target-acc 75.9
)
launch_recipe lars_16cards 8 2 480 amp "$@"
