# Shared launcher for the ResNet50 recipe scripts (fp32_*.sh, amp_*.sh).
#
# Sourced, never run: each recipe script is one line calling
#   launch_recipe NAME DEFAULT_NPROC_PER_NODE DEFAULT_NNODES BATCH_PER_PROCESS PRECISION "$@"
# so that the only thing that differs between recipes is visible in that line.
#
# The command it builds is, in order:
#   torchrun flags | train.py | launcher defaults | recipe | user arguments
# Later options override earlier ones (argparse keeps the last value of a repeated option), so the user's
# arguments win. The launcher does not read train.py's options: train.py resolves them (the lr of the linear
# scaling rule, --lr-per-256, needs the global batch) and checks them once, with --dry-run, before torchrun
# starts any process (torchrun would otherwise restart a bad command MAX_RESTARTS times on every node).
#
# Environment (all optional):
#   NPROC_PER_NODE  processes per node (default: the script's)
#   NNODES          number of nodes (default: the script's)
#   NODE_RANK       this node's rank; required when NNODES > 1 (default 0 on one node)
#   MASTER_ADDR     address of node 0; required when NNODES > 1 (default 127.0.0.1 on one node)
#   MASTER_PORT     rendezvous port on node 0, >= 1024 (default 29500)
#   MAX_RESTARTS    torchrun --max-restarts (default 3: train.py resumes from its newest
#                   checkpoint with --resume auto, so a restart loses at most one epoch)
#   PYTHON          interpreter, a single word (default python3)
#
# A recipe script may set RECIPE, an array of train.py options, before calling launch_recipe; the default is
# the 90-epoch step recipe with Goyal et al.'s linear scaling rule (lr 0.1 per 256 images of global batch, 5
# warmup epochs above a global batch of 256). Some vendor reference scripts keep lr 0.1 at a global batch of
# 4,800 (16 x 300), which under-trains by ~19x; we do not copy that.

# Print one error line naming the launcher and exit with status 2 (usage error), so a
# misconfigured job fails before any process or GPU is touched.
_launch_die() {
    echo "$1: error: $2" >&2
    exit 2
}

# Exit with a clear message unless $3 is a whole number >= $4.
# $1: script name, $2: variable name (for the message), $3: value, $4: minimum.
_launch_require_int() {
    local name=$1 var=$2 value=$3 minimum=$4
    if ! [[ $value =~ ^[0-9]+$ ]] || ((10#$value < minimum)); then
        _launch_die "$name" "$var must be a whole number >= $minimum, got '$value'"
    fi
}

# Build and exec the torchrun command for one recipe.
# $1: script name (also the default output directory), $2: default processes per node,
# $3: default nodes, $4: default batch per process, $5: "fp32" or "amp", then the user's
# train.py arguments.
launch_recipe() {
    local name=$1 default_nproc=$2 default_nnodes=$3 default_batch=$4 precision=$5
    shift 5

    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    local python=${PYTHON:-python3}

    local nproc=${NPROC_PER_NODE:-$default_nproc}
    local nnodes=${NNODES:-$default_nnodes}
    _launch_require_int "$name" NPROC_PER_NODE "$nproc" 1
    _launch_require_int "$name" NNODES "$nnodes" 1
    nproc=$((10#$nproc))
    nnodes=$((10#$nnodes))

    # On one node everything is local, so safe defaults exist. Across nodes a wrong guess
    # would hang every node at the rendezvous, so the user must say where node 0 is.
    local node_rank master_addr
    if ((nnodes > 1)); then
        if [[ -z ${MASTER_ADDR:-} || -z ${NODE_RANK:-} ]]; then
            _launch_die "$name" "NNODES=$nnodes needs MASTER_ADDR (node 0's address) and NODE_RANK (0..$((nnodes - 1))) set on every node, e.g. MASTER_ADDR=node0 NODE_RANK=0 bash scripts/$name.sh --data-path /data/imagenet"
        fi
        node_rank=$NODE_RANK
        master_addr=$MASTER_ADDR
    else
        node_rank=${NODE_RANK:-0}
        master_addr=${MASTER_ADDR:-127.0.0.1}
    fi
    _launch_require_int "$name" NODE_RANK "$node_rank" 0
    node_rank=$((10#$node_rank))
    if ((node_rank >= nnodes)); then
        _launch_die "$name" "NODE_RANK=$node_rank must be below NNODES=$nnodes (ranks are 0..$((nnodes - 1)))"
    fi

    local master_port=${MASTER_PORT:-29500}
    if ! [[ $master_port =~ ^[0-9]+$ ]] || ((10#$master_port < 1024 || 10#$master_port > 65535)); then
        _launch_die "$name" "MASTER_PORT must be 1024..65535 (ports below 1024 need root and clash with system services), got '$master_port'"
    fi
    master_port=$((10#$master_port))

    local max_restarts=${MAX_RESTARTS:-3}
    _launch_require_int "$name" MAX_RESTARTS "$max_restarts" 0

    local -a recipe
    if [[ -n ${RECIPE+set} ]]; then
        recipe=("${RECIPE[@]}")
    else
        recipe=(
            --model resnet50
            --epochs 90
            --opt sgd --momentum 0.9 --wd 1e-4
            --lr-scheduler steplr --lr-step-size 30 --lr-gamma 0.1
            --lr-per-256 0.1
            --backend fast
        )
    fi
    case $precision in
        fp32) ;;
        amp) recipe+=(--amp --channels-last) ;;
        *) _launch_die "$name" "unknown precision '$precision' (expected fp32 or amp)" ;;
    esac
    local -a train_args=(
        --resume auto
        --output-dir "output/$name"
        --batch-size "$default_batch"
        --lr-warmup-method linear --lr-warmup-decay 0.01
        "${recipe[@]}"
        "$@"
    )

    # One process checks every option with this launch's world size and says what they resolve to; a usage
    # error ends here, once, with train.py's one-line message and exit code 2.
    local checked
    checked=$(WORLD_SIZE=$((nproc * nnodes)) RANK=0 LOCAL_RANK=0 LOCAL_WORLD_SIZE=$nproc \
        "$python" "$repo/train.py" "${train_args[@]}" --dry-run) || exit $?
    if [[ $checked != *"dry run: "* ]]; then  # --help: train.py printed its usage; nothing to launch
        printf '%s\n' "$checked"
        exit 0
    fi
    checked=${checked##*dry run: }
    echo "$name: processes=$((nproc * nnodes)) ($nproc per node x $nnodes nodes) node_rank=$node_rank master=$master_addr:$master_port; ${checked%%; options checked*}"

    # Logs from several processes interleave; unbuffered output keeps lines whole and timely.
    export PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}

    # torchrun forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to its workers by default, and dies of SIGUSR1, which
    # SLURM's --signal sends before a job's time limit: its workers, in their own session, would never hear of it
    # and be killed without a checkpoint. Listed here, SIGUSR1 reaches train.py, which saves and exits 75.
    exec "$python" -m torch.distributed.run \
        --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
        --nproc-per-node "$nproc" \
        --nnodes "$nnodes" \
        --node-rank "$node_rank" \
        --master-addr "$master_addr" \
        --master-port "$master_port" \
        --max-restarts "$max_restarts" \
        "$repo/train.py" "${train_args[@]}"
}
