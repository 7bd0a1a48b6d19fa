"""Images per second of the reference torchvision input pipeline, ours and DALI's CPU pipeline, per CPU core.

    python benchmarks/data_pipeline.py [--num-images 256] [--rounds 6] [--data DIR] [--json OUT] [--profile]

Reference: PIL open + convert("RGB"), RandomResizedCrop(224, antialias), RandomHorizontalFlip,
PILToTensor, ConvertImageDtype(float), Normalize -- what torchvision's classification
reference scripts run in their data-loader workers.
Ours: transforms.FastTrainTransform (uint8 out) plus transforms.normalize_batch, the step
that runs on the accelerator in training, charged here to the same CPU core.
DALI CPU (when nvidia-dali-cuda130 or -cuda120 is installed; it is not a dependency): an
external_source over the same file bytes, fn.decoders.image_random_crop with the same area
and aspect ratio ranges (its CPU decoder decodes only the crop's region too),
fn.resize to 224x224 (linear, antialiased), and fn.crop_mirror_normalize for the random
flip and the uint8 HWC -> CHW layout; one DALI thread. Its uint8 batch then gets the same
normalize_batch step as ours, so both sides deliver the same thing: a normalized float
batch. DALI draws its crops from its own generator: same distribution, not the same crops.

All sides get the same file bytes (read once, so disk speed does not enter); the reference
and ours also get the same crops (both draw from torch's RNG identically and each batch
reseeds it) and the same per-batch collation (torch.stack, as the DataLoader does). The
sides take turns batch by batch so that changes in machine load hit all of them, on one
core: the process (and DALI's threads, started inside) is pinned to a single CPU for the
alternating rounds. Each round's ratio is total time over total time, and the median over
rounds is reported with the rounds' range, for CPU time (the per-core cost) and wall time.
The decode alone, as our pipeline does it (only the crop's region with --roi-decode, see
jpeg_roi.py; the whole image otherwise), is timed the same way: it is the floor of our
per-image cost, so its ratio to the reference bounds what our pipeline can reach with that
decoder. With the region decoder in use, our pipeline decoding whole images is timed as
well, to show what region decoding alone buys. --profile runs ours once more under cProfile
and prints where its time goes. A last measurement runs the reference and ours through a
real DataLoader with --workers processes (not pinned).

Without --data, ImageNet-like JPEGs are generated into a temporary folder by the project's
generator (scripts/make_demo_data.py --kind photo): 500x375 and 375x500 windows of
scikit-image's sample photographs when scikit-image is installed (it is not a dependency),
1/f noise otherwise, quality 75-95, with 3% grayscale and 1% CMYK files so that the rarer
decode paths are timed too.
"""

import argparse
import importlib
import io
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time

import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _transforms():
    """The repository's transforms module (main() puts the repository root on the path)."""
    import transforms

    return transforms


# ImageNet statistics, as in presets.IMAGENET_MEAN/STD; spelled out because the reference side is built from
# torchvision alone, independent of the project's modules.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Generated files: more grayscale and CMYK than ImageNet holds, so that those decode paths weigh in.
GRAY_FRACTION = 0.03
CMYK_FRACTION = 0.01


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _generator():
    """scripts/make_demo_data.py, imported by name (scripts/ is not a package) so that its spawned
    workers can import it as well."""
    scripts = os.path.join(REPO, "scripts")
    if scripts not in sys.path:
        sys.path.append(scripts)
    import make_demo_data

    return make_demo_data


def generate_images(folder, num_images, seed=0):
    """Write ``num_images`` ImageNet-like JPEGs under ``folder`` (the project's photo generator);
    returns their paths in a seeded order."""
    per_class = (num_images + 1) // 2
    root = _generator().make_photo_dataset(os.path.join(folder, "photos"), classes=2, train_per_class=per_class,
                                           val_per_class=1, seed=seed, gray_fraction=GRAY_FRACTION,
                                           cmyk_fraction=CMYK_FRACTION)
    return list_images(os.path.join(root, "train"), num_images, seed)


def list_images(data_dir, num_images, seed=0):
    """Up to ``num_images`` image files under ``data_dir`` (an ImageFolder), a seeded sample."""
    paths = []
    for root, _, names in os.walk(data_dir):
        paths.extend(os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise SystemExit(f"data_pipeline.py: --data {data_dir} holds no image files (.jpg, .jpeg, .png, ...)")
    paths.sort()
    random.Random(seed).shuffle(paths)
    return paths[:num_images]


def read_all(paths):
    result = []
    for path in paths:
        with open(path, "rb") as f:
            result.append(f.read())
    return result


# ---------------------------------------------------------------------------------------
# The pipelines
# ---------------------------------------------------------------------------------------


def build_reference(crop_size):
    """The torchvision reference training transform, on a PIL image."""
    import torchvision.transforms as T

    return T.Compose([
        T.RandomResizedCrop(crop_size, antialias=True),
        T.RandomHorizontalFlip(),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float),
        T.Normalize(MEAN, STD),
    ])


class ReferenceSample:
    """bytes -> normalised float tensor, loading as torchvision's default loader does."""

    def __init__(self, crop_size):
        self.transform = build_reference(crop_size)

    def __call__(self, data, path):
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB"))


def finish_reference(batch):
    return batch


class DecodeOnly:
    """Just the decode our pipeline starts with, for the same crop: the region of interest
    when that decoder is in use, the image at reduced DCT scale when the crop is large
    enough (see transforms.DCT_REDUCING_GAP), the whole image otherwise. It is the floor of
    our per-image cost, so its ratio to the reference bounds what our pipeline can reach
    with that decoder."""

    def __init__(self, crop_size, roi_library):
        self.crop_size, self.roi_library = crop_size, roi_library

    def __call__(self, data, path):
        transforms = _transforms()
        height, width, image = transforms._open_for_crop(data, path)
        top, left, h, w = transforms.sample_crop_params(height, width)
        if image is None:
            scale = transforms._dct_scale(min(h, w), self.crop_size)
            if scale == 1 and self.roi_library is not None:
                region = transforms.roi_decode_crop(data, (top, left, h, w))
                if region is not None:
                    return torch.from_numpy(region[0, 0].copy())  # a token result, so that batches still stack
            reduced = transforms._load_reduced_jpeg(data, scale)
            if reduced is not None:
                return torch.tensor(reduced[0].getpixel((0, 0)), dtype=torch.uint8)
            image = transforms._full_jpeg(data, path, height, width)
        return image[:, 0, 0].contiguous()


def finish_fast(batch):
    """The device-side step of our pipeline, run on the CPU here."""
    return _transforms().normalize_batch(batch, MEAN, STD)


class PerSample:
    """A pipeline run sample by sample, as in DataLoader workers: ``sample_fn(bytes, path)`` on each file, the
    samples stacked into a batch, then ``finish_fn(batch)``."""

    def __init__(self, sample_fn, finish_fn):
        self.sample_fn, self.finish_fn = sample_fn, finish_fn

    def __call__(self, blobs, paths):
        return self.finish_fn(torch.stack([self.sample_fn(blob, path) for blob, path in zip(blobs, paths)]))


def dali_unavailable():
    """Why DALI cannot be measured here (one line), or None."""
    try:
        importlib.import_module("nvidia.dali")
    except ImportError as e:
        return (f"DALI is not installed ({e}); pip install nvidia-dali-cuda130 (or -cuda120) to add its CPU "
                "pipeline to the comparison")
    return None


class DaliCpu:
    """DALI's CPU training pipeline on one thread, fed the batch's file bytes: decode only a random crop's
    region (fn.decoders.image_random_crop, RandomResizedCrop's area and aspect ranges), resize it to
    crop_size (linear, antialiased), flip it at random and lay it out CHW in uint8 (fn.crop_mirror_normalize);
    then the same device-side step as ours (normalize_batch)."""

    def __init__(self, crop_size, batch_size, seed):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None, seed=seed, prefetch_queue_depth=1,
                      exec_async=False, exec_pipelined=False)
        def pipeline():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
            images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                                   random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                                   num_attempts=10)
            images = fn.resize(images, resize_x=crop_size, resize_y=crop_size, interp_type=types.INTERP_LINEAR,
                               antialias=True)
            return fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW",
                                            mirror=fn.random.coin_flip(probability=0.5))

        self.pipeline = pipeline()
        self.pipeline.build()

    def __call__(self, blobs, paths):
        import numpy as np

        (images,) = self.pipeline.run(jpegs=[np.frombuffer(blob, dtype=np.uint8) for blob in blobs])
        return finish_fast(torch.from_numpy(images.as_array()))


def run_batch(side, blobs, paths, seed):
    """(wall seconds, CPU seconds of this process) for ``side`` to turn ``blobs`` into one finished batch.

    CPU time is the per-core cost itself and moves less than wall time when other
    processes share the machine, which is why both are reported.
    """
    torch.manual_seed(seed)
    wall, cpu = time.perf_counter(), time.process_time()
    side(blobs, paths)
    return time.perf_counter() - wall, time.process_time() - cpu


def run_round(sides, blobs, paths, batch_size, seed, flip_order):
    """Every blob through each side, batch by batch, the sides taking turns on each batch
    (so a burst of load from elsewhere hits all of them); all get the same seed, so the
    same crops where they draw from torch's RNG. Returns {side: (wall seconds, CPU seconds)}."""
    totals = {name: [0.0, 0.0] for name in sides}
    for k, first in enumerate(range(0, len(blobs), batch_size)):
        chunk = slice(first, first + batch_size)
        names = list(sides) if (k % 2 == 0) != flip_order else list(reversed(sides))
        for name in names:
            wall, cpu = run_batch(sides[name], blobs[chunk], paths[chunk], seed + k)
            totals[name][0] += wall
            totals[name][1] += cpu
    return {name: tuple(value) for name, value in totals.items()}


class one_core:
    """Pins this process (and the threads it starts meanwhile) to one CPU, the first it may use, and
    restores its affinity on exit. A no-op where the OS has no affinity call."""

    def __enter__(self):
        self.saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        if self.saved:
            os.sched_setaffinity(0, {min(self.saved)})
        return self

    def __exit__(self, *exc):
        if self.saved:
            os.sched_setaffinity(0, self.saved)


def profile_side(side, blobs, paths, batch_size, top=12):
    """cProfile of ``side`` over every blob once, in CPU time (time other processes take from this core
    does not count): the functions that take the most time of their own, as lines of text."""
    import cProfile
    import pstats

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for k, first in enumerate(range(0, len(blobs), batch_size)):
        torch.manual_seed(k)
        side(blobs[first : first + batch_size], paths[first : first + batch_size])
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(row[2] for row in stats.values())
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    lines = [f"cProfile of ours, {len(blobs)} images, {total * 1000 / len(blobs):.2f} CPU ms per image (with the "
             "profiler's overhead), by time spent in the function itself:"]
    for (filename, line, name), (_, calls, own, cumulative, _) in rows:
        where = name if filename == "~" else f"{os.path.basename(filename)}:{line}({name})"
        lines.append(f"  {100 * own / total:5.1f}%  {own * 1e6 / len(blobs):7.1f} us/image  {calls:7d} calls  {where}")
    return lines


def _cpu_seconds_with_children():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class BytesDataset(torch.utils.data.Dataset):
    """Reads each file and applies ``sample_fn(bytes, path)``, as the training dataset does;
    ``length`` samples cycle over the files."""

    def __init__(self, paths, sample_fn, seed, length):
        self.paths, self.sample_fn, self.seed, self.length = paths, sample_fn, seed, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        torch.manual_seed(self.seed + index)  # same crops for both sides, in any worker
        path = self.paths[index % len(self.paths)]
        with open(path, "rb") as f:
            return self.sample_fn(f.read(), path)


def run_loader(side, paths, batch_size, workers, seed, length):
    """(images per wall second, images per CPU second) of a PerSample side through a DataLoader.

    Wall time runs from the first batch on, so worker start-up is not counted; CPU time
    adds this process and the workers (counted once they have exited, which they have when
    the loader is exhausted). ``finish_fn`` runs here, in the main process, where the
    device step would be issued; on a CPU-only machine it takes CPU from the workers.
    """
    loader = torch.utils.data.DataLoader(BytesDataset(paths, side.sample_fn, seed, length), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    cpu = _cpu_seconds_with_children()
    count, start, total = 0, None, 0
    iterator = iter(loader)
    for batch in iterator:
        side.finish_fn(batch)
        total += batch.shape[0]
        if start is None:
            start = time.perf_counter()
            continue
        count += batch.shape[0]
    elapsed = time.perf_counter() - start if start is not None else 0.0
    del iterator  # shuts the workers down, so that their CPU time is counted
    cpu = _cpu_seconds_with_children() - cpu
    return (count / elapsed if elapsed > 0 else float("nan")), (total / cpu if cpu > 0 else float("nan"))


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=256, help="images per round (default 256)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of each pipeline (default 6)")
    parser.add_argument("--batch-size", type=int, default=32, help="collation batch size (default 32)")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers; 0 skips that part")
    parser.add_argument("--loader-images", type=int, default=1024,
                        help="samples per DataLoader run, cycling over the files (default 1024)")
    parser.add_argument("--data", help="an ImageFolder to take images from instead of generating them")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--roi-decode", default="auto", choices=["auto", "on", "off"],
                        help="region-of-interest JPEG decode in our pipeline, as train.py's option (default auto)")
    parser.add_argument("--no-dali", action="store_true", help="leave DALI out even when it is installed")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile summary of our pipeline")
    args = parser.parse_args(argv)
    if args.num_images < args.batch_size or args.rounds < 1:
        parser.error("--num-images must be at least --batch-size, and --rounds at least 1")
    return args


def _median(values):
    return round(statistics.median(values), 2)


def _summary(values, digits=2):
    """{"median", "min", "max"} of per-round values."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def _pipelines(args, roi_library):
    """The per-sample pipelines timed side by side (DALI's is built later, on the one core)."""
    transforms = _transforms()
    sides = {"reference": PerSample(ReferenceSample(args.crop_size), finish_reference),
             "fast": PerSample(transforms.FastTrainTransform(crop_size=args.crop_size, roi_library=roi_library),
                               finish_fast),
             "decode_only": PerSample(DecodeOnly(args.crop_size, roi_library), finish_reference)}
    if roi_library is not None:
        # The same pipeline decoding whole images: what region-of-interest decoding alone buys.
        sides["fast_whole_decode"] = PerSample(transforms.FastTrainTransform(crop_size=args.crop_size), finish_fast)
    return sides


def _timed_rounds(args, sides, blobs, paths):
    """Alternating rounds: per pipeline its images per wall and per CPU second, and the per-round ratios."""
    wall_rates, cpu_rates = {name: [] for name in sides}, {name: [] for name in sides}
    ratios = {"cpu": [], "wall": [], "cpu_vs_dali": [], "wall_vs_dali": []}
    # Warm-up (allocator, lazy imports, DALI's buffers), not timed.
    run_round(sides, blobs[: args.batch_size], paths[: args.batch_size], args.batch_size, args.seed, False)
    for r in range(args.rounds):
        times = run_round(sides, blobs, paths, args.batch_size, args.seed + 1000 * r, flip_order=r % 2 == 1)
        for name, (wall, cpu) in times.items():
            wall_rates[name].append(len(blobs) / wall)
            cpu_rates[name].append(len(blobs) / cpu)
        ratios["wall"].append(times["reference"][0] / times["fast"][0])
        ratios["cpu"].append(times["reference"][1] / times["fast"][1])
        if "dali" in times:
            ratios["wall_vs_dali"].append(times["dali"][0] / times["fast"][0])
            ratios["cpu_vs_dali"].append(times["dali"][1] / times["fast"][1])
    return wall_rates, cpu_rates, ratios


def _loader_result(args, sides, paths):
    """Ours and the reference through a DataLoader with --workers workers, the better of two runs each."""
    loader_sides = {name: sides[name] for name in ("reference", "fast")}
    loader_wall, loader_cpu = {name: [] for name in loader_sides}, {name: [] for name in loader_sides}
    for r in range(2):
        order = list(loader_sides) if r % 2 == 0 else list(reversed(loader_sides))
        for name in order:
            wall_rate, cpu_rate = run_loader(loader_sides[name], paths, args.batch_size, args.workers, args.seed,
                                             args.loader_images)
            loader_wall[name].append(wall_rate)
            loader_cpu[name].append(cpu_rate)
    result = {"loader_workers": args.workers, "loader_images": args.loader_images}
    for name in loader_sides:
        result[f"loader_{name}_img_per_wall_s"] = round(max(loader_wall[name]), 1)
        result[f"loader_{name}_img_per_cpu_s"] = round(max(loader_cpu[name]), 1)
    result["loader_ratio_wall"] = round(result["loader_fast_img_per_wall_s"]
                                        / result["loader_reference_img_per_wall_s"], 2)
    result["loader_ratio_cpu"] = round(result["loader_fast_img_per_cpu_s"]
                                       / result["loader_reference_img_per_cpu_s"], 2)
    return result


def measure(args, paths):
    blobs = read_all(paths)
    import jpeg_roi

    roi_library, roi_message = jpeg_roi.prepare(args.roi_decode)
    print(roi_message)
    sides = _pipelines(args, roi_library)
    dali_skipped = "--no-dali" if args.no_dali else dali_unavailable()
    print(f"DALI CPU: skipped: {dali_skipped}" if dali_skipped else "DALI CPU: measured alongside (1 thread)")
    with one_core():
        if not dali_skipped:
            sides["dali"] = DaliCpu(args.crop_size, args.batch_size, args.seed)
        wall_rates, cpu_rates, ratios = _timed_rounds(args, sides, blobs, paths)
        profile = profile_side(sides["fast"], blobs, paths, args.batch_size) if args.profile else None
    result = {
        "num_images": len(blobs),
        "mean_file_kb": round(sum(map(len, blobs)) / len(blobs) / 1024, 1),
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "reference_img_per_cpu_s": _median(cpu_rates["reference"]),
        "fast_img_per_cpu_s": _median(cpu_rates["fast"]),
        "ratio_cpu": _median(ratios["cpu"]),
        "ratio_cpu_per_round": [round(x, 2) for x in ratios["cpu"]],
        "reference_img_per_wall_s": _median(wall_rates["reference"]),
        "fast_img_per_wall_s": _median(wall_rates["fast"]),
        "ratio_wall": _median(ratios["wall"]),
        "ratio_wall_per_round": [round(x, 2) for x in ratios["wall"]],
        "img_per_cpu_s_rounds": {name: _summary(values, 1) for name, values in cpu_rates.items()},
        "roi_decode": roi_library is not None,
        "decode_note": roi_message,
        "decode_only_img_per_cpu_s": _median(cpu_rates["decode_only"]),
        "ratio_bound_cpu": round(_median(cpu_rates["decode_only"]) / _median(cpu_rates["reference"]), 2),
        "dali": dali_skipped is None,
    }
    if dali_skipped is None:
        result["dali_img_per_cpu_s"] = _median(cpu_rates["dali"])
        result["dali_img_per_wall_s"] = _median(wall_rates["dali"])
        result["ratio_cpu_vs_dali"] = _median(ratios["cpu_vs_dali"])
        result["ratio_cpu_vs_dali_per_round"] = [round(x, 2) for x in ratios["cpu_vs_dali"]]
        result["ratio_wall_vs_dali"] = _median(ratios["wall_vs_dali"])
    else:
        result["dali_skipped"] = dali_skipped
    if "fast_whole_decode" in sides:
        result["fast_whole_decode_img_per_cpu_s"] = _median(cpu_rates["fast_whole_decode"])
        result["ratio_cpu_whole_decode"] = round(result["fast_whole_decode_img_per_cpu_s"]
                                                 / result["reference_img_per_cpu_s"], 2)
    if profile is not None:
        result["profile"] = profile
    if args.workers > 0:
        result.update(_loader_result(args, sides, paths))
    return result


def report(result):
    """The result as the lines a person reads: the three-way table per core, then the details."""
    rounds = result["img_per_cpu_s_rounds"]

    def row(label, name, ratio):
        r = rounds[name]
        return f"{label:<44} {r['median']:8.1f}   {r['min']:7.1f}-{r['max']:<7.1f}  {ratio}"

    per_round = lambda key: f"rounds {min(result[key]):.2f}-{max(result[key]):.2f}"  # noqa: E731
    lines = [f"{result['num_images']} images, {result['mean_file_kb']} KB mean, {result['rounds']} alternating rounds, "
             f"1 thread, one core; images per CPU second (median, rounds' range):",
             f"{'pipeline':<44} {'img/s':>8}   {'range':<15}  ratio",
             row("reference (torchvision preset, PIL)", "reference", "1.00x"),
             row("ours (FastTrainTransform + normalize)", "fast",
                 f"{result['ratio_cpu']:.2f}x the reference ({per_round('ratio_cpu_per_round')})")]
    if result["dali"]:
        lines.append(row("DALI CPU (image_random_crop, 1 thread)", "dali",
                         f"{result['dali_img_per_cpu_s'] / result['reference_img_per_cpu_s']:.2f}x the reference; "
                         f"ours {result['ratio_cpu_vs_dali']:.2f}x DALI ({per_round('ratio_cpu_vs_dali_per_round')})"))
    else:
        lines.append(f"{'DALI CPU':<44} skipped: {result['dali_skipped']}")
    if "fast_whole_decode_img_per_cpu_s" in result:
        lines.append(row("ours, decoding whole images", "fast_whole_decode",
                         f"{result['ratio_cpu_whole_decode']:.2f}x the reference"))
    what = "crop-region" if result["roi_decode"] else "full-size"
    lines.append(row(f"{what} JPEG decode alone", "decode_only",
                     f"{result['ratio_bound_cpu']:.2f}x the reference: the bound for ours with this decoder"))
    lines.append(f"wall clock: ours {result['ratio_wall']:.2f}x the reference ({per_round('ratio_wall_per_round')})"
                 + (f", {result['ratio_wall_vs_dali']:.2f}x DALI" if result["dali"] else ""))
    if "loader_ratio_wall" in result:
        lines.append(f"DataLoader, {result['loader_workers']} workers, {result['loader_images']} samples: "
                     f"reference {result['loader_reference_img_per_wall_s']:.1f} img/s, "
                     f"ours {result['loader_fast_img_per_wall_s']:.1f} img/s, ratio {result['loader_ratio_wall']:.2f}x "
                     f"wall; {result['loader_ratio_cpu']:.2f}x per CPU second (workers + main process)")
    lines.extend(result.get("profile", []))
    return lines


def main(argv=None):
    args = parse_args(argv)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            paths = list_images(args.data, args.num_images, args.seed)
        else:
            paths = generate_images(tmp, args.num_images, args.seed)
        result = measure(args, paths)
    result["torch"], result["cpu_threads"] = torch.__version__, torch.get_num_threads()
    print("\n".join(report(result)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
