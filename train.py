"""Train ResNet50 (or any torchvision classification model) on ImageNet, one process or many.

Single process:
    python train.py --data-path /data/imagenet --device cpu --epochs 2
One node, 8 GPUs (what scripts/amp_8cards.sh runs):
    torchrun --nproc-per-node 8 train.py --data-path /data/imagenet -b 480 --amp --channels-last --lr 1.5 ...
Two nodes: the same on each node with --nnodes 2 --node-rank 0|1 --master-addr HOST (scripts/*_16cards.sh).

Options follow torchvision's references/classification/train.py (same names, defaults and meaning); the
additions are listed in the README. The story of a run: the parser checks each option, `main` checks their
combinations, starts the process group, `build_run` builds data, model, optimizer and precision, a checkpoint
manager restores the run when asked, then `train_epochs` alternates `train_one_epoch` and `evaluate`, saving a
checkpoint after each epoch. `--benchmark` runs bench.py on the same `build_run`.

Exit codes: 0 done; 2 bad input or configuration (one line says what); 3 the loss became NaN/Inf;
75 stopped by SIGTERM/SIGUSR1 after saving a checkpoint (resume with --resume auto).
"""

import dataclasses
import json
import os
import re
import sys
import time

import torch
import torch.nn as nn
import torchvision

import accelerator
import checkpoint as ckpt_io
import data
import datasets
import jpeg_roi
import metrics
import transforms
import utils
import options
from options import EXIT_BAD_INPUT, ConfigError, dist_timeout_minutes, get_args_parser, run_device, validate_args

EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later" - the job can be requeued and resumed
MAX_CONSECUTIVE_SKIPPED_STEPS = 50  # float16 AMP: a few skipped steps are normal, a long run of them is not


class NonFiniteLossError(RuntimeError):
    pass


def resolve_precision(args, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if not args.amp:
        return None, False
    if device.type == "cpu":  # CPU autocast computes in bfloat16, which needs no loss scaling
        return torch.bfloat16, False
    dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    return dtype, dtype == torch.float16


def precision_name(amp_dtype) -> str:
    return {None: "fp32", torch.float16: "amp_fp16", torch.bfloat16: "amp_bf16"}[amp_dtype]


# ------------------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------------------
def build_model(name: str, weights: str | None, num_classes: int, *, channels_last: bool, device: torch.device,
                sync_bn_group=None, zero_init_residual: bool = False) -> nn.Module:
    """The torchvision model on `device`; with `sync_bn_group`, BatchNorm layers synchronize over that group.
    `zero_init_residual` starts each residual block as the identity (Goyal et al. 2017), as torchvision's ResNets
    offer; the architecture is unchanged, so checkpoints load into torchvision.models.resnet50 as they are."""
    extra = {"zero_init_residual": True} if zero_init_residual else {}
    try:
        model = torchvision.models.get_model(name, weights=weights, num_classes=num_classes, **extra)
    except (ValueError, TypeError) as e:
        what = " with --zero-init-residual" if extra else ""
        raise ConfigError(f"--model {name} / --weights {weights}{what}: {e}") from e
    if sync_bn_group is not None:
        # The default group is passed as None, which SyncBatchNorm reads as the default group: a group object kept
        # in the layers cannot be deep-copied, and the EMA model (--model-ema) is a deep copy.
        group = None if sync_bn_group is torch.distributed.group.WORLD else sync_bn_group
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(model: nn.Module, *, opt: str, lr: float, momentum: float, weight_decay: float,
                    norm_weight_decay, bias_weight_decay, transformer_embedding_decay, device: torch.device,
                    lars_trust_coefficient: float = 0.001, lars_eps: float = 0.0):
    if opt == "lars":  # its own groups: BatchNorm and bias without weight decay or the trust ratio (MLPerf)
        return utils.LARS(utils.lars_param_groups(model, weight_decay), lr=lr, momentum=momentum,
                          weight_decay=weight_decay, trust_coefficient=lars_trust_coefficient, eps=lars_eps)
    custom_keys = []
    if bias_weight_decay is not None:
        custom_keys.append(("bias", bias_weight_decay))
    if transformer_embedding_decay is not None:
        for key in ("class_token", "position_embedding", "relative_position_bias_table"):
            custom_keys.append((key, transformer_embedding_decay))
    params = utils.set_weight_decay(model, weight_decay, norm_weight_decay, custom_keys or None)
    # Fused kernels on an accelerator update all parameters in a few launches instead of one per tensor.
    fast = {"fused": True} if device.type != "cpu" else {}
    if opt.startswith("sgd"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov="nesterov" in opt, **fast)
    if opt == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay, eps=0.0316, alpha=0.9,
                                   **({"foreach": True} if fast else {}))
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fast)  # adamw: the parser's last choice


def build_lr_schedule(args, iters_per_epoch: int) -> utils.LRSchedule:
    return utils.LRSchedule(
        name=args.lr_scheduler, epochs=args.epochs, iters_per_epoch=iters_per_epoch,
        warmup_epochs=args.lr_warmup_epochs, warmup_method=args.lr_warmup_method,
        warmup_decay=args.lr_warmup_decay, step_size=args.lr_step_size, gamma=args.lr_gamma,
        lr_min=args.lr_min, base_lr=args.lr, power=args.lr_power,
    )


def build_ema(model: nn.Module, *, world_size: int, batch_size: int, ema_steps: int, ema_decay: float,
              epochs: int, device: torch.device):
    """EMA of the weights (and buffers). The decay is adjusted for the number of images between updates, as
    in torchvision's reference recipe: alpha = 1 - decay scaled by world_size x batch x steps / epochs."""
    adjust = world_size * batch_size * ema_steps / epochs
    alpha = min(1.0, (1.0 - ema_decay) * adjust)
    decay = 1.0 - alpha
    return torch.optim.swa_utils.AveragedModel(
        model, device=device, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


def data_config(args, device: torch.device, dist_info: utils.DistInfo, *, endless: bool = False) -> data.DataConfig:
    """The input pipeline's settings: the options of the same names, plus what the run decides."""
    same_names = {f.name: getattr(args, f.name) for f in dataclasses.fields(data.DataConfig) if hasattr(args, f.name)}
    workers = args.workers if args.workers is not None else datasets.default_workers(dist_info.local_world_size)
    sizes = options.train_sizes(args)  # with --min-res/--max-res they replace --train-crop-size
    same_names.update(weights_preprocessing(args))
    return data.DataConfig(**{**same_names, "workers": workers, "train_crop_size": sizes[0]},
                           decode_on_device=args.decode_device == "cuda", pin_memory=accelerator.pin_memory(device),
                           endless=endless, train_sizes=tuple(sorted(set(sizes))))


def weights_preprocessing(args) -> dict:
    """--test-only --weights W scores W with the preprocessing it was published with (W.transforms(): e.g. resize
    232 for ResNet50_Weights.IMAGENET1K_V2), as torchvision's reference does, instead of the --val-* sizes."""
    if not (args.test_only and args.weights):
        return {}
    try:
        preset = torchvision.models.get_weight(args.weights).transforms()
    except (ValueError, KeyError, AttributeError) as e:
        raise ConfigError(f"--weights {args.weights}: {e}") from e
    return {"val_resize_size": int(preset.resize_size[0]), "val_crop_size": int(preset.crop_size[0]),
            "interpolation": preset.interpolation.value}


# ------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------
def main(args) -> int:
    validate_args(args)
    if args.dry_run:
        print(f"dry run: {args.lr_note}; options checked, nothing started", flush=True)
        return 0
    if args.verify_data:
        return datasets.run_verify(args.data_path, args.workers)

    device = run_device(args)
    accelerator.activate(device)  # before the process group, so that NCCL binds to this process's card
    accelerator.set_tf32(args.tf32 == "on", for_autotune=accelerator.is_nvidia(device) and args.compile
                         and args.compile_mode.startswith("max-autotune"))
    timeout = dist_timeout_minutes(args)
    dist_info = utils.init_distributed(device, accelerator.dist_backend(device, args.dist_backend), args.dist_url,
                                       timeout)
    log = print if dist_info.is_main else (lambda *a, **k: None)
    tf32_note = accelerator.tf32_note(device, args.tf32 == "on")
    if tf32_note:
        log(tf32_note)
    if timeout > args.dist_timeout:
        log(f"--compile-mode {args.compile_mode}: collectives wait up to {timeout:g} minutes (--dist-timeout "
            f"{args.dist_timeout:g}) while every rank compiles")
    try:
        if args.benchmark:
            import bench  # the measurement mode, built by the same build_run as training

            return bench.run_benchmark(args, device, dist_info, log)
        return run_training(args, build_run(args, device, dist_info, log), log)
    finally:
        data.stop_workers()
        utils.cleanup_distributed(dist_info)


@dataclasses.dataclass
class Run:
    """Everything a run is made of, built once by `build_run` for training, evaluation and benchmarks."""

    device: torch.device
    dist_info: utils.DistInfo
    cfg: data.DataConfig | None
    loaders: data.Loaders | None
    model: nn.Module  # without DDP or compile: what checkpoints and evaluation use
    train_model: nn.Module  # what the training step calls (DDP and/or compiled)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    model_ema: torch.optim.swa_utils.AveragedModel | None
    steps_per_epoch: int
    batch_size: int  # per process
    channels_last: bool

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.dist_info.world_size

    def autocast(self):
        return accelerator.autocast(self.device, self.amp_dtype)

    def device_loader(self, train: bool) -> data.DeviceLoader:
        # The uint8 pipeline normalizes straight into the autocast dtype.
        return data.make_device_loader(self.loaders.train if train else self.loaders.val, self.cfg, self.device,
                                       train=train, channels_last=self.channels_last,
                                       dtype=self.amp_dtype or torch.float32)


def build_run(args, device: torch.device, dist_info: utils.DistInfo, log, *, with_data: bool = True,
              endless: bool = False) -> Run:
    """Seeds, data, model, optimizer, precision and EMA, in the order training needs them. `with_data=False`
    (the model benchmark) trains on 1000 classes without a data set; `endless` iterates the train loader once."""
    if args.seed is None:  # one random seed for all ranks, recorded in args.json and the checkpoint
        args.seed = utils.shared_random_seed(dist_info)
    setup_determinism(args.use_deterministic_algorithms, device)
    utils.seed_everything(args.seed, dist_info.rank)
    cfg = loaders = None
    num_classes = 1000
    if with_data:
        cfg = data_config(args, device, dist_info, endless=endless)
        loaders = data.build_data_loaders(cfg, rank=dist_info.rank, world_size=dist_info.world_size,
                                          need_train=not args.test_only)
        if loaders.decode_note:
            log(loaders.decode_note)
        if args.test_only and args.weights:  # data_config took the weights' preprocessing
            log(f"--weights {args.weights}: scored with its own preprocessing: resize {cfg.val_resize_size}, crop "
                f"{cfg.val_crop_size}, {cfg.interpolation}")
        num_classes = len(loaders.classes)
    model = build_model(args.model, args.weights, num_classes, channels_last=args.channels_last, device=device,
                        sync_bn_group=dist_info.device_group if args.sync_bn and dist_info.distributed else None,
                        zero_init_residual=args.zero_init_residual)
    amp_dtype, use_scaler = resolve_precision(args, device)
    optimizer = build_optimizer(model, opt=args.opt, lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, norm_weight_decay=args.norm_weight_decay,
                                bias_weight_decay=args.bias_weight_decay,
                                transformer_embedding_decay=args.transformer_embedding_decay, device=device,
                                lars_trust_coefficient=args.lars_trust_coefficient, lars_eps=args.lars_eps)
    model_ema = None
    if args.model_ema:
        model_ema = build_ema(model, world_size=dist_info.world_size, batch_size=args.batch_size,
                              ema_steps=args.model_ema_steps, ema_decay=args.model_ema_decay, epochs=args.epochs,
                              device=device)
    train_model = wrap_ddp(model, device, dist_info.device_group) if dist_info.distributed else model
    if args.compile:
        # Static shapes: one compilation per training crop size (progressive resizing has a few), each as fast
        # as a fixed-size run's, instead of a slower dynamic-shape graph after the first size change.
        train_model = torch.compile(train_model, mode=args.compile_mode, dynamic=False)
    steps = len(loaders.train) if loaders is not None and loaders.train is not None and not endless else 0
    if args.max_steps_per_epoch:
        steps = min(steps, args.max_steps_per_epoch)
    return Run(device=device, dist_info=dist_info, cfg=cfg, loaders=loaders, model=model, train_model=train_model,
               optimizer=optimizer, scaler=accelerator.grad_scaler(device, enabled=use_scaler), amp_dtype=amp_dtype,
               model_ema=model_ema, steps_per_epoch=steps, batch_size=args.batch_size,
               channels_last=args.channels_last)


def checkpoint_manager(args, run: Run, progress: ckpt_io.RunState) -> ckpt_io.CheckpointManager:
    """The run's stateful parts, under the keys the checkpoint file has always used."""
    parts = {"model": run.model, "optimizer": run.optimizer, "rng_states": ckpt_io.RngStates(run.dist_info),
             None: progress}
    if run.loaders.train_sampler is not None:
        parts["sampler"] = ckpt_io.SamplerSeed(run.loaders.train_sampler)
    if run.scaler.is_enabled():
        parts["scaler"] = run.scaler
    if run.model_ema is not None:
        parts["model_ema"] = run.model_ema
    return ckpt_io.CheckpointManager(args.output_dir or None, parts, dist_info=run.dist_info,
                                     keep=args.keep_checkpoints, extra={"args": vars(args)})


def resume_run(args, manager: ckpt_io.CheckpointManager, progress: ckpt_io.RunState, log) -> bool:
    """--resume: load the checkpoint into the run's parts (for --test-only the model, and its EMA with
    --model-ema). True if training resumed."""
    found = manager.find(args.resume, log) if args.resume else None
    if found is None:
        if args.test_only and not args.weights:  # scoring the random initialization would pass for a result
            raise ckpt_io.CheckpointError(f"--test-only --resume auto: no checkpoint in {args.output_dir or '.'} to "
                                          f"evaluate; check --output-dir, or pass --resume PATH")
        return False
    path, ckpt = found
    if args.test_only:
        if "model_ema" in manager.parts and "model_ema" not in ckpt:  # the EMA model would keep its random start
            raise ckpt_io.CheckpointError(f"--model-ema: {path} holds no EMA weights (trained without --model-ema); "
                                          f"drop --model-ema to score its model")
        manager.restore(ckpt, only=("model", "model_ema"))
        log(f"loaded {path} (epoch {ckpt.get('epoch')})")
        return False
    manager.restore(ckpt)
    sampler_seed = manager.parts["sampler"].sampler.seed
    if sampler_seed != args.seed:
        # The sample order and per-sample augmentation follow the interrupted run's seed.
        log(f"resume: continuing with the checkpoint's data seed {sampler_seed} (this run's: {args.seed})")
        args.seed = sampler_seed
    if progress.resume_note:
        log(progress.resume_note)
    log(f"resumed from {path}: epoch {progress.epoch}, step {progress.step} (global step {progress.global_step})")
    return True


def run_training(args, run: Run, log) -> int:
    dist_info, device = run.dist_info, run.device
    progress = ckpt_io.RunState(world_size=dist_info.world_size, global_batch=run.global_batch,
                                start_epoch=args.start_epoch)
    manager = checkpoint_manager(args, run, progress)
    writes = dist_info.is_main and args.output_dir and not args.test_only
    if writes:
        ckpt_io.check_output_dir(args.output_dir,
                                 ckpt_io.estimate_checkpoint_bytes(run.model, 1, run.model_ema is not None))
    resumed = resume_run(args, manager, progress, log)
    resumed_at = progress.epoch
    clock = ckpt_io.RunClock(progress, args.output_dir if writes else None)
    if resumed and writes:
        clock.count_lost_time(log)
    if writes and not resumed:
        ckpt_io.set_aside_earlier_run(args.output_dir, log)
    if writes:
        save_args(args, args.output_dir)  # after the resume, which may have taken the checkpoint's seed
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    val_loader = run.device_loader(train=False)
    if args.test_only:  # the model, and with --model-ema its EMA weights too, as the reference scores them
        scored = [("", run.model)] + ([("EMA ", run.model_ema.module)] if run.model_ema is not None else [])
        for label, net in scored:
            stats = evaluate(net, criterion, val_loader, device, autocast=run.autocast, dist_info=dist_info,
                             flip_tta=args.val_flip_tta)
            log(f"Test: {label}Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} ({stats['count']} images)")
        return 0

    mixup = transforms.get_mixup_cutmix(mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha,
                                        num_classes=len(run.loaders.classes), use_v2=args.use_v2)
    train_step = TrainStep(run.train_model, criterion, run.optimizer, schedule=build_lr_schedule(args, run.steps_per_epoch),
                           scaler=run.scaler, autocast=run.autocast, device=device, mixup=mixup,
                           model_ema=run.model_ema, ema_steps=args.model_ema_steps, warmup_epochs=args.lr_warmup_epochs,
                           clip_grad_norm=args.clip_grad_norm)
    sink = metrics.MetricsSink(args.output_dir or None, is_main=dist_info.is_main, tensorboard=args.tensorboard)
    sink.start(resume_epoch=progress.epoch if resumed else None)
    power = accelerator.PowerMonitor(device)
    power.start()
    stop = utils.StopAgreement(utils.PreemptionFlag().install(), dist_info)
    log(f"training {args.model}: {args.lr_note}, {run.steps_per_epoch} steps/epoch, "
        f"epochs {progress.epoch}..{args.epochs - 1}, seed {args.seed}")
    status = "running"  # what summary.json says if the run dies with an error
    clock.start()
    try:
        status = train_epochs(args, run, train_step, criterion, val_loader, progress, manager, sink, stop, log)
    finally:
        clock.stop()
        power_reading = power.stop()
        if resumed and power_reading[0] is not None:  # samples are not carried across processes
            power_reading = (power_reading[0], f"{power_reading[1]}; since the resume at epoch {resumed_at} only")
        if dist_info.is_main:
            sink.write_summary(build_summary(args, sink.records, progress, run, power_reading, status=status))
        sink.close()
    if status == "preempted":
        return EXIT_PREEMPTED
    check_weights_in_sync(run.model, dist_info, log)
    log(f"Training time {metrics.format_hms(progress.wall_time())}")
    return 0


def train_epochs(args, run: Run, train_step, criterion, val_loader, progress, manager, sink, stop, log) -> str:
    """Alternate training and evaluation from the run's position to the last epoch; a checkpoint after each
    epoch. Returns the run's status: finished, target_reached or preempted."""
    train_loader = run.device_loader(train=True)
    sizes = options.train_sizes(args)
    for epoch in range(progress.epoch, args.epochs):
        epoch_start = time.perf_counter()
        run.loaders.train_sampler.set_epoch(epoch)
        run.loaders.train_sampler.set_start_batch(progress.step)
        if epoch == progress.epoch or sizes[epoch] != sizes[epoch - 1]:  # progressive resizing
            run.loaders.set_train_size(sizes[epoch])
            train_loader.set_crop_size(sizes[epoch])
            if len(set(sizes)) > 1:
                log(f"Epoch {epoch}: training crops of {sizes[epoch]} px")

        def save_mid_epoch(step, epoch=epoch):
            progress.epoch, progress.step = epoch, step
            manager.save(epoch_end=False, epoch=epoch - 1, is_best=False)

        first_step = progress.step  # > 0 when resumed mid-epoch
        train_stats = train_one_epoch(
            train_step, train_loader, run.device, epoch, start_step=progress.step, num_steps=run.steps_per_epoch,
            print_freq=args.print_freq, global_batch=run.global_batch, dist_info=run.dist_info, log=log, stop=stop,
            checkpoint_interval=args.checkpoint_interval, save_mid_epoch=save_mid_epoch, run=progress)
        if train_stats["stopped"]:
            save_mid_epoch(train_stats["steps_done"])
            log(f"preempted by signal {stop.flag.signum}: checkpoint saved at epoch {epoch} step "
                f"{train_stats['steps_done']}; exiting with code {EXIT_PREEMPTED} (resume with --resume auto)")
            return "preempted"
        train_seconds = time.perf_counter() - epoch_start
        val_stats = ema_stats = None
        if (epoch + 1) % args.eval_interval == 0 or epoch == args.epochs - 1:
            val_stats, ema_stats = evaluate_model_and_ema(run.model, run.model_ema, criterion, val_loader, run.device,
                                                          autocast=run.autocast, dist_info=run.dist_info, log=log,
                                                          flip_tta=args.val_flip_tta)
        is_best = val_stats is not None and val_stats["acc1"] > progress.best_acc1
        if is_best:
            progress.best_acc1 = val_stats["acc1"]
        reached = args.target_acc is not None and val_stats is not None and val_stats["acc1"] >= args.target_acc
        if reached and progress.time_to_target_s is None:
            progress.time_to_target_s, progress.epochs_to_target = progress.wall_time(), epoch + 1
        epoch_seconds = time.perf_counter() - epoch_start
        # The ETA's unit is a whole epoch: an epoch resumed at step k trained (steps - k) steps here.
        done = max(1, run.steps_per_epoch - first_step) / max(1, run.steps_per_epoch)
        progress.epoch_times.append(train_seconds / done + epoch_seconds - train_seconds)
        peak_mem_gb = accelerator.peak_memory_gb(run.device)
        accelerator.reset_peak_memory(run.device)  # each epoch's record covers that epoch only
        record = epoch_record(epoch, sizes[epoch], train_stats, val_stats, ema_stats, peak_mem_gb, progress,
                              epoch_seconds, remaining_epochs=0 if reached else args.epochs - epoch - 1)
        progress.epoch, progress.step = epoch + 1, 0
        manager.save(epoch_end=True, epoch=epoch, is_best=is_best)
        log(sink.log_epoch(record))
        if run.dist_info.is_main:
            sink.write_summary(build_summary(args, sink.records, progress, run,
                                             (None, "measured at the end of the run"), status="running"))
        if reached:
            log(f"target Acc@1 {args.target_acc} reached at epoch {epoch} after {progress.time_to_target_s:.1f}s")
            return "target_reached"
        # A signal during evaluation or the save: the checkpoint just written is the place to resume from. Going
        # on would start the next epoch's loader and save the same state again, while the launcher's kill nears.
        if epoch + 1 < args.epochs and stop.should_stop_now():
            log(f"preempted by signal {stop.flag.signum}: checkpoint saved at the end of epoch {epoch}; exiting with "
                f"code {EXIT_PREEMPTED} (resume with --resume auto)")
            return "preempted"
    return "finished"


def evaluate_model_and_ema(model, model_ema, criterion, val_loader, device, *, autocast, dist_info, log,
                           flip_tta=False):
    """(model's validation stats, EMA model's or None), each logged as a Test: line."""
    def scored(net, label):
        stats = evaluate(net, criterion, val_loader, device, autocast=autocast, dist_info=dist_info,
                         flip_tta=flip_tta)
        log(f"Test: {label}Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f}")
        return stats

    return scored(model, ""), (scored(model_ema.module, "EMA ") if model_ema is not None else None)


def check_weights_in_sync(model: nn.Module, dist_info: utils.DistInfo, log) -> None:
    """DDP keeps the parameters identical on every rank; a checksum per rank proves it at the end of the run.
    (BatchNorm running statistics are left out: each rank updates them from its own last batch.)"""
    if not dist_info.distributed:
        return
    with torch.no_grad():
        checksum = float(sum(p.double().sum().item() for p in model.parameters()))
    sums = utils.all_gather_objects(checksum, dist_info)
    if len(set(sums)) == 1:
        log(f"weights identical on all {dist_info.world_size} ranks (checksum {checksum:.6f})")
    else:
        log(f"warning: weights differ between ranks: {sums}")


def wrap_ddp(model: nn.Module, device: torch.device, device_group) -> nn.Module:
    """DDP over the device group. No static_graph: ResNet50 has no unused parameters, so it would buy nothing,
    and together with torch.compile it is a fragile pairing."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type != "cpu" else None, process_group=device_group,
        gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: no copy in and out
    )


def setup_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels


def save_args(args, output_dir: str) -> None:
    with open(os.path.join(output_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=2, sort_keys=True)


# ------------------------------------------------------------------------------------------------------------
# One epoch of training
# ------------------------------------------------------------------------------------------------------------
class TrainStep:
    """One optimization step: forward under autocast, backward (scaled under float16), clip, step, EMA.

    The AMP order is scale, backward, unscale, clip, step, update. Health flags (a non-finite loss; float16 steps
    the scaler skipped) stay on the device and are read by `check_health`, every print_freq steps and before
    every checkpoint, so a step never waits on the GPU."""

    def __init__(self, model, criterion, optimizer, *, schedule, scaler, autocast, device, mixup=None,
                 model_ema=None, ema_steps=32, warmup_epochs=0, clip_grad_norm=None):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.schedule, self.scaler, self.autocast, self.mixup = schedule, scaler, autocast, mixup
        self.model_ema, self.ema_steps, self.warmup_epochs = model_ema, ema_steps, warmup_epochs
        self.clip_grad_norm = clip_grad_norm
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.skipped_in_a_row = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped_total = torch.zeros((), dtype=torch.int64, device=device)

    def __call__(self, images, target, epoch: int, step: int):
        """Returns (loss, output, target, lr); target is the soft one when MixUp/CutMix is on."""
        lr = self.schedule.apply(self.optimizer, epoch, step)
        if self.mixup is not None:
            images, target = self.mixup(images, target)
        with self.autocast():
            output = self.model(images)
            loss = self.criterion(output, target)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self._scaled_step(loss)
        else:
            loss.backward()
            self._clip()
            self.optimizer.step()
            self.nonfinite |= ~torch.isfinite(loss.detach())
        if self.model_ema is not None and step % self.ema_steps == 0:
            self.model_ema.update_parameters(self.model)
            if epoch < self.warmup_epochs:
                self.model_ema.n_averaged.fill_(0)  # as the reference: the EMA starts after warmup
        return loss, output, target, lr

    def _scaled_step(self, loss):
        scale_before = self.scaler._scale.clone() if self.scaler._scale is not None else None
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        self._clip()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale_before is not None:  # the scaler lowers its scale exactly when it skips a step
            skipped = (self.scaler._scale < scale_before).to(torch.int64)
            self.skipped_total += skipped
            self.skipped_in_a_row = (self.skipped_in_a_row + skipped) * skipped

    def _clip(self):
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)

    def check_health(self, epoch: int, step: int) -> None:
        if bool(self.nonfinite):
            raise NonFiniteLossError(f"the loss became NaN or Inf at epoch {epoch}, step <= {step}; the last "
                                     f"checkpoint is kept (try a lower --lr, --clip-grad-norm, or --amp-dtype bfloat16)")
        if int(self.skipped_in_a_row) > MAX_CONSECUTIVE_SKIPPED_STEPS:
            raise NonFiniteLossError(f"{int(self.skipped_in_a_row)} float16 steps in a row had inf/NaN gradients at "
                                     f"epoch {epoch}, step {step}; the last checkpoint is kept (try --amp-dtype "
                                     f"bfloat16 or a lower --lr)")

    def take_skipped_count(self) -> int:
        n = int(self.skipped_total)
        self.skipped_total.zero_()
        return n


def train_one_epoch(train_step: TrainStep, data_loader, device, epoch, *, start_step, num_steps, print_freq,
                    global_batch, dist_info, log, stop, checkpoint_interval, save_mid_epoch, run) -> dict:
    """Train from `start_step` to `num_steps` and return the epoch's measurements. Losses and accuracies add
    up on the device and are read every `print_freq` steps only, so the loop does not wait on the GPU; the
    first steps (warmup: allocator, cuDNN autotuning, compile) are left out of the images/s figure."""
    train_step.model.train()
    stop.start_epoch()
    logger = utils.StepLogger(f"Epoch: [{epoch}]", num_steps, print_freq, device, dist_info.is_main,
                              start_step=start_step)
    warmup_steps = min(10, max(0, (num_steps - start_step) // 5))
    timed_start = time.perf_counter()
    data_wait, timed_images, saving = 0.0, 0, 0.0  # saving: mid-epoch checkpoints, left out of the rates
    n_bad = torch.zeros((), dtype=torch.int64)
    stopped = False
    step = start_step
    batches = iter(data_loader)
    t_wait = time.perf_counter()
    while step < num_steps:
        if stop.should_stop(step):  # all ranks agree, and stop at the same step
            stopped = True
            break
        try:
            images, target, bad = next(batches)
        except StopIteration:
            break
        data_time = time.perf_counter() - t_wait
        if step - start_step == warmup_steps and warmup_steps:
            accelerator.synchronize(device)
            timed_start, data_wait, timed_images, saving = time.perf_counter(), 0.0, 0, 0.0
        data_wait += data_time
        n_bad += bad.sum()
        loss, output, target, lr = train_step(images, target, epoch, step)
        c1, c5 = utils.accuracy_counts(output.detach(), target, topk=(1, 5))
        logger.update(loss, c1, c5, images.shape[0], data_time)
        timed_images += images.shape[0]
        step += 1
        run.global_step += 1
        if step % print_freq == 0 or step == num_steps:
            train_step.check_health(epoch, step)
        logger.maybe_print(step - 1, lr, global_batch)
        if checkpoint_interval and step % checkpoint_interval == 0 and step < num_steps:
            train_step.check_health(epoch, step)
            save_start = time.perf_counter()
            save_mid_epoch(step)
            saving += time.perf_counter() - save_start
        t_wait = time.perf_counter()
    train_step.check_health(epoch, step)
    accelerator.synchronize(device)
    elapsed = max(1e-9, time.perf_counter() - timed_start - saving)
    # Loss and accuracy over all ranks' samples; throughput = all ranks' images over the slowest rank's time.
    sums = utils.dist_sum([timed_images, float(n_bad), logger.loss_sum.item(), logger.correct1.item(),
                           logger.correct5.item(), logger.samples], dist_info)
    slowest = utils.dist_max([elapsed], dist_info)[0]
    n = sums[5] or float("nan")
    skipped = train_step.take_skipped_count()
    if skipped:
        log(f"Epoch {epoch}: {skipped} float16 steps skipped by the gradient scaler (inf/NaN gradients)")
    return {
        "stopped": stopped, "steps_done": step, "loss": sums[2] / n, "acc1": sums[3] * 100.0 / n,
        "acc5": sums[4] * 100.0 / n, "lr": train_step.optimizer.param_groups[0]["lr"],
        "imgs_per_sec": sums[0] / slowest, "data_wait_frac": min(1.0, data_wait / elapsed),
        "bad_images": int(sums[1]),
    }


# ------------------------------------------------------------------------------------------------------------
# Evaluation: every validation image exactly once, at any world size
# ------------------------------------------------------------------------------------------------------------
def evaluate(model, criterion, data_loader, device, *, autocast, dist_info, flip_tta: bool = False) -> dict:
    """Loss and top-1/top-5 over the validation set; `flip_tta` scores the mean logits of each image and its
    mirror (FFCV's test-time augmentation)."""
    model.eval()
    sums, count = torch.zeros(3, dtype=torch.float64, device=device), 0  # loss sum, top-1 and top-5 counts
    with torch.inference_mode():
        for images, target, _ in data_loader:
            if images.shape[0] == 0:  # every image of the batch was bad (--bad-images skip, GPU decode)
                continue
            with autocast():
                output = model(images)
                if flip_tta:
                    output = (output + model(images.flip(-1))) / 2
                loss = criterion(output, target)
            c1, c5 = utils.accuracy_counts(output, target, topk=(1, 5))
            sums += torch.stack([loss.double() * images.shape[0], c1.double(), c5.double()])
            count += images.shape[0]
    total_loss, total1, total5, total = utils.dist_sum([*sums.tolist(), count], dist_info)
    n = max(1, int(total))
    return {"loss": total_loss / n, "acc1": total1 * 100.0 / n, "acc5": total5 * 100.0 / n, "count": int(total)}


# ------------------------------------------------------------------------------------------------------------
# Metrics records
# ------------------------------------------------------------------------------------------------------------
def epoch_record(epoch, train_res, train_stats, val_stats, ema_stats, peak_mem_gb, progress, epoch_seconds,
                 remaining_epochs) -> dict:
    """One line of metrics.jsonl (its fields are described in metrics.py); the ETA is the mean whole-epoch time
    of this run so far, resumes included (RunState keeps it), times the epochs left."""
    mean_epoch = sum(progress.epoch_times) / len(progress.epoch_times)
    return {
        "epoch": epoch,
        "lr": train_stats["lr"],
        "train_loss": train_stats["loss"],
        "train_acc1": train_stats["acc1"],
        "val_acc1": val_stats["acc1"] if val_stats else None,
        "val_acc5": val_stats["acc5"] if val_stats else None,
        "ema_acc1": ema_stats["acc1"] if ema_stats else None,
        "imgs_per_sec": train_stats["imgs_per_sec"],
        "data_wait_frac": train_stats["data_wait_frac"],
        "epoch_time_s": epoch_seconds,
        "peak_mem_gb": peak_mem_gb,
        "peak_host_rss_gb": metrics.peak_host_rss_gb(),
        "bad_images": train_stats["bad_images"],
        "eta_s": mean_epoch * remaining_epochs,
        "global_step": progress.global_step,
        "train_res": train_res,
    }


def build_summary(args, records, progress, run: Run, power_reading, status) -> dict:
    """summary.json's content; `power_reading` is (mean watts or None, note) from the PowerMonitor."""
    mean_power, power_note = power_reading
    env = accelerator.environment_info(run.device)
    run_info = {
        "status": status, "model": args.model, "epochs_planned": args.epochs, "wall_time_s": progress.wall_time(),
        "target_acc": args.target_acc, "time_to_target_s": progress.time_to_target_s,
        "epochs_to_target": progress.epochs_to_target, "world_size": run.dist_info.world_size,
        "nnodes": run.dist_info.nnodes, "batch_size_per_process": args.batch_size, "global_batch": run.global_batch,
        "precision": precision_name(run.amp_dtype),
        "tf32": args.tf32 == "on" if accelerator.is_nvidia(run.device) else None,
        "memory_format": "channels_last" if args.channels_last else "contiguous",
        "mean_power_w_per_card": mean_power, "power_note": power_note,
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "device": run.device.type, "device_names": env["device_names"],
        "versions": {k: env[k] for k in ("python", "torch", "torchvision", "cuda", "cudnn")},
    }
    return metrics.summarize_run(records, run_info)


# ------------------------------------------------------------------------------------------------------------
def cli(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (ConfigError, datasets.DataError, ckpt_io.CheckpointError, jpeg_roi.RoiUnavailable) as e:
        print(f"error: {last_line(e)}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE


def last_line(e: Exception) -> str:
    """DataLoader workers re-raise with the whole worker traceback in the message; the cause is its last line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return re.sub(r"^(datasets\.)?(BadImageError|DataError): ", "", lines[-1] if lines else type(e).__name__)


if __name__ == "__main__":
    # bench.py imports this module as `train`: let that name be this very module, not a second copy of it (whose
    # ConfigError would be another class than the one cli() catches).
    sys.modules.setdefault("train", sys.modules[__name__])
    sys.exit(cli())
