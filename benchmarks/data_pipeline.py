"""Images per second of the reference torchvision input pipeline versus ours, per CPU core.

    python benchmarks/data_pipeline.py [--num-images 256] [--rounds 6] [--data DIR] [--json OUT]

Reference: PIL open + convert("RGB"), RandomResizedCrop(224, antialias), RandomHorizontalFlip,
PILToTensor, ConvertImageDtype(float), Normalize -- what torchvision's classification
reference scripts run in their data-loader workers.
Ours: transforms.FastTrainTransform (uint8 out) plus transforms.normalize_batch, the step
that runs on the accelerator in training, charged here to the same CPU core.

Both sides get the same file bytes (read once, so disk speed does not enter), the same
crops (both draw from torch's RNG identically and each batch reseeds it), and the same
per-batch collation (torch.stack, as the DataLoader does). The two sides take turns batch
by batch so that changes in machine load hit both; each round's ratio is total time over
total time, and the median over rounds is reported, for CPU time (the per-core cost) and
wall time. The decode alone, as our pipeline does it (only the crop's region with
--roi-decode, see jpeg_roi.py; the whole image otherwise), is timed the same way: it is
the floor of our per-image cost, so its ratio to the reference bounds what our pipeline
can reach with that decoder. With the region decoder in use, our pipeline decoding whole
images is timed as well, to show what region decoding alone buys. A second measurement
runs both pipelines through a real DataLoader with --workers processes.

Without --data, ImageNet-like JPEGs are generated into a temporary folder by the project's
generator (scripts/make_demo_data.py --kind photo): 500x375 and 375x500 windows of
scikit-image's sample photographs when scikit-image is installed (it is not a dependency),
1/f noise otherwise, quality 75-95, with 3% grayscale and 1% CMYK files so that the rarer
decode paths are timed too.
"""

import argparse
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
# The two pipelines
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
    when that decoder is in use (at the same DCT scale), the whole image otherwise. It is
    the floor of our per-image cost, so its ratio to the reference bounds what our
    pipeline can reach with that decoder."""

    def __init__(self, crop_size, roi_library):
        self.crop_size, self.roi_library = crop_size, roi_library

    def __call__(self, data, path):
        transforms = _transforms()
        height, width, image = transforms._open_for_crop(data, path)
        box = transforms.sample_crop_params(height, width)
        if image is None and self.roi_library is not None and transforms._dct_scale(min(box[2:]), self.crop_size) == 1:
            region = transforms.roi_decode_crop(data, box)
            if region is not None:
                return torch.from_numpy(region[0, 0].copy())  # a token result, so that batches still stack
        if image is None:
            image = transforms._full_jpeg(data, path, height, width)
        return image[:, 0, 0]


def finish_fast(batch):
    """The device-side step of our pipeline, run on the CPU here."""
    return _transforms().normalize_batch(batch, MEAN, STD)


def run_batch(sample_fn, finish_fn, blobs, paths, seed):
    """(wall seconds, CPU seconds of this process) to turn ``blobs`` into one finished batch.

    CPU time is the per-core cost itself and moves less than wall time when other
    processes share the machine, which is why both are reported.
    """
    torch.manual_seed(seed)
    wall, cpu = time.perf_counter(), time.process_time()
    finish_fn(torch.stack([sample_fn(blob, path) for blob, path in zip(blobs, paths)]))
    return time.perf_counter() - wall, time.process_time() - cpu


def run_round(sides, blobs, paths, batch_size, seed, flip_order):
    """Every blob through each side, batch by batch, the sides taking turns on each batch
    (so a burst of load from elsewhere hits both); both get the same seed, so the same
    crops. Returns {side: (wall seconds, CPU seconds)}."""
    totals = {name: [0.0, 0.0] for name in sides}
    for k, first in enumerate(range(0, len(blobs), batch_size)):
        chunk = slice(first, first + batch_size)
        names = list(sides) if (k % 2 == 0) != flip_order else list(reversed(sides))
        for name in names:
            wall, cpu = run_batch(*sides[name], blobs[chunk], paths[chunk], seed + k)
            totals[name][0] += wall
            totals[name][1] += cpu
    return {name: tuple(value) for name, value in totals.items()}


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


def run_loader(sample_fn, finish_fn, paths, batch_size, workers, seed, length):
    """(images per wall second, images per CPU second) through a DataLoader.

    Wall time runs from the first batch on, so worker start-up is not counted; CPU time
    adds this process and the workers (counted once they have exited, which they have when
    the loader is exhausted). ``finish_fn`` runs here, in the main process, where the
    device step would be issued; on a CPU-only machine it takes CPU from the workers.
    """
    loader = torch.utils.data.DataLoader(BytesDataset(paths, sample_fn, seed, length), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    cpu = _cpu_seconds_with_children()
    count, start, total = 0, None, 0
    iterator = iter(loader)
    for batch in iterator:
        finish_fn(batch)
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
    args = parser.parse_args(argv)
    if args.num_images < args.batch_size or args.rounds < 1:
        parser.error("--num-images must be at least --batch-size, and --rounds at least 1")
    return args


def measure(args, paths):
    blobs = read_all(paths)
    reference = ReferenceSample(args.crop_size)
    import jpeg_roi

    roi_library, roi_message = jpeg_roi.prepare(args.roi_decode)
    print(roi_message)
    fast = _transforms().FastTrainTransform(crop_size=args.crop_size, roi_library=roi_library)
    sides = {"reference": (reference, finish_reference), "fast": (fast, finish_fast),
             "decode_only": (DecodeOnly(args.crop_size, roi_library), finish_reference)}
    if roi_library is not None:
        # The same pipeline decoding whole images: what region-of-interest decoding alone buys.
        sides["fast_whole_decode"] = (_transforms().FastTrainTransform(crop_size=args.crop_size), finish_fast)
    # Warm-up (allocator, lazy imports), not timed.
    run_round(sides, blobs[: args.batch_size], paths[: args.batch_size], args.batch_size, args.seed, False)
    wall_rates, cpu_rates = {name: [] for name in sides}, {name: [] for name in sides}
    wall_ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        times = run_round(sides, blobs, paths, args.batch_size, args.seed + 1000 * r, flip_order=r % 2 == 1)
        for name, (wall, cpu) in times.items():
            wall_rates[name].append(len(blobs) / wall)
            cpu_rates[name].append(len(blobs) / cpu)
        wall_ratios.append(times["reference"][0] / times["fast"][0])
        cpu_ratios.append(times["reference"][1] / times["fast"][1])
    med = lambda values: round(statistics.median(values), 2)  # noqa: E731
    result = {
        "num_images": len(blobs),
        "mean_file_kb": round(sum(map(len, blobs)) / len(blobs) / 1024, 1),
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "reference_img_per_cpu_s": med(cpu_rates["reference"]),
        "fast_img_per_cpu_s": med(cpu_rates["fast"]),
        "ratio_cpu": med(cpu_ratios),
        "ratio_cpu_per_round": [round(x, 2) for x in cpu_ratios],
        "reference_img_per_wall_s": med(wall_rates["reference"]),
        "fast_img_per_wall_s": med(wall_rates["fast"]),
        "ratio_wall": med(wall_ratios),
        "ratio_wall_per_round": [round(x, 2) for x in wall_ratios],
        "roi_decode": roi_library is not None,
        "decode_only_img_per_cpu_s": med(cpu_rates["decode_only"]),
        "ratio_bound_cpu": round(med(cpu_rates["decode_only"]) / med(cpu_rates["reference"]), 2),
    }
    if "fast_whole_decode" in sides:
        result["fast_whole_decode_img_per_cpu_s"] = med(cpu_rates["fast_whole_decode"])
        result["ratio_cpu_whole_decode"] = round(result["fast_whole_decode_img_per_cpu_s"]
                                                 / result["reference_img_per_cpu_s"], 2)
    if args.workers > 0:
        sides.pop("decode_only")
        sides.pop("fast_whole_decode", None)
        loader_wall, loader_cpu = {name: [] for name in sides}, {name: [] for name in sides}
        for r in range(2):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                wall_rate, cpu_rate = run_loader(*sides[name], paths, args.batch_size, args.workers, args.seed,
                                                 args.loader_images)
                loader_wall[name].append(wall_rate)
                loader_cpu[name].append(cpu_rate)
        result["loader_workers"] = args.workers
        result["loader_images"] = args.loader_images
        for name in sides:
            result[f"loader_{name}_img_per_wall_s"] = round(max(loader_wall[name]), 1)
            result[f"loader_{name}_img_per_cpu_s"] = round(max(loader_cpu[name]), 1)
        result["loader_ratio_wall"] = round(result["loader_fast_img_per_wall_s"]
                                            / result["loader_reference_img_per_wall_s"], 2)
        result["loader_ratio_cpu"] = round(result["loader_fast_img_per_cpu_s"]
                                           / result["loader_reference_img_per_cpu_s"], 2)
    return result


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
    print(f"{result['num_images']} images, {result['mean_file_kb']} KB mean, {result['rounds']} alternating rounds, "
          "1 thread")
    print(f"reference (torchvision, PIL): {result['reference_img_per_cpu_s']:8.1f} img per CPU second, "
          f"{result['reference_img_per_wall_s']:8.1f} img/s wall")
    print(f"fast (uint8 + normalize):     {result['fast_img_per_cpu_s']:8.1f} img per CPU second, "
          f"{result['fast_img_per_wall_s']:8.1f} img/s wall")
    print(f"ratio per core (CPU time): {result['ratio_cpu']:.2f}x (rounds: {result['ratio_cpu_per_round']})")
    print(f"ratio wall clock:          {result['ratio_wall']:.2f}x (rounds: {result['ratio_wall_per_round']})")
    if "fast_whole_decode_img_per_cpu_s" in result:
        print(f"fast, decoding whole images:  {result['fast_whole_decode_img_per_cpu_s']:8.1f} img per CPU second, "
              f"{result['ratio_cpu_whole_decode']:.2f}x the reference")
    what = "crop-region" if result["roi_decode"] else "full-size"
    print(f"{what} JPEG decode alone: {result['decode_only_img_per_cpu_s']:.1f} img per CPU second, "
          f"{result['ratio_bound_cpu']:.2f}x the reference: the bound for our pipeline with this decoder")
    if "loader_ratio_wall" in result:
        print(f"DataLoader, {result['loader_workers']} workers, {result['loader_images']} samples: "
              f"reference {result['loader_reference_img_per_wall_s']:.1f} img/s, "
              f"fast {result['loader_fast_img_per_wall_s']:.1f} img/s, ratio {result['loader_ratio_wall']:.2f}x wall; "
              f"{result['loader_ratio_cpu']:.2f}x per CPU second (workers + main process)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
