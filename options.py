"""train.py's command line: every option, checked where it is declared, and the checks of their combinations.

A bad value ends the run before any process group, worker or model starts, with one line that names the option,
says what is wrong and exits with code 2: each numeric option has a typed range (NaN and infinity are never valid),
each named one its choices. Lower layers trust the values they get. Option names, defaults and meanings follow
torchvision's references/classification/train.py; the README lists the additions.
"""

import argparse
import math
import os

import torch

import accelerator
import data
import jpeg_roi
import presets
import transforms
import utils

EXIT_BAD_INPUT = 2
# max-autotune benchmarks kernels on every rank for many minutes; a rank that finishes first waits in a collective.
COMPILE_DIST_TIMEOUT_MIN = 120.0
OPTIMIZERS = ("sgd", "sgd_nesterov", "rmsprop", "adamw", "lars")
# FFCV's ResNet-50 configurations (rn50_configs/rn50_{epochs}_epochs.yaml): epochs -> (start_ramp, end_ramp).
FFCV_RES_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}
DEFAULT_LR = 0.1  # torchvision's reference default
GOYAL_WARMUP_EPOCHS = 5  # Goyal et al. 2017: large batches diverge early at full lr without a gradual warmup
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A bad option or combination of options; the message is one line naming the option."""


def number(kind=float, low=None, high=None, *, low_open=False, high_open=False):
    """argparse `type` for a finite int or float within [low, high] (an end is excluded when `*_open`)."""
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"{'>' if low_open else '>='} {low:g}"
    else:
        rule = f"{'<' if high_open else '<='} {high:g}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'} {rule}, "
                                             f"got {text!r}") from None
        too_low = low is not None and (value < low or (low_open and value == low))
        too_high = high is not None and (value > high or (high_open and value == high))
        if not math.isfinite(value) or too_low or too_high:  # NaN and infinity are never valid
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse, with errors on one line: the option, what is wrong, and where to look."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


NON_NEGATIVE, POSITIVE, FRACTION = number(float, 0), number(float, 0, low_open=True), number(float, 0, 1)


POSITIVE_INT, COUNT = number(int, 1), number(int, 0)


def get_args_parser(add_help=True):
    parser = OneLineParser(description="ResNet50 ImageNet training", add_help=add_help)
    add_data_args(parser.add_argument_group("data"))
    add_model_args(parser.add_argument_group("model and optimization"))
    add_run_args(parser.add_argument_group("run, checkpoints and distributed"))
    g = parser.add_argument_group("benchmark (bench.py)")
    g.add_argument("--benchmark", default=None, choices=["model", "data", "full"],
                   help="model: synthetic batches on the device; data: the input pipeline only; full: real training")
    g.add_argument("--benchmark-steps", default=50, type=POSITIVE_INT, help="timed steps")
    g.add_argument("--benchmark-warmup", default=10, type=COUNT, help="untimed steps before timing")
    return parser


def add_data_args(g):
    g.add_argument("--data-path", default=None, type=str, help="ImageNet folder with train/<class>/ and val/<class>/")
    g.add_argument("-j", "--workers", default=None, type=COUNT, metavar="N",
                   help="data loading workers per process (default: CPU cores / processes on this node, at most 16)")
    g.add_argument("--cache-dataset", action="store_true", help="cache the file lists (JSON) to start faster")
    g.add_argument("--backend", default="pil", type=str.lower, choices=data.BACKENDS,
                   help="pil or tensor (torchvision's presets), or fast (uint8 pipeline)")
    g.add_argument("--use-v2", action="store_true", help="use torchvision.transforms.v2 in the pil/tensor presets")
    g.add_argument("--decode-device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: workers only read bytes; each batch's crop regions are decoded on the GPU (nvJPEG "
                        "via nvImageCodec) in a background thread")
    g.add_argument("--roi-decode", default="auto", choices=jpeg_roi.MODES,
                   help="fast backend: decode only each training crop's region of the JPEG (nvImageCodec); auto "
                        "falls back to whole-image decoding when it is not installed, on fails")
    g.add_argument("--bad-images", default="error", choices=["error", "skip"],
                   help="an unreadable image stops the run (error) or is replaced by another and counted (skip)")
    g.add_argument("--verify-data", action="store_true", help="scan train/ and val/ for unreadable images and exit")
    g.add_argument("--interpolation", default="bilinear", type=str.lower,
                   choices=[mode.value for mode in presets.InterpolationMode],
                   help="the interpolation method")
    g.add_argument("--val-resize-size", default=256, type=POSITIVE_INT, help="the resize size used for validation")
    g.add_argument("--val-crop-size", default=224, type=POSITIVE_INT, help="the central crop size used for validation")
    g.add_argument("--train-crop-size", default=224, type=POSITIVE_INT, help="the random crop size used for training")
    g.add_argument("--min-res", default=None, type=POSITIVE_INT,
                   help="progressive resizing (FFCV): train crops of this size up to the ramp's first epoch ...")
    g.add_argument("--max-res", default=None, type=POSITIVE_INT,
                   help="... and of this size from its last; in between linear, rounded to a multiple of 32 "
                        "(replaces --train-crop-size)")
    g.add_argument("--res-ramp", default=None, type=COUNT, nargs=2, metavar=("E0", "E1"),
                   help="the ramp's first and last epoch (default: FFCV's for 16/24/32/40/56/88 epochs, else "
                        "72%% and 85%% of --epochs)")
    g.add_argument("--val-flip-tta", action="store_true",
                   help="evaluate on the mean of the logits of each image and its mirror")
    g.add_argument("--auto-augment", default=None, type=str.lower, choices=presets.AUTO_AUGMENT_POLICIES,
                   help="auto augment policy")
    g.add_argument("--ra-magnitude", default=9, type=COUNT, help="magnitude of auto augment policy")
    g.add_argument("--augmix-severity", default=3, type=number(int, 1, 10), help="severity of augmix policy")
    g.add_argument("--random-erase", default=0.0, type=FRACTION, help="random erasing probability")
    g.add_argument("--ra-sampler", action="store_true", help="use repeated augmentation in training")
    g.add_argument("--ra-reps", default=3, type=POSITIVE_INT, help="number of repetitions for the repeated augmentation sampler")
    g.add_argument("--mixup-alpha", default=0.0, type=NON_NEGATIVE, help="mixup alpha")
    g.add_argument("--cutmix-alpha", default=0.0, type=NON_NEGATIVE, help="cutmix alpha")


def add_model_args(g):
    g.add_argument("--model", default="resnet50", type=str, help="torchvision model name")
    g.add_argument("--weights", default=None, type=str, help="the weights enum name to load")
    g.add_argument("--device", default=accelerator.default_device_type(), type=str,
                   help="cuda, xpu, npu or cpu (default: this machine's accelerator, else cpu); under torchrun each "
                        "process takes its local rank's card; cuda:N picks a card in a single process")
    g.add_argument("-b", "--batch-size", default=32, type=POSITIVE_INT,
                   help="images per process (global batch = b x processes)")
    g.add_argument("--epochs", default=90, type=POSITIVE_INT, metavar="N", help="number of total epochs to run")
    g.add_argument("--opt", default="sgd", type=str.lower, choices=OPTIMIZERS, help="optimizer")
    g.add_argument("--lr", default=None, type=POSITIVE,
                   help=f"initial learning rate (default {DEFAULT_LR:g}, or the one --lr-per-256 sets)")
    g.add_argument("--lr-per-256", default=None, type=POSITIVE, metavar="LR",
                   help="linear scaling rule (Goyal et al. 2017): --lr = LR x global batch / 256, with their "
                        f"{GOYAL_WARMUP_EPOCHS} epochs of warmup above a global batch of 256; an explicit --lr or "
                        "--lr-warmup-epochs wins")
    g.add_argument("--momentum", default=0.9, type=number(float, 0, 1, high_open=True), metavar="M", help="momentum")
    g.add_argument("--lars-trust-coefficient", default=0.001, type=POSITIVE, metavar="ETA",
                   help="--opt lars: the trust coefficient eta of the layer-wise ratio (MLPerf: 0.001)")
    g.add_argument("--lars-eps", default=0.0, type=NON_NEGATIVE, help="--opt lars: epsilon in the ratio's denominator")
    g.add_argument("--wd", "--weight-decay", default=1e-4, type=NON_NEGATIVE, metavar="W", dest="weight_decay",
                   help="weight decay")
    g.add_argument("--norm-weight-decay", default=None, type=NON_NEGATIVE, help="weight decay for normalization layers")
    g.add_argument("--bias-weight-decay", default=None, type=NON_NEGATIVE, help="weight decay for bias parameters")
    g.add_argument("--transformer-embedding-decay", default=None, type=NON_NEGATIVE,
                   help="weight decay for embedding parameters of vision transformer models")
    g.add_argument("--label-smoothing", default=0.0, type=number(float, 0, 1, high_open=True), help="label smoothing")
    g.add_argument("--lr-scheduler", default="steplr", type=str.lower, choices=utils.LRSchedule.NAMES,
                   help="the main schedule after warmup")
    g.add_argument("--lr-warmup-epochs", default=None, type=COUNT,
                   help="epochs of warmup, applied per iteration (default 0, or the one --lr-per-256 sets)")
    g.add_argument("--lr-warmup-method", default="constant", type=str.lower, choices=utils.LRSchedule.WARMUPS,
                   help="the warmup shape")
    g.add_argument("--lr-warmup-decay", default=0.01, type=number(float, 0, 1, low_open=True),
                   help="the decay for lr in warmup")
    g.add_argument("--lr-step-size", default=30, type=POSITIVE_INT, help="decrease lr every step-size epochs")
    g.add_argument("--lr-gamma", default=0.1, type=POSITIVE, help="decrease lr by a factor of lr-gamma")
    g.add_argument("--lr-min", default=0.0, type=NON_NEGATIVE,
                   help="the lr that cosineannealinglr, poly and linear reach at the end of the run")
    g.add_argument("--lr-power", default=2.0, type=POSITIVE, help="--lr-scheduler poly: the polynomial's power")
    g.add_argument("--clip-grad-norm", default=None, type=POSITIVE, help="the maximum gradient norm")
    g.add_argument("--sync-bn", action="store_true",
                   help="use synchronized BatchNorm across processes (costs a host synchronization per BatchNorm "
                        "layer in torch's implementation: about 50 per ResNet50 step)")
    g.add_argument("--amp", action="store_true", help="automatic mixed precision (bfloat16 autocast on CPU)")
    g.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"],
                   help="autocast dtype (default float16 on CUDA, with GradScaler; bfloat16 on CPU)")
    g.add_argument("--zero-init-residual", action="store_true",
                   help="start the last BatchNorm of each residual block at zero (torchvision's zero_init_residual)")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory format for the model and the input")
    g.add_argument("--tf32", default="on", choices=["on", "off"],
                   help="NVIDIA Ampere and later: float32 convolutions and matmuls in TF32 (on, PyTorch's default for "
                        "convolutions) or IEEE float32 (off)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode; max-autotune modes raise the collectives' timeout to at least "
                        f"{COMPILE_DIST_TIMEOUT_MIN:g} minutes (every rank compiles)")
    g.add_argument("--model-ema", action="store_true", help="track an exponential moving average of the weights")
    g.add_argument("--model-ema-steps", default=32, type=POSITIVE_INT, help="iterations between EMA updates")
    g.add_argument("--model-ema-decay", default=0.99998, type=FRACTION, help="EMA decay factor")
    g.add_argument("--use-deterministic-algorithms", action="store_true", help="forces deterministic algorithms")
    g.add_argument("--seed", default=None, type=COUNT, help="seed for python, numpy, torch and the sampler (random if unset)")


def add_run_args(g):
    g.add_argument("--print-freq", default=10, type=POSITIVE_INT, help="print frequency (iterations)")
    g.add_argument("--output-dir", default=".", type=str, help="path to save outputs")
    g.add_argument("--resume", default="", type=str, help="checkpoint path, or 'auto' for the newest good one in --output-dir")
    g.add_argument("--start-epoch", default=0, type=COUNT, metavar="N", help="start epoch")
    g.add_argument("--test-only", action="store_true", help="only evaluate the model (with --resume or --weights)")
    g.add_argument("--keep-checkpoints", default=None, type=POSITIVE_INT, metavar="N",
                   help="keep the newest N model_{epoch}.pth (default: all)")
    g.add_argument("--checkpoint-interval", default=0, type=COUNT, metavar="STEPS",
                   help="also save every STEPS iterations (0: at epoch ends only)")
    g.add_argument("--eval-interval", default=1, type=POSITIVE_INT, metavar="N",
                   help="evaluate every N epochs (always after the last)")
    g.add_argument("--target-acc", default=None, type=number(float, 0, 100, low_open=True),
                   help="stop at the first evaluation with Acc@1 >= this (e.g. 75.9)")
    g.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to OUTPUT/tensorboard")
    g.add_argument("--dry-run", action="store_true",
                   help="check the options, print the global batch, lr and warmup they give, and exit (the launch "
                        "scripts do this once before starting any process)")
    g.add_argument("--max-steps-per-epoch", default=None, type=POSITIVE_INT,
                   help="cut every epoch after N steps (smoke tests)")
    g.add_argument("--world-size", default=1, type=POSITIVE_INT,
                   help="number of distributed processes; set by the launcher (torchrun, SLURM), not read from here")
    g.add_argument("--dist-url", default="env://", type=str, help="url used to set up distributed training")
    g.add_argument("--dist-backend", default=None, type=str,
                   help="default process group's backend (default: nccl on CUDA, xccl on XPU, hccl on NPU, gloo on "
                        "CPU); host values always travel on a separate gloo group")
    g.add_argument("--dist-timeout", default=30.0, type=POSITIVE, metavar="MINUTES",
                   help="a collective waiting longer fails")


def validate_args(args) -> None:
    """What one option's type cannot check: combinations, files, and the device. Runs before any process group
    or worker starts."""
    if args.benchmark != "model" and args.data_path is None:
        raise ConfigError("--data-path is required (a folder with train/<class>/ and val/<class>/)")
    device = run_device(args)
    if args.decode_device == "cuda" and not accelerator.is_nvidia(device):
        raise ConfigError("--decode-device cuda decodes with nvJPEG, which NVIDIA GPUs alone have: it needs "
                          "--device cuda on an NVIDIA GPU; use --decode-device cpu")
    check_uint8_pipeline_options(args)
    if args.roi_decode == "on" and (args.backend != "fast" or args.decode_device == "cuda"):
        raise ConfigError("--roi-decode on needs --backend fast with CPU decoding (--decode-device cpu)")
    launched = utils.read_launcher_env()
    if args.sync_bn and device.type == "cpu" and launched and launched["world_size"] > 1:
        raise ConfigError("--sync-bn needs an accelerator (SyncBatchNorm does not run on the CPU); drop it for CPU runs")
    if args.amp and args.amp_dtype == "float16" and device.type == "cpu":
        raise ConfigError("--amp-dtype float16 needs an accelerator; on CPU --amp uses bfloat16")
    if (args.min_res is None) != (args.max_res is None):
        raise ConfigError("progressive resizing needs both --min-res and --max-res")
    if args.min_res is not None and args.min_res > args.max_res:
        raise ConfigError(f"--min-res {args.min_res} is larger than --max-res {args.max_res}")
    if args.res_ramp is not None and (args.min_res is None or args.res_ramp[0] > args.res_ramp[1]):
        raise ConfigError("--res-ramp E0 E1 needs --min-res/--max-res and E0 <= E1")
    if args.test_only and not (args.resume or args.weights):
        raise ConfigError("--test-only needs a model: pass --resume PATH (or --weights)")
    if args.resume and args.resume != "auto" and not os.path.isfile(args.resume):
        raise ConfigError(f"--resume {args.resume}: no such file (use --resume auto to pick the newest in --output-dir)")
    if args.resume == "auto" and not args.output_dir:
        raise ConfigError("--resume auto looks in --output-dir; set --output-dir")
    args.lr_note = resolve_lr(args, launched["world_size"] if launched else 1)


def check_uint8_pipeline_options(args) -> None:
    """--backend fast and --decode-device cuda (which ignores --backend) crop, resize and flip only, with bilinear
    or bicubic resampling: augmentations of the pil/tensor presets must not be accepted and then silently left
    out of the run (args.json would record them)."""
    pipeline = ("--decode-device cuda" if args.decode_device == "cuda" else
                "--backend fast" if args.backend == "fast" else None)
    if pipeline is None:
        return
    if args.interpolation not in transforms.INTERPOLATIONS:
        raise ConfigError(f"--interpolation {args.interpolation} is not supported by {pipeline}; choose one of "
                          f"{', '.join(transforms.INTERPOLATIONS)}")
    augment = ([f"--auto-augment {args.auto_augment}"] if args.auto_augment else []) + (
        [f"--random-erase {args.random_erase:g}"] if args.random_erase > 0 else [])
    if augment:
        raise ConfigError(f"{' and '.join(augment)}: {pipeline} crops, resizes and flips only; use --backend pil "
                          f"(or tensor) with --decode-device cpu for these augmentations, or drop them")


def resolve_lr(args, world_size: int) -> str:
    """Sets --lr and --lr-warmup-epochs once the global batch is known; returns how they were chosen, for the log.
    --lr-per-256 is Goyal et al.'s rule (linear lr scaling plus gradual warmup), which the launch scripts use."""
    global_batch = args.batch_size * world_size
    scaling = args.lr_per_256 is not None
    if args.lr is not None:
        source = "given"
    elif scaling:
        args.lr, source = args.lr_per_256 * global_batch / 256, f"{args.lr_per_256:g} x {global_batch} / 256"
    else:
        args.lr, source = DEFAULT_LR, "default"
    if args.lr_warmup_epochs is None:
        args.lr_warmup_epochs = GOYAL_WARMUP_EPOCHS if scaling and global_batch > 256 else 0
    return (f"global batch {global_batch} ({world_size} process(es) x {args.batch_size}), lr {args.lr:.10g} ({source}), "
            f"warmup {args.lr_warmup_epochs} epochs")


def run_device(args) -> torch.device:
    """This process's device from --device and the launcher's local rank (see accelerator.resolve_device)."""
    launched = utils.read_launcher_env() or {"local_rank": 0, "world_size": 1}
    try:
        return accelerator.resolve_device(args.device, local_rank=launched["local_rank"],
                                          world_size=launched["world_size"])
    except ValueError as e:
        raise ConfigError(str(e)) from e


def dist_timeout_minutes(args) -> float:
    """--dist-timeout, raised while max-autotune compiles: every rank benchmarks kernels for many minutes at its
    first steps, and the first to finish waits in a collective for the slowest."""
    if args.compile and "max-autotune" in args.compile_mode:
        return max(args.dist_timeout, COMPILE_DIST_TIMEOUT_MIN)
    return args.dist_timeout


def resolution_ramp(args) -> tuple[int, int] | None:
    """--res-ramp, or FFCV's ramp for the run's epochs, or None without progressive resizing."""
    if args.min_res is None:
        return None
    if args.res_ramp is not None:
        return tuple(args.res_ramp)
    return FFCV_RES_RAMPS.get(args.epochs, (round(0.72 * args.epochs), round(0.85 * args.epochs)))


def train_sizes(args) -> list[int]:
    """The training crop size of every epoch (all the same without progressive resizing)."""
    ramp = resolution_ramp(args)
    if ramp is None:
        return [args.train_crop_size] * args.epochs
    return [utils.train_resolution(epoch, args.min_res, args.max_res, *ramp) for epoch in range(args.epochs)]
