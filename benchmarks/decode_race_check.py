#!/usr/bin/env python3
"""Does GPU JPEG decoding hand a training batch pixels that are not its own? A check of the stream race of
pytorch/vision#9606 through the project's real input path (data.DeviceLoader + device_decode.DeviceDecoder).

    python benchmarks/decode_race_check.py --data DIR [--json OUT] [--device auto|cuda|cpu]
        [--batch-size 128] [--batches 12] [--crop-size 224] [--workers 4] [--delay-ms 100]

DIR is an ImageFolder, e.g. made by `python scripts/make_demo_data.py DIR --kind photo`.

The race. torchvision's decode_jpeg(device="cuda") allocated its outputs from the caching allocator on the
caller's stream, then nvJPEG wrote them from a private stream that did not wait for the caller's. The allocator
hands a block out again as soon as it is freed on its stream, since any later use on that stream is ordered
after the kernels already queued there; nvJPEG's writes were not. DeviceDecoder decodes with nvImageCodec, which
is given the decode thread's stream and allocates its outputs itself; whether nvJPEG's hardware path honours
that stream is what this check finds out. In DeviceLoader the caller's stream is the decode thread's: a batch's
decoded images are freed as soon as the resize kernels that read them are queued, and the next batch's decode may
reuse their memory. If those resizes have not run yet, they read the next batch's pixels. The project's guard:
DeviceDecoder waits for the stream before each batched decode.

How this check provokes it. After every batched decode it queues a GPU sleep (torch.cuda._sleep, --delay-ms)
on the decode thread's stream, ahead of the resize kernels that read the decoded images. Those kernels are then
still waiting when the host frees the images and the next batch's decode may reuse their memory: the window the
race needs, held open on purpose. Unguarded, batches can come back with other images' pixels; guarded, the
decode waits and every batch is right.

Every decoded batch is compared with the same items decoded by DeviceDecoder on the CPU (nvImageCodec's
libjpeg-turbo backend, same crop and flip parameters), converted back to pixel levels. nvJPEG and libjpeg differ
by IDCT rounding and chroma upsampling only, so an image counts as corrupted when its mean absolute difference
exceeds --max-mean-diff levels or fewer than --min-within of its values are within --tolerance levels; an image
with another image's pixels differs by tens of levels.

A control then runs the same loop with a decoder that decodes without DeviceDecoder's wait: when it shows
corrupted batches, the race is live on this machine and the check above is known to be able to see it.

Without CUDA (or with --device cpu) the same loader and comparison run with the CPU as the device (no streams,
so no race); the JSON marks the race part skipped, with the reason.

Exit status: 0 no batch corrupted, 1 some batch corrupted, 2 bad input.
"""

import argparse
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import data  # noqa: E402
import datasets  # noqa: E402
import device_decode  # noqa: E402
import presets  # noqa: E402

EXIT_CORRUPTED = 1
EXIT_BAD_INPUT = 2


# ---------------------------------------------------------------------------------------
# The decoders under test
# ---------------------------------------------------------------------------------------


class DelayedDecoder(device_decode.DeviceDecoder):
    """The project's DeviceDecoder, with a GPU sleep queued on the current stream right after each batched
    decode, so that the resize kernels reading the decoded images run that much later. Counts batched decodes
    and the images decoded again on the CPU (declined or all zero: outside the race)."""

    def __init__(self, *, sleep_cycles=0, **kwargs):
        super().__init__(**kwargs)
        self.sleep_cycles = sleep_cycles
        self.batched_calls = 0
        self.fallback_images = 0

    def _decode_batch(self, streams):
        self.batched_calls += 1
        images = self._batched_decode(streams)
        if self.sleep_cycles:
            torch.cuda._sleep(self.sleep_cycles)
        return images

    def _batched_decode(self, streams):
        return super()._decode_batch(streams)

    def _decode_on_cpu(self, item):
        self.fallback_images += 1
        return super()._decode_on_cpu(item)


class UnguardedDecoder(DelayedDecoder):
    """The control: the batched decode without the wait DeviceDecoder._decode_batch does first."""

    def _batched_decode(self, streams):
        try:
            stream = torch.cuda.current_stream().cuda_stream
            return self._decoder.decode(streams, params=self._params, cuda_stream=stream)
        except RuntimeError:
            return [None] * len(streams)


def sleep_cycles_for(ms, device):
    """GPU clock cycles for which torch.cuda._sleep spins about ``ms`` milliseconds on ``device``."""
    probe = 10_000_000
    with torch.cuda.device(device):
        torch.cuda._sleep(probe // 10)  # the first launch loads the kernel; not timed
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(probe)
        end.record()
        end.synchronize()
        elapsed_ms = start.elapsed_time(end)
    return int(probe / max(elapsed_ms, 1e-3) * ms)


# ---------------------------------------------------------------------------------------
# The loop and the comparison
# ---------------------------------------------------------------------------------------


class RecordingLoader:
    """What DeviceLoader iterates: the project's training DataLoader for ``batches`` batches (epoch after
    epoch), keeping each batch's items so that their decode can be redone on the CPU."""

    def __init__(self, loader, sampler, batches):
        self.loader, self.sampler, self.batches = loader, sampler, batches
        self.items = []

    def __len__(self):
        return self.batches

    def __iter__(self):
        self.items = []
        epoch = 0
        while len(self.items) < self.batches:
            self.sampler.set_epoch(epoch)
            before = len(self.items)
            for batch in self.loader:
                self.items.append(batch[0])
                yield batch
                if len(self.items) == self.batches:
                    return
            if len(self.items) == before:
                raise datasets.DataError("the training loader yielded no batch")
            epoch += 1


def pixel_levels(images):
    """DeviceLoader's normalized float batch back to 0-255 pixel levels: uint8 NCHW on the CPU."""
    mean = torch.tensor(presets.IMAGENET_MEAN, dtype=torch.float32).view(1, -1, 1, 1) * 255
    std = torch.tensor(presets.IMAGENET_STD, dtype=torch.float32).view(1, -1, 1, 1) * 255
    images = images.float().cpu()  # waits for this batch's work on the device, not for the next batch's
    return (images * std + mean).round_().clamp_(0, 255).to(torch.uint8)


def compare_batch(decoded, reference, *, max_mean_diff=2.0, tolerance=8, min_within=0.9):
    """Per image of a batch (uint8 NCHW, same shape): the mean absolute difference in levels and the share of
    values within ``tolerance`` levels. Returns the indices of the images beyond the limits (corrupted), the
    largest mean difference and the smallest share."""
    if decoded.shape != reference.shape:
        raise ValueError(f"decoded batch {tuple(decoded.shape)} and reference {tuple(reference.shape)} differ in shape")
    diff = (decoded.to(torch.int16) - reference.to(torch.int16)).abs().flatten(1)
    mean = diff.float().mean(dim=1)
    within = (diff <= tolerance).float().mean(dim=1)
    corrupted = ((mean > max_mean_diff) | (within < min_within)).nonzero().flatten().tolist()
    return {"corrupted_images": corrupted, "max_mean_abs_diff": round(mean.max().item(), 3),
            "min_within_fraction": round(within.min().item(), 4), "mean_abs_diffs": mean.tolist()}


def run_and_compare(cfg, device, decoder, batches, limits):
    """Decode ``batches`` batches through the real DeviceLoader with ``decoder``, then compare each with the
    CPU decode of the same items. Returns the figures for the JSON."""
    loaders = data.build_data_loaders(cfg, rank=0, world_size=1)
    recorder = RecordingLoader(loaders.train, loaders.train_sampler, batches)
    loader = data.DeviceLoader(recorder, device, channels_last=False, bad_images="error", decoder=decoder)
    start = time.perf_counter()
    # Only the copy back is done per batch: the host must stay ahead of the side stream for the window to open.
    levels = [pixel_levels(images) for images, _, _ in loader]
    seconds = time.perf_counter() - start
    del loader, loaders
    data.stop_workers()

    reference_decoder = device_decode.DeviceDecoder(crop_size=cfg.train_crop_size, device="cpu")
    per_batch = []
    for index, (got, items) in enumerate(zip(levels, recorder.items)):
        reference, undecodable = reference_decoder(items)
        figures = compare_batch(got, reference, **limits)
        figures["batch"], figures["undecodable_on_cpu"] = index, undecodable
        per_batch.append(figures)
    corrupted = [f for f in per_batch if f["corrupted_images"]]
    # The typical image's difference: decoder rounding when it is small, a systematic decoder difference (not a
    # race) when every image sits just above the limit.
    median = torch.tensor([d for f in per_batch for d in f.pop("mean_abs_diffs")]).median().item()
    return {
        "batches": len(per_batch),
        "images": sum(len(items) for items in recorder.items),
        "corrupted": len(corrupted),
        "corrupted_images": sum(len(f["corrupted_images"]) for f in corrupted),
        "corrupted_batches": [f["batch"] for f in corrupted],
        "max_mean_abs_diff": max(f["max_mean_abs_diff"] for f in per_batch),
        "median_mean_abs_diff": round(median, 3),
        "min_within_fraction": min(f["min_within_fraction"] for f in per_batch),
        "batched_decodes": decoder.batched_calls,
        "fallback_images": decoder.fallback_images,
        "decode_loop_s": round(seconds, 3),
    }


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="ImageFolder with train/ and val/ (scripts/make_demo_data.py --kind photo)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="auto: CUDA when available, else the CPU (the comparison only)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=12, help="decoded batches compared (default 12)")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=100.0,
                        help="GPU sleep queued after each batched decode, ahead of its crops (default 100)")
    parser.add_argument("--max-mean-diff", type=float, default=2.0,
                        help="largest mean |difference| in levels of a correct image (default 2)")
    parser.add_argument("--tolerance", type=int, default=8, help="levels a value may differ by (default 8)")
    parser.add_argument("--min-within", type=float, default=0.9,
                        help="smallest share of values within --tolerance of a correct image (default 0.9)")
    parser.add_argument("--no-control", action="store_true", help="skip the control run without the guard")
    args = parser.parse_args(argv)
    if args.batches < 2 or args.batch_size < 1:
        parser.error("--batches must be at least 2 (the race needs a next batch) and --batch-size at least 1")
    if args.delay_ms < 0 or args.workers < 0:
        parser.error("--delay-ms and --workers must be >= 0")
    return args


def resolve_device(choice):
    """(device, why the GPU race part is skipped or None)."""
    if choice == "cpu":
        return torch.device("cpu"), ("--device cpu: the comparison ran with the CPU as the device; the stream race "
                                     "needs CUDA")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device()), None
    if choice == "cuda":
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device("cpu"), ("no CUDA device available (torch.cuda.is_available() is False): the comparison ran "
                                 "with the CPU as the device; the stream race needs a GPU")


def _control_verdict(control):
    if control["corrupted"]:
        return "reproduced", (f"without the wait, {control['corrupted']} of {control['batches']} batches came back "
                              "with other pixels: the race is live here, and the check can see it")
    return "not_reproduced", ("the unguarded decode corrupted no batch either: no race on this machine, or "
                              "--delay-ms too short to hold the window open; the check proves less")


def main(argv=None):
    args = parse_args(argv)
    try:
        device, skip_reason = resolve_device(args.device)
    except ValueError as e:
        print(f"decode_race_check.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not os.path.isdir(args.data):
        print(f"decode_race_check.py: error: --data {args.data}: no such folder; make one with "
              f"python scripts/make_demo_data.py {args.data} --kind photo", file=sys.stderr)
        return EXIT_BAD_INPUT
    import torchvision

    cfg = data.DataConfig(data_path=args.data, backend="fast", decode_on_device=True, batch_size=args.batch_size,
                          workers=args.workers, train_crop_size=args.crop_size, seed=args.seed)
    limits = {"max_mean_diff": args.max_mean_diff, "tolerance": args.tolerance, "min_within": args.min_within}
    on_gpu = device.type == "cuda"
    if on_gpu and not hasattr(torch.cuda, "_sleep"):
        skip_reason = "this torch has no torch.cuda._sleep to hold the race window open; compared without a delay"
    cycles = sleep_cycles_for(args.delay_ms, device) if on_gpu and skip_reason is None else 0
    result = {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "data": os.path.abspath(args.data), "batch_size": args.batch_size, "crop_size": args.crop_size,
        "workers": args.workers, "delay_ms": args.delay_ms if cycles else 0, "limits": limits,
    }

    def decoder(kind):
        return kind(crop_size=args.crop_size, device=device, sleep_cycles=cycles)

    try:
        result.update(run_and_compare(cfg, device, decoder(DelayedDecoder), args.batches, limits))
        control = None
        if cycles and not args.no_control:
            control = run_and_compare(cfg, device, decoder(UnguardedDecoder), args.batches, limits)
    except (datasets.DataError, ValueError) as e:
        print(f"decode_race_check.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        data.stop_workers()

    result["status"] = "failed" if result["corrupted"] else "ok"
    if skip_reason is not None:
        result["race"] = {"status": "skipped", "reason": skip_reason}
    elif result["corrupted"]:
        result["race"] = {"status": "failed", "reason": f"{result['corrupted']} of {result['batches']} batches hold "
                                                        "pixels of other images: the decode does not wait"}
    else:
        result["race"] = {"status": "ok", "reason": None}
    if on_gpu and result["fallback_images"]:
        note = (f"{result['fallback_images']} of {result['images']} images were decoded again on the CPU (nvJPEG "
                "declined them or returned them all zero): those images were outside the race")
        result["race"]["reason"] = "; ".join(filter(None, (result["race"]["reason"], note)))
    if control is not None:
        status, reason = _control_verdict(control)
        result["control"] = {"status": status, "reason": reason, **control}
    else:
        result["control"] = {"status": "skipped",
                             "reason": "--no-control" if cycles else (skip_reason or "no GPU sleep")}

    print(f"{result['status']}: {result['batches']} batches of {args.batch_size} on {result['device']}, "
          f"{result['corrupted']} corrupted, "
          f"max mean |diff| {result['max_mean_abs_diff']} levels, min share within {args.tolerance} levels "
          f"{result['min_within_fraction']}")
    print(f"race: {result['race']['status']}" + (f" ({result['race']['reason']})" if result["race"]["reason"] else ""))
    print(f"control: {result['control']['status']} ({result['control']['reason']})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return EXIT_CORRUPTED if result["corrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
