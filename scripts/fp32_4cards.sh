#!/usr/bin/env bash
# ResNet50 on ImageNet: 4 processes on one node, 300 images per process, fp32.
# Usage: bash scripts/fp32_4cards.sh --data-path DIR [train.py options]   (options given here override the defaults)
# Environment: NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT MAX_RESTARTS PYTHON (see _launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch_recipe fp32_4cards 4 1 300 fp32 "$@"
