#!/usr/bin/env python3
"""Generate a small, learnable ImageFolder data set for demos and smoke tests.

    python3 scripts/make_demo_data.py OUT [--classes 10] [--train-per-class 40]
        [--val-per-class 10] [--size 64] [--seed 0]

writes OUT/train/<class>/*.JPEG and OUT/val/<class>/*.JPEG, the layout train.py expects
for ImageNet. Each class is a procedurally drawn shape or pattern (circle, square, stripes,
checkerboard, ...) with random colours, position, scale and background noise, so a network
has something real to learn in a few CPU minutes, while the files go through the same JPEG
decoding path as ImageNet.

Every image is drawn from its own random stream keyed by (seed, split, class, index), so
the output is identical for a seed whatever the order of generation. The set is written to
OUT.partial and renamed to OUT when finished, so an interrupted run never leaves a
half-written OUT; a complete OUT with the same settings is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

# Bumped whenever the drawing changes, so an old OUT is not mistaken for the current one.
GENERATOR_VERSION = 1
MARKER_NAME = ".demo_complete.json"
SPLITS = ("train", "val")
MIN_SIZE = 16
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


def _settings(classes: int, train_per_class: int, val_per_class: int, size: int, seed: int) -> dict:
    """What a finished data set records about itself, to recognise it later."""
    return {
        "generator_version": GENERATOR_VERSION,
        "classes": classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
    }


def _validate(classes: int, train_per_class: int, val_per_class: int, size: int) -> None:
    if not 2 <= classes <= len(PATTERNS):
        raise ValueError(f"make_demo_data: --classes must be 2..{len(PATTERNS)}, got {classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(
            f"make_demo_data: --train-per-class and --val-per-class must be >= 1, got {train_per_class} and {val_per_class}"
        )
    if size < MIN_SIZE:
        raise ValueError(f"make_demo_data: --size must be >= {MIN_SIZE} pixels, got {size}")


def is_complete(out_dir: str | os.PathLike, settings: dict) -> bool:
    """True when `out_dir` is a finished demo set made with exactly `settings`."""
    out = Path(out_dir)
    try:
        recorded = json.loads((out / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if recorded != settings:
        return False
    names = list(PATTERNS)[: settings["classes"]]
    for split in SPLITS:
        expected = settings[f"{split}_per_class"]
        for name in names:
            if len(list((out / split / name).glob("*.JPEG"))) != expected:
                return False
    return True


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
    """Create the demo ImageFolder at `out_dir` unless it is already there; return its path.

    Raises ValueError for bad settings, and FileExistsError when `out_dir` exists but is not
    a complete demo set with these settings (we never delete a folder we did not just make).
    """
    _validate(classes, train_per_class, val_per_class, size)
    settings = _settings(classes, train_per_class, val_per_class, size, seed)
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
    for split in SPLITS:
        _write_split(partial, split, settings[f"{split}_per_class"], classes, size, seed)
    # The marker goes last: its presence means every image before it was written.
    (partial / MARKER_NAME).write_text(json.dumps(settings, indent=2) + "\n")
    partial.rename(out)
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder (gets train/ and val/)")
    parser.add_argument("--classes", type=int, default=10, help=f"number of classes, 2..{len(PATTERNS)}")
    parser.add_argument("--train-per-class", type=int, default=40, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=10, help="validation images per class")
    parser.add_argument("--size", type=int, default=64, help=f"image side in pixels, >= {MIN_SIZE}")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    settings = _settings(args.classes, args.train_per_class, args.val_per_class, args.size, args.seed)
    already = Path(args.out).exists() and is_complete(args.out, settings)
    try:
        out = make_demo_dataset(args.out, args.classes, args.train_per_class, args.val_per_class, args.size, args.seed)
    except (ValueError, FileExistsError) as exc:
        print(exc, file=sys.stderr)
        return 2
    total = args.classes * (args.train_per_class + args.val_per_class)
    if already:
        print(f"make_demo_data: {out} is already complete ({total} images); nothing to do")
    else:
        print(f"make_demo_data: wrote {total} images ({args.classes} classes, {args.size} px) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
