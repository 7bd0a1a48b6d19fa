#!/usr/bin/env python3
"""NVIDIA DALI's ImageNet training pipeline as the peer of `train.py --benchmark data|full`.

    python benchmarks/dali_peer.py --benchmark data|full --data-path DIR --output-dir OUT [--dali-threads 16]
        [any train.py option: --device, --model, --batch-size, --train-crop-size, --amp, --channels-last,
         --benchmark-steps, --benchmark-warmup, ...]

DALI's pipeline as its documentation trains ResNet-50: fn.readers.file over DIR/train (shuffled; labels in the
sorted class order ImageFolder uses), fn.decoders.image_random_crop (RandomResizedCrop's area and aspect ranges;
device "mixed" on a GPU: nvJPEG decodes each crop's region, "cpu" with --device cpu), an antialiased linear
resize to the crop size, then fn.crop_mirror_normalize (random flip, ImageNet mean/std, into the autocast dtype
under --amp, HWC so that the NCHW view is channels_last). DALI runs its own threads (--dali-threads) and
prefetches 2 batches.

Everything else is ours, as in train.py's benchmark: the model, optimizer, precision and step come from
train.build_run and train.TrainStep, and the clock is bench.time_steps. So `full` differs from ours only by the
input pipeline. The result is OUTPUT/benchmark_{mode}.json with the fields train.py's benchmark writes, plus
"pipeline": "dali". DALI is not a dependency: without it this exits with status 2 and one line saying so.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench  # noqa: E402
import presets  # noqa: E402
import train  # noqa: E402
import utils  # noqa: E402


def dali_batches(data_path, *, batch_size, crop_size, device, dtype, channels_last, threads, seed):
    """Endless (images NCHW in `dtype`, labels) on `device` from DALI's training pipeline."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    on_gpu = device.type == "cuda"
    out_type = {torch.float16: types.FLOAT16, torch.bfloat16: types.FLOAT}.get(dtype, types.FLOAT)

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=(device.index or 0) if on_gpu else None,
                  seed=seed, prefetch_queue_depth=2)
    def pipeline():
        jpegs, labels = fn.readers.file(file_root=os.path.join(data_path, "train"), random_shuffle=True,
                                        name="reader")
        images = fn.decoders.image_random_crop(jpegs, device="mixed" if on_gpu else "cpu", output_type=types.RGB,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                               num_attempts=10)
        images = fn.resize(images, resize_x=crop_size, resize_y=crop_size, interp_type=types.INTERP_LINEAR,
                           antialias=True)
        images = fn.crop_mirror_normalize(images, dtype=out_type, output_layout="HWC",
                                          mean=[255 * m for m in presets.IMAGENET_MEAN],
                                          std=[255 * s for s in presets.IMAGENET_STD],
                                          mirror=fn.random.coin_flip(probability=0.5))
        return images, labels.gpu() if on_gpu else labels

    pipe = pipeline()
    pipe.build()
    no_bad = torch.zeros(batch_size, dtype=torch.int64)
    for (out,) in DALIGenericIterator([pipe], ["images", "labels"], size=-1):  # size -1: endless
        # HWC in memory is NCHW in channels_last: with --channels-last the view costs nothing.
        images = out["images"].permute(0, 3, 1, 2).to(dtype)
        if not channels_last:
            images = images.contiguous()
        yield images, out["labels"].view(-1).long(), no_bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dali-threads", type=int, default=min(16, os.cpu_count() or 1),
                        help="DALI's CPU threads (default: the cores, at most 16)")
    ours, rest = parser.parse_known_args(argv)
    args = train.get_args_parser().parse_args(rest)
    if args.benchmark not in ("data", "full"):
        parser.error("--benchmark data or --benchmark full is required")
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        print(f"dali_peer.py: error: DALI is not installed ({e}); pip install nvidia-dali-cuda130 (or -cuda120)",
              file=sys.stderr)
        return 2
    train.validate_args(args)
    device = train.run_device(args)
    dist_info, log = utils.DistInfo(), print
    # The model side exactly as ours: the same builder and step; only the batches come from DALI.
    run = train.build_run(args, device, dist_info, log, with_data=False)
    batches = dali_batches(args.data_path, batch_size=args.batch_size, crop_size=args.train_crop_size,
                           device=device, dtype=run.amp_dtype or torch.float32, channels_last=args.channels_last, threads=ours.dali_threads,
                           seed=args.seed or 0)
    step = None
    if args.benchmark == "full":
        step = train.TrainStep(run.train_model, nn.CrossEntropyLoss(), run.optimizer,
                               schedule=train.build_lr_schedule(args, 1), scaler=run.scaler, autocast=run.autocast,
                               device=device)
        run.train_model.train()
    seconds, host_wait, images = bench.time_steps(batches, step, args.benchmark_warmup, args.benchmark_steps,
                                                  device, dist_info)
    result = {
        "benchmark": args.benchmark, "pipeline": "dali", "imgs_per_sec": images / seconds,
        "steps": args.benchmark_steps, "warmup_steps": args.benchmark_warmup, "batch_size": args.batch_size,
        "device": str(device), "model": args.model, "precision": train.precision_name(run.amp_dtype),
        "memory_format": "channels_last" if args.channels_last else "contiguous", "compile": args.compile,
        "decode_device": "cuda" if device.type == "cuda" else "cpu", "workers": ours.dali_threads,
        "crop_size": args.train_crop_size, "seconds": seconds, "host_ms_per_batch": 1000.0 * host_wait / args.benchmark_steps,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, f"benchmark_{args.benchmark}.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
