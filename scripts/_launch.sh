# Shared launcher for the ResNet50 recipe scripts (fp32_*.sh, amp_*.sh).
#
# Sourced, never run: each recipe script is one line calling
#   launch_recipe NAME DEFAULT_NPROC_PER_NODE DEFAULT_NNODES BATCH_PER_PROCESS PRECISION "$@"
# so that the only thing that differs between recipes is visible in that line.
#
# The command it builds is, in order:
#   torchrun flags | train.py | recipe defaults | computed -b/--lr/warmup | user arguments
# User arguments come last so they override anything before them (argparse keeps the
# last value of a repeated option).
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
# A recipe script may set, before calling launch_recipe (the 90-epoch step recipe is the default):
#   RECIPE          array of train.py options replacing the default recipe (before the computed ones)
#   LR_PER_256      lr per 256 images of global batch for the linear scaling rule (default 0.1)
#   LR_FIXED        an lr that does not scale with the batch (LARS recipes), instead of LR_PER_256
#   WARMUP_EPOCHS   warmup epochs (default: 5 when the global batch exceeds 256, else none)
#   WARMUP_DECAY    the warmup's starting fraction of the lr (default 0.01)

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

# Learning rate by the linear scaling rule of Goyal et al. 2017, "Accurate, Large Minibatch
# SGD": 0.1 for every 256 images in the global batch. Some vendor reference scripts keep
# lr 0.1 at a global batch of 4,800 (16 x 300), which under-trains by ~19x; we do not copy
# that. awk does the division because bash has only integers; %.10g keeps exact values
# such as 0.109375 readable.
# $1: global batch, $2: lr per 256 images (default 0.1). Prints the lr.
_launch_scaled_lr() {
    awk -v batch="$1" -v base="${2:-0.1}" 'BEGIN { printf "%.10g\n", base * batch / 256 }'
}

# Scan the user's train.py arguments for the options the launcher must know about.
# argparse accepts "--opt V", "--opt=V" and, for short options, "-bV" and "-b=V"; we accept
# the same spellings. Abbreviations such as "--batch" are not recognised: spell options out.
# Sets, in the caller's scope (declare them local there): _user_batch, _user_lr (empty if absent), _user_data_path
# (1 if --data-path was given), _user_help (1 if -h/--help was given).
# $1: script name, then the user's arguments.
_launch_scan_args() {
    local name=$1
    shift
    _user_batch="" _user_lr="" _user_data_path=0 _user_help=0
    while (($# > 0)); do
        case $1 in
            -b | --batch-size)
                (($# >= 2)) || _launch_die "$name" "$1 needs a value, e.g. $1 256"
                _user_batch=$2
                shift
                ;;
            --batch-size=*) _user_batch=${1#--batch-size=} ;;
            -b=*) _user_batch=${1#-b=} ;;
            -b?*) _user_batch=${1#-b} ;;
            --lr)
                (($# >= 2)) || _launch_die "$name" "--lr needs a value, e.g. --lr 0.1"
                _user_lr=$2
                shift
                ;;
            --lr=*) _user_lr=${1#--lr=} ;;
            --data-path | --data-path=*) _user_data_path=1 ;;
            -h | --help) _user_help=1 ;;
        esac
        shift
    done
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

    local _user_batch _user_lr _user_data_path _user_help
    _launch_scan_args "$name" "$@"
    if ((_user_data_path == 0 && _user_help == 0)); then
        _launch_die "$name" "missing --data-path; usage: bash scripts/$name.sh --data-path DIR [train.py options]"
    fi

    local batch=${_user_batch:-$default_batch}
    _launch_require_int "$name" "--batch-size" "$batch" 1
    batch=$((10#$batch))
    local global_batch=$((batch * nproc * nnodes))

    local lr lr_note lr_per_256=${LR_PER_256:-0.1}
    if [[ -n $_user_lr ]]; then
        lr=$_user_lr
        lr_note="given"
    elif [[ -n ${LR_FIXED:-} ]]; then
        lr=$LR_FIXED
        lr_note="the recipe's"
    else
        lr=$(_launch_scaled_lr "$global_batch" "$lr_per_256")
        lr_note="$lr_per_256 x $global_batch / 256"
    fi

    local -a recipe
    if [[ -n ${RECIPE+set} ]]; then
        recipe=("${RECIPE[@]}")
    else
        recipe=(
            --model resnet50
            --epochs 90
            --opt sgd --momentum 0.9 --wd 1e-4
            --lr-scheduler steplr --lr-step-size 30 --lr-gamma 0.1
            --backend fast
        )
    fi
    recipe+=(
        --resume auto
        --output-dir "output/$name"
        --batch-size "$batch"
        --lr "$lr"
    )
    # Large batches diverge early at full lr without warmup (Goyal et al.); at 256 or less
    # the base lr is already small enough.
    local warmup_note="none" warmup_epochs=${WARMUP_EPOCHS:-}
    if [[ -z $warmup_epochs ]] && ((global_batch > 256)); then
        warmup_epochs=5
    fi
    if [[ -n $warmup_epochs ]] && ((warmup_epochs > 0)); then
        recipe+=(--lr-warmup-epochs "$warmup_epochs" --lr-warmup-method linear --lr-warmup-decay "${WARMUP_DECAY:-0.01}")
        warmup_note="$warmup_epochs epochs"
    fi
    case $precision in
        fp32) ;;
        amp) recipe+=(--amp --channels-last) ;;
        *) _launch_die "$name" "unknown precision '$precision' (expected fp32 or amp)" ;;
    esac

    echo "$name: processes=$((nproc * nnodes)) ($nproc per node x $nnodes nodes) node_rank=$node_rank global_batch=$global_batch ($batch per process) lr=$lr ($lr_note) warmup=$warmup_note master=$master_addr:$master_port"

    # Logs from several processes interleave; unbuffered output keeps lines whole and timely.
    export PYTHONUNBUFFERED=${PYTHONUNBUFFERED:-1}

    exec "$python" -m torch.distributed.run \
        --nproc-per-node "$nproc" \
        --nnodes "$nnodes" \
        --node-rank "$node_rank" \
        --master-addr "$master_addr" \
        --master-port "$master_port" \
        --max-restarts "$max_restarts" \
        "$repo/train.py" "${recipe[@]}" "$@"
}
