#!/usr/bin/env bash
# ResNet50 on ImageNet: 8 processes on one node, 480 images per process, AMP + channels_last.
# Usage: bash scripts/amp_8cards.sh --data-path DIR [train.py options]   (options given here override the defaults)
# Environment: NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT MAX_RESTARTS PYTHON (see _launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch_recipe amp_8cards 8 1 480 amp "$@"
