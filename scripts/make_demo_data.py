#!/usr/bin/env python3
"""Generate a synthetic ImageFolder data set of real JPEGs: learnable shapes, or ImageNet-like photographs.

    python3 scripts/make_demo_data.py OUT [--kind shapes|photo] [--classes 10] [--train-per-class 40]
        [--val-per-class 10] [--size 64] [--seed 0] [--workers N]

writes OUT/train/<class>/*.JPEG and OUT/val/<class>/*.JPEG, the layout train.py expects
for ImageNet.

--kind shapes (the default; the demo's data): each class is a procedurally drawn shape or
pattern (circle, square, stripes, checkerboard, ...) with random colours, position, scale and
background noise, --size pixels square, so a network has something real to learn in a few CPU
minutes, while the files go through the same JPEG decoding path as ImageNet.

--kind photo (what the benchmarks measure): ImageNet-like files, 500x375 or 375x500 (--size
sets the long side, default 500), JPEG quality 75-95, about 1% grayscale. The content is
windows of scikit-image's sample photographs when scikit-image is installed, 1/f noise (the
spectrum of natural images, so file sizes and decode costs are realistic) otherwise; the
marker records which. Classes carry no signal: this kind is for throughput, not accuracy.
Images are written by --workers processes (default: all cores).

Every image is drawn from its own random stream keyed by (seed, split, class, index), so
the output is identical for a seed whatever the order of generation or the number of
workers. The set is written to OUT.partial, a marker recording the settings is written
last, and the folder is renamed to OUT when finished, so an interrupted run never leaves a
half-written OUT; a complete OUT with the same settings is left alone, and an OUT made with
other settings is refused rather than used or deleted.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import multiprocessing
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

# Bumped whenever the drawing changes, so an old OUT is not mistaken for the current one.
GENERATOR_VERSION = 1
PHOTO_VERSION = 1
MARKER_NAME = ".demo_complete.json"
SPLITS = ("train", "val")
KINDS = ("shapes", "photo")
MIN_SIZE = 16
# Photo kind: the long side (ImageNet's typical 500), the short one 3/4 of it; JPEG qualities as found in ImageNet.
PHOTO_SIZE = 500
PHOTO_MIN_SIZE = 32
PHOTO_QUALITY = (75, 95)
PHOTO_GRAY_FRACTION = 0.01
MAX_PHOTO_CLASSES = 1000
# scikit-image's colour sample photographs (some need a download; those missing are skipped).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "stereo_motorcycle")
# Shapes are drawn this many times larger, then box-filtered down, to get smooth edges.
SUPERSAMPLE = 4

Mask = np.ndarray  # float32 HxW in [0, 1]: 1 is foreground colour, 0 is background


def _shape_layout(rng: np.random.Generator, size: int) -> tuple[float, float, float]:
    """Random centre and radius for a single object, kept fully inside the image.

    The object covers 45-85% of the side, large enough to survive the random crops of
    training, small enough that position varies.
    """
    radius = rng.uniform(0.45, 0.85) * size / 2
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    return cx, cy, radius


def _draw_supersampled(size: int, draw: Callable[[ImageDraw.ImageDraw, float], None]) -> Mask:
    """Run `draw(canvas, scale)` on a large greyscale canvas and return the reduced mask."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw(ImageDraw.Draw(big), SUPERSAMPLE)
    small = big.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _regular_polygon(cx: float, cy: float, radius: float, sides: int, angle: float, scale: float) -> list:
    """Vertices of a regular polygon, in canvas coordinates multiplied by `scale`."""
    thetas = angle + 2 * np.pi * np.arange(sides) / sides
    return [(float((cx + radius * np.cos(t)) * scale), float((cy + radius * np.sin(t)) * scale)) for t in thetas]


def _circle(rng: np.random.Generator, size: int) -> Mask:
    cx, cy, r = _shape_layout(rng, size)
    return _draw_supersampled(size, lambda d, s: d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255))


def _square(rng: np.random.Generator, size: int) -> Mask:
    # Axis-aligned: a rotated square would look like the diamond class.
    cx, cy, r = _shape_layout(rng, size)
    half = r * 0.8
    return _draw_supersampled(size, lambda d, s: d.rectangle([(cx - half) * s, (cy - half) * s, (cx + half) * s, (cy + half) * s], fill=255))


def _triangle(rng: np.random.Generator, size: int) -> Mask:
    cx, cy, r = _shape_layout(rng, size)
    angle = rng.uniform(0, 2 * np.pi)
    return _draw_supersampled(size, lambda d, s: d.polygon(_regular_polygon(cx, cy, r, 3, angle, s), fill=255))


def _diamond(rng: np.random.Generator, size: int) -> Mask:
    cx, cy, r = _shape_layout(rng, size)
    return _draw_supersampled(size, lambda d, s: d.polygon(_regular_polygon(cx, cy, r, 4, 0.0, s), fill=255))


def _cross(rng: np.random.Generator, size: int) -> Mask:
    cx, cy, r = _shape_layout(rng, size)
    arm = r * rng.uniform(0.2, 0.35)

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        d.rectangle([(cx - r) * s, (cy - arm) * s, (cx + r) * s, (cy + arm) * s], fill=255)
        d.rectangle([(cx - arm) * s, (cy - r) * s, (cx + arm) * s, (cy + r) * s], fill=255)

    return _draw_supersampled(size, draw)


def _ring(rng: np.random.Generator, size: int) -> Mask:
    cx, cy, r = _shape_layout(rng, size)
    width = r * rng.uniform(0.2, 0.35)

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
        inner = r - width
        d.ellipse([(cx - inner) * s, (cy - inner) * s, (cx + inner) * s, (cy + inner) * s], fill=0)

    return _draw_supersampled(size, draw)


def _period(rng: np.random.Generator, size: int) -> float:
    """Random pattern period in pixels: at least 4 px so JPEG keeps it, at most a third of the image."""
    return rng.uniform(max(4.0, size / 10), max(5.0, size / 3))


def _stripes(rng: np.random.Generator, size: int, direction: tuple[float, float]) -> Mask:
    """Stripes across `direction` (dy, dx weights of the coordinate that varies)."""
    period = _period(rng, size)
    phase = rng.uniform(0, period)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    coord = direction[0] * ys + direction[1] * xs + phase
    return ((coord % period) < period / 2).astype(np.float32)


def _hstripes(rng: np.random.Generator, size: int) -> Mask:
    return _stripes(rng, size, (1.0, 0.0))


def _vstripes(rng: np.random.Generator, size: int) -> Mask:
    return _stripes(rng, size, (0.0, 1.0))


def _diagonal(rng: np.random.Generator, size: int) -> Mask:
    # Either diagonal: a horizontal flip (a standard augmentation) turns one into the other.
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _stripes(rng, size, (np.sqrt(0.5), sign * np.sqrt(0.5)))


def _checker(rng: np.random.Generator, size: int) -> Mask:
    cell = _period(rng, size) / 2 + 1
    oy, ox = rng.uniform(0, 2 * cell, size=2)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return (((ys + oy) // cell + (xs + ox) // cell) % 2).astype(np.float32)


def _dots(rng: np.random.Generator, size: int) -> Mask:
    spacing = _period(rng, size) + 2
    radius = spacing * rng.uniform(0.2, 0.3)
    oy, ox = rng.uniform(0, spacing, size=2)
    centres = np.arange(-spacing, size + spacing, spacing)

    def draw(d: ImageDraw.ImageDraw, s: float) -> None:
        for y in centres + oy:
            for x in centres + ox:
                d.ellipse([(x - radius) * s, (y - radius) * s, (x + radius) * s, (y + radius) * s], fill=255)

    return _draw_supersampled(size, draw)


def _gradient(rng: np.random.Generator, size: int) -> Mask:
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    coord = np.cos(angle) * (xs - size / 2) + np.sin(angle) * (ys - size / 2)
    return (coord - coord.min()) / max(float(np.ptp(coord)), 1e-6)


# Class name -> mask generator. Order matters: --classes N takes the first N, and the first
# ten are the most distinct from each other.
PATTERNS: dict[str, Callable[[np.random.Generator, int], Mask]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "hstripes": _hstripes,
    "vstripes": _vstripes,
    "checker": _checker,
    "cross": _cross,
    "ring": _ring,
    "dots": _dots,
    "gradient": _gradient,
    "diamond": _diamond,
    "diagonal": _diagonal,
}


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random foreground and background RGB colours far enough apart to see the pattern."""
    fg = rng.integers(0, 256, size=3).astype(np.float32)
    while True:
        bg = rng.integers(0, 256, size=3).astype(np.float32)
        if np.abs(fg - bg).sum() >= 180:
            return fg, bg


def render_image(class_index: int, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one RGB image of class `class_index` (an index into PATTERNS)."""
    name = list(PATTERNS)[class_index]
    fg, bg = _colours(rng)
    mask = PATTERNS[name](rng, size)[..., None]
    pixels = mask * fg + (1.0 - mask) * bg
    # Noise on every pixel so that no class is recognisable from flat regions alone.
    pixels = pixels + rng.normal(0.0, rng.uniform(4.0, 20.0), size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------------------
# Photo kind: ImageNet-like files for throughput measurements
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _sample_photos() -> tuple:
    """scikit-image's colour sample photographs as RGB arrays; () when scikit-image is not installed.
    Loaded on first use, once per process (each pool worker loads its own)."""
    try:
        import skimage.data
    except ImportError:
        return ()
    photos = []
    for name in SKIMAGE_PHOTOS:
        try:
            array = getattr(skimage.data, name)()
        except Exception:  # some sample images need an optional download; skip those
            continue
        if isinstance(array, tuple):  # stereo pairs
            array = array[0]
        if array.ndim == 3 and array.shape[2] == 3:
            photos.append(np.ascontiguousarray(array[..., :3], dtype=np.uint8))
    return tuple(photos)


def photo_content() -> str:
    """What the photo kind is made of on this machine: 'photos' (scikit-image's) or 'noise'."""
    return "photos" if _sample_photos() else "noise"


def _photo_window(photo: np.ndarray, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A random width x height window of `photo` after a random enlargement, so that files see
    different detail levels, like photographs of varied resolution."""
    image = Image.fromarray(photo)
    zoom = max(width / image.width, height / image.height) * rng.uniform(1.0, 1.6)
    scaled = image.resize((max(width, round(image.width * zoom)), max(height, round(image.height * zoom))),
                          Image.Resampling.BICUBIC)
    x = int(rng.integers(0, scaled.width - width + 1))
    y = int(rng.integers(0, scaled.height - height + 1))
    return scaled.crop((x, y, x + width, y + height))


def _noise_picture(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """1/f^alpha noise (alpha 1.0-1.4, as measured on natural images): a luminance field plus
    weaker chroma fields, so JPEG file sizes and decode costs are those of photographs."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    f2 = fx**2 + fy**2
    f2[0, 0] = 1.0
    amplitude = f2 ** np.float32(-rng.uniform(1.0, 1.4) / 2)
    amplitude[0, 0] = 0.0  # no DC term: brightness is set below
    spectrum = np.empty((3,) + amplitude.shape, dtype=np.complex64)
    spectrum.real = rng.standard_normal(spectrum.shape, dtype=np.float32)
    spectrum.imag = rng.standard_normal(spectrum.shape, dtype=np.float32)
    spectrum *= amplitude
    fields = np.fft.irfft2(spectrum, s=(height, width), axes=(1, 2))
    fields /= fields.std(axis=(1, 2), keepdims=True)
    y, cb, cr = fields[0], fields[1], fields[2]
    chroma = np.float32(rng.uniform(0.1, 0.4))
    rgb = np.stack([y + 1.402 * chroma * cr, y - 0.344 * chroma * cb - 0.714 * chroma * cr, y + 1.772 * chroma * cb],
                   axis=-1)
    rgb *= np.float32(rng.uniform(30.0, 60.0))
    rgb += rng.uniform(80.0, 170.0, size=3).astype(np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def render_photo(size: int, rng: np.random.Generator, gray_fraction: float = 0.0,
                 cmyk_fraction: float = 0.0) -> Image.Image:
    """One ImageNet-like picture: landscape (3 in 4) or portrait, long side `size`; converted to
    grayscale or CMYK with the given probabilities (ImageNet holds a few of each)."""
    long_side, short_side = size, round(size * 3 / 4)
    width, height = (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)
    photos = _sample_photos()
    if photos:
        image = _photo_window(photos[int(rng.integers(len(photos)))], width, height, rng)
    else:
        image = _noise_picture(width, height, rng)
    mode = rng.random()
    if mode < gray_fraction:
        return image.convert("L")
    if mode < gray_fraction + cmyk_fraction:
        return image.convert("CMYK")
    return image


def _write_photo(task: tuple) -> None:
    """Render and save one photo-kind file. A top-level function, so pool workers started by
    spawn or forkserver (fresh interpreters) can import it."""
    path, key, size, gray_fraction, cmyk_fraction = task
    rng = np.random.default_rng(key)
    image = render_photo(size, rng, gray_fraction, cmyk_fraction)
    image.save(path, format="JPEG", quality=int(rng.integers(PHOTO_QUALITY[0], PHOTO_QUALITY[1] + 1)))


def _workers_can_import_this_module() -> bool:
    """Spawned workers find `_write_photo` by importing its module by name: true for the script
    run as __main__, and for a module imported by name from a folder on sys.path; false for one
    loaded from its file path under another name (then the files are written in this process)."""
    name = _write_photo.__module__
    if name == "__main__":
        return True
    module = sys.modules.get(name)
    if module is None or getattr(module, "_write_photo", None) is not _write_photo:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and os.path.samefile(spec.origin, module.__file__)


def _usable_cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_tasks(tasks: list, workers: int) -> None:
    workers = min(workers, len(tasks))
    if workers <= 1 or not _workers_can_import_this_module():
        for task in tasks:
            _write_photo(task)
        return
    # spawn on every platform: the same path as macOS, Windows and Python 3.14's forkserver default, and no
    # inherited state (threads, locks) from the caller.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_photo, tasks, chunksize=max(1, len(tasks) // (workers * 8))):
            pass


# ---------------------------------------------------------------------------------------
# Settings, completeness and the atomic build shared by both kinds
# ---------------------------------------------------------------------------------------


def _settings(classes: int, train_per_class: int, val_per_class: int, size: int, seed: int) -> dict:
    """What a finished shapes set records about itself, to recognise it later."""
    return {
        "generator_version": GENERATOR_VERSION,
        "classes": classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
    }


def _photo_settings(classes: int, train_per_class: int, val_per_class: int, size: int, seed: int,
                    gray_fraction: float, cmyk_fraction: float) -> dict:
    """What a finished photo set records about itself, including what its content is made of."""
    return {
        "kind": "photo",
        "generator_version": PHOTO_VERSION,
        "content": photo_content(),
        "classes": classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
        "gray_fraction": gray_fraction,
        "cmyk_fraction": cmyk_fraction,
    }


def class_names(settings: dict) -> list[str]:
    """The class folders of a set with these settings."""
    if settings.get("kind") == "photo":
        return [f"class{i:03d}" for i in range(settings["classes"])]
    return list(PATTERNS)[: settings["classes"]]


def _validate(classes: int, train_per_class: int, val_per_class: int, size: int) -> None:
    if not 2 <= classes <= len(PATTERNS):
        raise ValueError(f"make_demo_data: --classes must be 2..{len(PATTERNS)}, got {classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(
            f"make_demo_data: --train-per-class and --val-per-class must be >= 1, got {train_per_class} and {val_per_class}"
        )
    if size < MIN_SIZE:
        raise ValueError(f"make_demo_data: --size must be >= {MIN_SIZE} pixels, got {size}")


def _validate_photo(classes: int, train_per_class: int, val_per_class: int, size: int, gray_fraction: float,
                    cmyk_fraction: float) -> None:
    if not 2 <= classes <= MAX_PHOTO_CLASSES:
        raise ValueError(f"make_demo_data: --classes must be 2..{MAX_PHOTO_CLASSES} for --kind photo, got {classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"make_demo_data: --train-per-class and --val-per-class must be >= 1, got {train_per_class} "
                         f"and {val_per_class}")
    if size < PHOTO_MIN_SIZE:
        raise ValueError(f"make_demo_data: --size (the long side) must be >= {PHOTO_MIN_SIZE} pixels for --kind photo, "
                         f"got {size}")
    if not (0.0 <= gray_fraction and 0.0 <= cmyk_fraction and gray_fraction + cmyk_fraction <= 1.0):
        raise ValueError(f"make_demo_data: the grayscale and CMYK fractions must be >= 0 and sum to at most 1, got "
                         f"{gray_fraction} and {cmyk_fraction}")


def is_complete(out_dir: str | os.PathLike, settings: dict) -> bool:
    """True when `out_dir` is a finished set made with exactly `settings`."""
    out = Path(out_dir)
    try:
        recorded = json.loads((out / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if recorded != settings:
        return False
    for split in SPLITS:
        expected = settings[f"{split}_per_class"]
        for name in class_names(settings):
            if len(list((out / split / name).glob("*.JPEG"))) != expected:
                return False
    return True


def _build(out_dir: str | os.PathLike, settings: dict, write: Callable[[Path], None]) -> Path:
    """Run `write(folder)` into OUT.partial, record the settings last, rename to OUT; or return a complete
    OUT with these settings untouched. FileExistsError when OUT exists but is not that (we never delete a
    folder we did not just make)."""
    out = Path(out_dir)
    if out.exists():
        if is_complete(out, settings):
            return out
        raise FileExistsError(
            f"make_demo_data: {out} exists but is not a complete demo set with these settings; "
            "delete it or choose another OUT"
        )
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        # Left by an interrupted run of ours: the name is reserved for this purpose.
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write(partial)
    # The marker goes last: its presence means every image before it was written.
    (partial / MARKER_NAME).write_text(json.dumps(settings, indent=2) + "\n")
    partial.rename(out)
    return out


def _write_split(root: Path, split: str, per_class: int, classes: int, size: int, seed: int) -> None:
    split_id = SPLITS.index(split)
    for class_index, name in enumerate(list(PATTERNS)[:classes]):
        class_dir = root / split / name
        class_dir.mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, split_id, class_index, i])
            image = render_image(class_index, size, rng)
            image.save(class_dir / f"{name}_{i:05d}.JPEG", format="JPEG", quality=90)


def make_demo_dataset(
    out_dir: str | os.PathLike,
    classes: int = 10,
    train_per_class: int = 40,
    val_per_class: int = 10,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Create the shapes ImageFolder at `out_dir` unless it is already there; return its path.

    Raises ValueError for bad settings, and FileExistsError when `out_dir` exists but is not
    a complete demo set with these settings.
    """
    _validate(classes, train_per_class, val_per_class, size)
    settings = _settings(classes, train_per_class, val_per_class, size, seed)

    def write(root: Path) -> None:
        for split in SPLITS:
            _write_split(root, split, settings[f"{split}_per_class"], classes, size, seed)

    return _build(out_dir, settings, write)


def make_photo_dataset(
    out_dir: str | os.PathLike,
    classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 10,
    size: int = PHOTO_SIZE,
    seed: int = 0,
    workers: int | None = None,
    gray_fraction: float = PHOTO_GRAY_FRACTION,
    cmyk_fraction: float = 0.0,
) -> Path:
    """Create the ImageNet-like photo ImageFolder at `out_dir` unless it is already there; return its path.

    `workers` processes write the files (default: all cores; the files do not depend on it).
    Raises as make_demo_dataset does.
    """
    _validate_photo(classes, train_per_class, val_per_class, size, gray_fraction, cmyk_fraction)
    settings = _photo_settings(classes, train_per_class, val_per_class, size, seed, gray_fraction, cmyk_fraction)

    def write(root: Path) -> None:
        tasks = []
        for split_id, split in enumerate(SPLITS):
            for class_index, name in enumerate(class_names(settings)):
                class_dir = root / split / name
                class_dir.mkdir(parents=True)
                tasks.extend((str(class_dir / f"{name}_{i:05d}.JPEG"), [seed, split_id, class_index, i], size,
                              gray_fraction, cmyk_fraction) for i in range(settings[f"{split}_per_class"]))
        _run_tasks(tasks, workers if workers is not None else _usable_cores())

    return _build(out_dir, settings, write)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder (gets train/ and val/)")
    parser.add_argument("--kind", default="shapes", choices=KINDS,
                        help="shapes: learnable drawn patterns (the demo); photo: ImageNet-like files (benchmarks)")
    parser.add_argument("--classes", type=int, default=10,
                        help=f"number of classes, 2..{len(PATTERNS)} (photo: up to {MAX_PHOTO_CLASSES})")
    parser.add_argument("--train-per-class", type=int, default=40, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=10, help="validation images per class")
    parser.add_argument("--size", type=int, default=None,
                        help=f"shapes: image side in pixels, >= {MIN_SIZE} (default 64); photo: the long side, "
                             f">= {PHOTO_MIN_SIZE} (default {PHOTO_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--workers", type=int, default=None,
                        help="photo: processes writing files (default: all cores); shapes are written in one")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    total = args.classes * (args.train_per_class + args.val_per_class)
    if args.kind == "photo":
        size = args.size if args.size is not None else PHOTO_SIZE
        settings = _photo_settings(args.classes, args.train_per_class, args.val_per_class, size, args.seed,
                                   PHOTO_GRAY_FRACTION, 0.0)
        make = functools.partial(make_photo_dataset, workers=args.workers)
        what = f"ImageNet-like JPEGs ({args.classes} classes, {size}x{round(size * 3 / 4)} and " \
               f"{round(size * 3 / 4)}x{size}, {settings['content']})"
    else:
        size = args.size if args.size is not None else 64
        settings = _settings(args.classes, args.train_per_class, args.val_per_class, size, args.seed)
        make = make_demo_dataset
        what = f"images ({args.classes} classes, {size} px)"
    already = Path(args.out).exists() and is_complete(args.out, settings)
    try:
        out = make(args.out, args.classes, args.train_per_class, args.val_per_class, size, args.seed)
    except (ValueError, FileExistsError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if already:
        print(f"make_demo_data: {out} is already complete ({total} images); nothing to do")
    else:
        print(f"make_demo_data: wrote {total} {what} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
