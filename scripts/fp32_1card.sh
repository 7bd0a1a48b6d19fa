#!/usr/bin/env bash
# ResNet50 on ImageNet: 1 process, 280 images per process, fp32.
# Usage: bash scripts/fp32_1card.sh --data-path DIR [train.py options]   (options given here override the defaults)
# Environment: NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT MAX_RESTARTS PYTHON (see _launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch_recipe fp32_1card 1 1 280 fp32 "$@"
