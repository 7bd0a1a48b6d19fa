"""What is on disk: the ImageFolder layout check and the file list (one pass over the folders, a compact list that
DataLoader workers do not copy, an optional cache), robust image decoding, the Dataset and --verify-data.

Layout: ``<data-path>/{train,val}/<class>/<image>.JPEG``. Every problem a user can fix is a DataError whose one-line
message names the path at fault and what is expected, instead of a deep traceback from a worker process.
"""

import collections.abc
import contextlib
import functools
import io
import json
import multiprocessing
import operator
import os
import random
import sys
import warnings

import numpy as np
import torch
import torch.utils.data
from PIL import Image, UnidentifiedImageError

import fileio
from prepare_imagenet import OFFICIAL_NUM_CLASSES, OFFICIAL_SPLIT_SIZES, ProgressBar, first_few

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Give up after this many unreadable files in a row in "skip" mode: the data (or its mount) is then broken, and
# training on wrapped-around replacements would hide it.
MAX_BAD_IN_A_ROW = 50

_CACHE_FORMAT = "imagenet-file-list"
_CACHE_VERSION = 2  # bump whenever the cache's layout or the scan's meaning changes

_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


class DataError(ValueError):
    """A problem with the data on disk that the user has to fix; the message is one line."""


class BadImageError(DataError):
    """One image file cannot be read or decoded.

    Constructible from the message alone: DataLoader re-raises a worker's exception as ``type(exc)(message)``.
    ``path`` and ``reason`` are extra detail for callers in the same process (None after such a re-raise).
    """

    def __init__(self, message, path=None, reason=None):
        super().__init__(message)
        self.path = path
        self.reason = reason


def bad_image(path: str, reason: str) -> BadImageError:
    return BadImageError(f"bad image {path}: {reason} (use --bad-images skip to skip such files)", path, reason)


# ------------------------------------------------------ Layout checks and the file list


class FileList(collections.abc.Sequence):
    """The (path, label) pairs of a split, stored so that DataLoader workers do not copy them.

    A list of ImageNet's 1.28 M tuples is millions of objects whose reference counts every forked worker writes as
    it reads them, so each worker ends up with a private copy of their pages: ~250 MB per worker, ~30 GB on a node
    of 8 x 16 workers. Here the list is three read-only buffers: the paths relative to ``root``, each ended by a NUL
    byte, their int64 start offsets, and ``targets`` (int64 labels). benchmarks/scale.py measures both.
    """

    def __init__(self, root: str, names: bytes, targets):
        ends = np.flatnonzero(np.frombuffer(names, dtype=np.uint8) == 0) + 1
        targets = np.asarray(targets, dtype=np.int64)
        if len(ends) != len(targets) or (len(names) and names[-1:] != b"\0"):
            raise ValueError(f"file list: {len(ends)} NUL-terminated names for {len(targets)} labels")
        self.root = root = os.fspath(root)
        self._prefix = os.path.join(root, "") if root else ""
        self._names = bytes(names)
        self._offsets = np.concatenate(([0], ends)).astype(np.int64)
        self.targets = targets
        # Read-only: a stray write would silently relabel data, and would copy pages in a worker.
        self._offsets.flags.writeable = False
        self.targets.flags.writeable = False

    @classmethod
    def from_names(cls, root: str, names, targets) -> "FileList":
        """From path strings relative to ``root`` and their labels."""
        names = list(names)
        return cls(root, os.fsencode("\0".join(names) + "\0") if names else b"", targets)

    @classmethod
    def from_pairs(cls, pairs) -> "FileList":
        """From (path, label) pairs, stored as given (no common root)."""
        pairs = list(pairs)
        return cls.from_names("", (str(path) for path, _ in pairs), [operator.index(label) for _, label in pairs])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        i = range(len(self.targets))[index]  # IndexError past the end; negative indices count from it
        start, end = self._offsets.item(i), self._offsets.item(i + 1) - 1
        # os.fsdecode, minus its per-call overhead
        return self._prefix + self._names[start:end].decode(_FS_ENCODING, _FS_ERRORS), self.targets.item(i)

    def __eq__(self, other):
        if isinstance(other, FileList) and other.root == self.root:
            return self._names == other._names and np.array_equal(self.targets, other.targets)
        if isinstance(other, collections.abc.Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(mine == tuple(theirs) for mine, theirs in zip(self, other))
        return NotImplemented

    def __repr__(self):
        return f"FileList(root={self.root!r}, {len(self)} files, {self.nbytes:,} bytes)"

    @property
    def nbytes(self) -> int:
        return len(self._names) + self._offsets.nbytes + self.targets.nbytes


def _is_hidden(name):
    # .DS_Store, ._foo (macOS resource forks), .ipynb_checkpoints: never data, never classes.
    return name.startswith(".")


def _is_image_name(name):
    return name.lower().endswith(IMG_EXTENSIONS)


def _list_folder(path):
    """(mtime_ns, entries) of a folder, the mtime read BEFORE the listing: a file added meanwhile then makes the
    cache stale (a rescan next time), never a cache that misses the file. OS errors become a one-line DataError."""
    try:
        mtime = os.stat(path).st_mtime_ns
        with os.scandir(path) as entries:
            return mtime, list(entries)
    except OSError as err:
        raise DataError(f"cannot read folder {path}: {err.strerror or err}") from None


def _check_data_path(data_path, splits):
    """The data path exists, is a folder and holds every requested split folder."""
    expected = "expected a folder with " + " and ".join(f"{s}/<class>/<image>.JPEG" for s in splits)
    if not os.path.exists(data_path):
        raise DataError(f"data path {data_path} does not exist; {expected}")
    if not os.path.isdir(data_path):
        raise DataError(f"data path {data_path} is not a folder; {expected}")
    missing = [s for s in splits if not os.path.isdir(os.path.join(data_path, s))]
    if missing:
        names = " and ".join(f"{s}/" for s in missing)
        raise DataError(f"data path {data_path} has no {names} folder; {expected}")
    return {s: os.path.join(data_path, s) for s in splits}


def _check_has_classes(split_dir, classes, entries):
    """A split without class folders is unusable; say why when images lie there loose."""
    if classes:
        return
    loose = sum(1 for e in entries if not e.is_dir() and _is_image_name(e.name))
    if loose:  # the classic ImageNet pitfall: val/ comes as one flat folder of 50,000 JPEGs
        raise DataError(f"{split_dir} holds {loose} images but no class folders; move each image "
                        f"into a folder named after its class ({split_dir}/<class>/<image>.JPEG)")
    raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>.JPEG")


def _list_split(split_dir, classes, split_mtime):
    """The one pass over a split's class folders, nested ones too (as torchvision's ImageFolder): one os.scandir
    per folder and no per-file stat, which would dominate on 1.3 M files.

    Returns (FileList ordered by label then path, empty class names, unknown-extension paths,
    {folder relative to ``split_dir``: mtime_ns}).
    """
    names, counts, empty, unknown = [], [], [], []
    dir_mtimes = {".": split_mtime}
    for name in classes:
        images, odd, pending = [], [], [name]
        while pending:
            rel_dir = pending.pop()
            dir_mtimes[rel_dir], entries = _list_folder(os.path.join(split_dir, rel_dir))
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}"
                if _is_hidden(entry.name):
                    continue
                if entry.is_dir():
                    pending.append(rel)
                else:
                    (images if _is_image_name(entry.name) else odd).append(rel)
        names.extend(sorted(images))
        counts.append(len(images))
        if not images:
            empty.append(name)
        unknown.extend(os.path.join(split_dir, rel) for rel in sorted(odd))
    files = FileList.from_names(split_dir, names, np.repeat(np.arange(len(classes), dtype=np.int64), counts))
    return files, empty, unknown, dir_mtimes


def _check_class_contents(split_dir, classes, n_images, empty, unknown):
    """What the scan found must be usable: no empty class, no unknown-extension file."""
    if n_images == 0:
        raise DataError(f"{split_dir} has {len(classes)} class folder(s) but no images; expected "
                        f"{split_dir}/<class>/<image> with one of: {' '.join(IMG_EXTENSIONS)}")
    if empty:
        raise DataError(f"{split_dir} has {len(empty)} empty class folder(s): {first_few(empty, 5)}; "
                        f"add images to them or remove them (every class needs images in every split)")
    if unknown:
        more = f" and {len(unknown) - 1} more such file(s)" if len(unknown) > 1 else ""
        raise DataError(f"{unknown[0]}{more} in {split_dir}: unknown extension; expected one of: "
                        f"{' '.join(IMG_EXTENSIONS)} (remove or convert them)")


def _check_same_classes(split_dirs, classes_by_split):
    """Every split must have the same class folders, otherwise label i means different classes in train and val
    and accuracy is silently wrong."""
    first, *others = classes_by_split
    reference = set(classes_by_split[first])
    for other in others:
        current = set(classes_by_split[other])
        parts = [f"{len(only)} only in {split}/: {first_few(sorted(only), 5)}"
                 for split, only in ((first, reference - current), (other, current - reference)) if only]
        if parts:
            raise DataError(f"class folders differ between {split_dirs[first]} and {split_dirs[other]} "
                            f"({'; '.join(parts)}); both splits need the same class folders")


def list_splits(data_path: str, splits=("train", "val"), cache_files=None) -> tuple[list[str], dict[str, FileList]]:
    """Check that ``data_path`` has the ImageNet folder layout and list every split in ONE pass over its folders;
    return (classes, {split: FileList}), labels indexing the sorted class folder names (the same in every split).
    Raises DataError naming the path at fault: missing or misnamed folders, class sets that differ between splits,
    an empty class folder, a file with an unknown extension.

    ``cache_files`` maps a split to its --cache-dataset file (below): listing 1.3 M files on a network filesystem
    can take minutes; a fresh cache is read in under a second, and the split is not listed at all.
    """
    splits = tuple(splits)
    cache_files = cache_files or {}
    split_dirs = _check_data_path(data_path, splits)
    lists, classes_by_split, split_mtimes = {}, {}, {}
    for split in splits:
        loaded = _read_fresh_cache(cache_files.get(split), split_dirs[split])
        if loaded is not None:
            lists[split], classes_by_split[split] = loaded
        else:
            split_mtimes[split], entries = _list_folder(split_dirs[split])
            classes_by_split[split] = sorted(e.name for e in entries if e.is_dir() and not _is_hidden(e.name))
            _check_has_classes(split_dirs[split], classes_by_split[split], entries)
    # Compare class sets before looking inside the folders: a missing class explains empty or misplaced folders
    # better than the individual symptoms would.
    _check_same_classes(split_dirs, classes_by_split)
    for split in split_mtimes:
        classes = classes_by_split[split]
        files, empty, unknown, dir_mtimes = _list_split(split_dirs[split], classes, split_mtimes[split])
        _check_class_contents(split_dirs[split], classes, len(files), empty, unknown)
        _write_cache(cache_files.get(split), files, classes, dir_mtimes)
        lists[split] = files
    return classes_by_split[splits[0]], {split: lists[split] for split in splits}


# The --cache-dataset file: JSON, never pickle, so a cache file cannot execute code.
#   {"format": "imagenet-file-list", "version": 2, "split_dir": <absolute path>,
#    "layout_checked": true (written by list_splits, after its checks passed),
#    "classes": [...], "counts": [files per class, in label order],
#    "dirs": {folder relative to split_dir ("." for itself): mtime_ns},
#    "names": the relative paths joined by NUL characters, in label then path order}
# One string instead of 1.28 M small JSON values loads in a fraction of the time. The cache is fresh while every
# folder it lists has the recorded mtime: adding, removing or renaming a file or a class folder changes it, editing
# a file in place does not (the list would not change). Where timestamps are coarser than the time between a scan
# and a change (seconds on some network mounts), delete the cache after changing the data. Version 1 (a list of
# [path, label] pairs) is not read: such a file is rebuilt.


def _read_fresh_cache(cache_file, split_dir):
    """(FileList, classes) from a fresh, well-formed cache file, else None (the split is then scanned)."""
    if cache_file is None:
        return None
    try:
        with open(cache_file, encoding="utf-8") as f:
            cache = json.load(f)
        classes, counts, names, dirs = cache["classes"], cache["counts"], cache["names"], cache["dirs"]
        if not (cache["format"] == _CACHE_FORMAT and cache["version"] == _CACHE_VERSION
                and cache["layout_checked"] is True and cache["split_dir"] == os.path.abspath(split_dir)
                and isinstance(classes, list) and all(isinstance(c, str) for c in classes)
                and isinstance(counts, list) and len(counts) == len(classes)
                and all(type(c) is int and c >= 0 for c in counts) and isinstance(names, str) and "." in dirs):
            return None
        for rel, mtime in dirs.items():  # one stat per folder instead of listing every file
            if os.stat(os.path.join(split_dir, rel)).st_mtime_ns != mtime:
                return None
        buffer = os.fsencode(names + "\0") if sum(counts) else b""
        return FileList(split_dir, buffer, np.repeat(np.arange(len(classes), dtype=np.int64), counts)), classes
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, torn, damaged (names and counts disagree) or of another shape: rebuilt


def _write_cache(cache_file, files, classes, dir_mtimes):
    if cache_file is None:
        return
    cache = {
        "format": _CACHE_FORMAT,
        "version": _CACHE_VERSION,
        "split_dir": os.path.abspath(files.root),
        "layout_checked": True,
        "classes": list(classes),
        "counts": np.bincount(files.targets, minlength=len(classes)).tolist(),
        "dirs": dir_mtimes,
        "names": os.fsdecode(files._names[:-1]),
    }
    try:
        # Atomic: a crash or several ranks building the same cache never leave a torn file.
        os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
        fileio.atomic_write(cache_file, lambda f: json.dump(cache, f, separators=(",", ":")), binary=False)
    except OSError as err:
        # The cache only saves time; a read-only location must not stop training.
        print(f"warning: cannot write file list cache {cache_file}: {err.strerror or err}", file=sys.stderr)


# ----------------------------------------------------------------------------- Decoding


def _one_line(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _header_size(data):
    """(width, height) from the header without PIL's pixel-limit check, or None: to report the size of an image
    PIL refused as a decompression bomb. The format plugins' header parsers read just the first bytes."""
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            if accept is not None and not accept(data[:16]):
                continue
            return factory(io.BytesIO(data), None).size
        except Exception:  # this plugin cannot parse it; try the next one
            continue
    return None


def _tile_is_16bit(image):
    """Whether the file stores 16-bit samples (before load(), the tile's raw mode says so). Older Pillow opens
    16-bit grayscale PNG as mode "I": a dark 16-bit image (all values below 256) would pass for 8-bit, far too
    bright."""
    for tile in getattr(image, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and rawmode.startswith("I;16"):
            return True
    return False


def _high_depth_to_l(image, is_16bit):
    """16-bit / 32-bit / float grayscale -> 8-bit "L" by scaling: PIL's convert("RGB") clips at 255, which turns
    almost every 16-bit image white."""
    arr = np.asarray(image)
    is_float = arr.dtype.kind == "f"
    if arr.dtype.kind in "ui":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255 and not is_16bit and not image.mode.startswith("I;16"):
            return Image.fromarray(arr.astype(np.uint8))
        if lo >= 0 and hi <= 65535:
            return Image.fromarray((arr.astype(np.uint32) >> 8).astype(np.uint8))
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if is_float and lo >= 0.0 and hi <= 1.0:  # float images conventionally hold 0..1 intensities
        scaled = arr * 255.0
    elif hi > lo:
        scaled = (arr - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _to_rgb(image, is_16bit):
    """Any PIL mode -> RGB. Alpha is dropped the way PIL's convert drops it (not blended)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _high_depth_to_l(image, is_16bit)
    elif image.mode == "La":
        image = image.convert("LA")  # PIL has no direct La -> RGB conversion
    return image.convert("RGB")


def check_pixel_limit(width, height, path):
    """PIL's decompression-bomb limit (MAX_IMAGE_PIXELS), checked from the header before any pixel is decoded:
    a few KB file can otherwise expand to tens of GB."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise bad_image(path, f"too large: {width}x{height}")


def _decode_failure_reason(err, data):
    """Short reason for a decode exception (the path is added by bad_image)."""
    if isinstance(err, Image.DecompressionBombError):
        size = _header_size(data)
        return f"too large: {size[0]}x{size[1]}" if size else f"too large: {_one_line(err)}"
    if isinstance(err, UnidentifiedImageError):
        return "not an image"
    if isinstance(err, EOFError) or "truncated" in str(err).lower():
        return "truncated"
    return f"cannot decode: {_one_line(err) or type(err).__name__}"


def decode_pil(data: bytes, path: str = "<bytes>") -> Image.Image:
    """Decode image bytes into a fully loaded 8-bit RGB PIL image (from grayscale, CMYK, palette, alpha, 16-bit),
    or raise BadImageError.

    PIL's warnings (decompression bomb, corrupt EXIF/TIFF metadata) are silenced: on a million web images they
    would flood the log while saying nothing the result does not. The filter is process-wide for the call, which
    is fine in DataLoader workers. EXIF orientation is not applied, as ImageNet models are usually trained.
    """
    if not data:
        raise bad_image(path, "empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
            check_pixel_limit(*image.size, path)
            is_16bit = _tile_is_16bit(image)
            image.load()
            return _to_rgb(image, is_16bit)
        except BadImageError:
            raise
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
            raise bad_image(path, _decode_failure_reason(err, data)) from None


# ------------------------------------------------------------------------------ Dataset


def read_file(path: str) -> bytes:
    """The file's bytes; an unreadable file is a bad image like an undecodable one."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise bad_image(path, f"cannot read: {_one_line(err.strerror or err)}") from None


def run_seeded(fn, seed: int):
    """Call ``fn()`` with torch, python and numpy RNGs seeded by ``seed``, then put the caller's states back.

    Augmentation then depends only on (index, seed), not on which worker or process loads the sample, so runs and
    resumed runs are reproducible. Only the CPU generator is seeded: torch.manual_seed would also reseed the GPU
    generators, which fork_rng(devices=[]) does not restore, so loading data in the main process of a GPU run
    would keep resetting the model's GPU random stream.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (2**32))
            return fn()
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class ImageFolderDataset(torch.utils.data.Dataset):
    """(path, label) samples -> (transform output, label, number of bad files replaced).

    ``samples`` is a FileList or a sequence of (path, label) pairs, stored as a FileList. A key is an index or an
    (index, seed) pair, as the training samplers yield them. ``transform(data, path)`` gets the file's bytes and
    decodes them itself (so it can e.g. decode a JPEG at reduced size), raising BadImageError for bad files.
    ``bad_images`` is "error" (raise) or "skip" (log once, use the next good sample).
    """

    def __init__(self, samples, classes: list[str], transform, bad_images: str = "error"):
        self.samples = samples if isinstance(samples, FileList) else FileList.from_pairs(samples)
        self.classes = list(classes)
        self.targets = self.samples.targets
        self.transform = transform
        self.bad_images = bad_images
        self._reported_bad = set()  # per process: a bad file is reported once, not every epoch it is drawn

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, (tuple, list)) else (key, None)
        n = len(self.samples)
        index = range(n)[index]
        attempts = min(MAX_BAD_IN_A_ROW, n)
        for step in range(attempts):
            path, target = self.samples[(index + step) % n]
            try:
                decode = functools.partial(self.transform, read_file(path), path)
                return (decode() if seed is None else run_seeded(decode, seed)), target, step
            except BadImageError as err:
                if self.bad_images == "error":
                    raise
                last = err
                if err.path not in self._reported_bad:
                    self._reported_bad.add(err.path)
                    print(f"skipping bad image {err.path}: {err.reason}", file=sys.stderr, flush=True)
        raise DataError(f"{attempts} bad images in a row starting at {self.samples[index][0]} "
                        f"(last: {last.path}: {last.reason}); check the data with --verify-data")


# ----------------------------------------------------------------- Verification command


def _verify_file(path):
    """(path, reason) for an unreadable file, (path, None) for a good one. Never raises: one odd file must not
    end a scan of a million."""
    try:
        decode_pil(read_file(path), path)
        return path, None
    except BadImageError as err:
        return path, err.reason or str(err)
    except Exception as err:
        return path, f"cannot decode: {_one_line(err) or type(err).__name__}"


def default_workers(processes_per_node: int = 1) -> int:
    """Worker processes for one of `processes_per_node` processes on this node: the CPU cores this process may
    use (its affinity mask, which SLURM and containers narrow, not the machine's count) shared evenly, at least
    1, and at most 16, beyond which more workers mostly add memory and start-up time."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores // max(1, processes_per_node)))


def verify_dataset(data_path: str, workers: int | None = None, progress: bool = True) -> dict:
    """Check the layout, then decode every train and val image in a process pool (``workers=0``: here).

    Returns {"data_path": ..., "splits": {split: {"images": n, "classes": k, "bad": [(path, reason), ...]}}}.
    """
    classes, lists = list_splits(data_path)
    workers = min(default_workers() if workers is None else int(workers), max(map(len, lists.values())))
    report = {"data_path": data_path, "splits": {}}
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for split, files in lists.items():
            paths = [path for path, _ in files]
            bar = ProgressBar(len(paths), f"verify {split}", enabled=progress)
            # ~8 chunks per worker amortise the inter-process cost and keep the load balanced when sizes vary.
            chunksize = max(1, min(64, len(paths) // (max(1, workers) * 8)))
            results = map(_verify_file, paths) if pool is None else pool.imap_unordered(_verify_file, paths, chunksize)
            bad = []
            for path, reason in results:
                bar.advance()
                if reason is not None:
                    bad.append((path, reason))
            bar.close()
            report["splits"][split] = {"images": len(paths), "classes": len(classes), "bad": sorted(bad)}
    return report


def format_verify_report(report: dict) -> str:
    """Counts per split, class count, every unreadable file, and, for 1000 classes, whether the counts match the
    official ImageNet-1k splits."""
    lines = [f"dataset {report['data_path']}"] if report.get("data_path") else []
    bad = [item for info in report["splits"].values() for item in info["bad"]]
    for split, info in report["splits"].items():
        line = f"  {split}: {info['images']:,} images in {info['classes']} classes"
        expected = OFFICIAL_SPLIT_SIZES.get(split)
        if info["classes"] == OFFICIAL_NUM_CLASSES and expected is not None:
            if info["images"] == expected:
                line += f" (matches ImageNet-1k {split}: {expected:,})"
            else:
                diff = info["images"] - expected
                line += f" (ImageNet-1k {split} has {expected:,}: {diff:+,} images; incomplete or modified copy?)"
        lines.append(line)
    if bad:
        lines.append(f"{len(bad)} unreadable file(s):")
        lines.extend(f"  {path}: {reason}" for path, reason in bad)
        lines.append("remove or replace them, or train with --bad-images skip")
    else:
        lines.append("all images decoded cleanly")
    return "\n".join(lines)


def run_verify(data_path: str, workers: int | None = None) -> int:
    """The --verify-data command: print the report; exit code 0 clean, 1 unreadable files, 2 layout error (one
    line)."""
    try:
        report = verify_dataset(data_path, workers=workers, progress=True)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_verify_report(report))
    return 1 if any(info["bad"] for info in report["splits"].values()) else 0
