#!/usr/bin/env bash
# ResNet50 on ImageNet: 2 nodes x 8 processes, 480 images per process, AMP + channels_last. Run once per node with MASTER_ADDR and NODE_RANK set.
# Usage: bash scripts/amp_16cards.sh --data-path DIR [train.py options]   (options given here override the defaults)
# Environment: NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT MAX_RESTARTS PYTHON (see _launch.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
launch_recipe amp_16cards 8 2 480 amp "$@"
