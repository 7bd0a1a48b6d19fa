"""The measurement mode (`train.py --benchmark model|data|full`): is the input pipeline or the device the
bottleneck?

    python train.py --benchmark model --batch-size 256 --amp --channels-last     # synthetic batches on the device
    python train.py --benchmark data --data-path /data/imagenet --backend fast   # the input pipeline alone
    python train.py --benchmark full --data-path /data/imagenet --backend fast --amp --channels-last

Built by `train.build_run` and timing `train.TrainStep`, as training does, so the figures cannot drift from the
trainer's. The train loader is iterated once over an endless sampler: no timed step waits on workers restarting at
an epoch boundary. The result, one JSON line on stdout and OUTPUT/benchmark_{mode}.json, gives global images/s
(all ranks' images over the slowest rank's time, the device synchronized before each clock reading) and the host
time per batch (what obtaining a batch costs the thread that launches the steps).
"""

import json
import os
import time

import torch
import torch.nn as nn

import accelerator
import train
import utils


def run_benchmark(args, device: torch.device, dist_info: utils.DistInfo, log) -> int:
    run = train.build_run(args, device, dist_info, log, with_data=args.benchmark != "model", endless=True)
    if run.loaders is not None:
        batches = iter(run.device_loader(train=True))
    else:
        batches = synthetic_batches(args.batch_size, args.train_crop_size, 1000, device, args.channels_last)
    step = None
    if args.benchmark in ("model", "full"):
        step = train.TrainStep(run.train_model, nn.CrossEntropyLoss(), run.optimizer,
                               schedule=train.build_lr_schedule(args, 1), scaler=run.scaler, autocast=run.autocast,
                               device=device, model_ema=run.model_ema, ema_steps=args.model_ema_steps)
        run.train_model.train()
    seconds, host_wait, images = time_steps(batches, step, args.benchmark_warmup, args.benchmark_steps, device,
                                            dist_info)
    total_images = utils.dist_sum([images], dist_info)[0]
    slowest, slowest_wait = utils.dist_max([seconds, host_wait], dist_info)
    uses_data = args.benchmark != "model"
    result = {
        "benchmark": args.benchmark, "imgs_per_sec": total_images / slowest, "steps": args.benchmark_steps,
        "warmup_steps": args.benchmark_warmup, "batch_size": args.batch_size, "world_size": dist_info.world_size,
        "device": accelerator.device_name(device) if device.type != "cpu" else "cpu",
        "model": args.model, "precision": train.precision_name(run.amp_dtype),
        "tf32": args.tf32 == "on" if accelerator.is_nvidia(device) else None,
        "memory_format": "channels_last" if args.channels_last else "contiguous", "compile": args.compile,
        "backend": args.backend if uses_data else None,
        "decode_device": args.decode_device if uses_data else None,
        "roi_decode": run.loaders.roi_decode if uses_data else None,
        "crop_size": args.train_crop_size, "workers": run.cfg.workers if uses_data else None,
        "seconds": slowest, "host_ms_per_batch": 1000.0 * slowest_wait / args.benchmark_steps,
    }
    if dist_info.is_main:
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, f"benchmark_{args.benchmark}.json"), "w") as f:
                json.dump(result, f, indent=2)
        print(json.dumps(result), flush=True)
    return 0


def time_steps(batches, step, warmup: int, steps: int, device, dist_info) -> tuple[float, float, int]:
    """(seconds, seconds spent obtaining batches, images) over `steps` timed steps after `warmup` untimed ones.
    With `step` None only batches are drawn (the data benchmark)."""
    images, host_wait, start = 0, 0.0, time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            accelerator.synchronize(device)
            utils.barrier(dist_info)
            start = time.perf_counter()
        fetch_start = time.perf_counter()
        batch, target, _ = next(batches)
        if i >= warmup:
            host_wait += time.perf_counter() - fetch_start
            images += batch.shape[0]
        if step is not None:
            step(batch, target, 0, 0)
    accelerator.synchronize(device)
    return time.perf_counter() - start, host_wait, images


def synthetic_batches(batch_size, crop, num_classes, device, channels_last):
    """One batch already on the device, served again and again: no input cost at all."""
    images = torch.randn(batch_size, 3, crop, crop, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, num_classes, (batch_size,), device=device)
    n_bad = torch.zeros(batch_size, dtype=torch.int64)
    while True:
        yield images, target, n_bad
