#!/usr/bin/env bash
# ResNet50 on ImageNet: 1 process, 300 images per process, AMP + channels_last.
# Usage: bash scripts/amp_1card.sh --data-path DIR [train.py options]   (options given here override the defaults)
# Environment: NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT MAX_RESTARTS PYTHON (see _launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch_recipe amp_1card 1 1 300 amp "$@"
