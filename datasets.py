"""What is on disk: layout checks and the file list (one pass over the folders, a compact
list that DataLoader workers do not copy, an optional cache), robust image decoding, the
Dataset and the dataset verification command.

Expected layout (ImageNet style)::

    <data-path>/train/<class>/<image>.JPEG
    <data-path>/val/<class>/<image>.JPEG

Every problem a user can fix is raised as :class:`DataError` with a one-line message that
names the path at fault and says what is expected, so a failed run points straight at the
file or folder to look at instead of ending in a deep traceback from a worker process.
"""

import collections.abc
import io
import json
import operator
import os
import random
import sys
import time
import warnings

import numpy as np
import torch
import torch.utils.data
from PIL import Image, UnidentifiedImageError

import fileio
import metrics
from prepare_imagenet import OFFICIAL_NUM_CLASSES, OFFICIAL_SPLIT_SIZES

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Give up after this many unreadable files in a row in "skip" mode: at that point the
# data (or the mount it lives on) is broken, and silently training on wrapped-around
# replacements would hide it.
MAX_BAD_IN_A_ROW = 50

# How many names to quote in an error message before summarising the rest as a count.
_NAMES_IN_MESSAGE = 5

_CACHE_FORMAT = "imagenet-file-list"
_CACHE_VERSION = 2  # bump whenever the cache's layout or the scan's meaning changes

_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


class DataError(ValueError):
    """A problem with the data on disk that the user has to fix; the message is one line."""


class BadImageError(DataError):
    """One image file cannot be read or decoded.

    It must be constructible from a single message string: torch's DataLoader re-raises a
    worker's exception as ``type(exc)(message)``, and only then does the main process see
    a BadImageError rather than a generic RuntimeError. ``path`` and ``reason`` are extra
    detail for callers in the same process (they are None after such a re-raise).
    """

    def __init__(self, message, path=None, reason=None):
        super().__init__(message)
        self.path = path
        self.reason = reason


def bad_image(path: str, reason: str) -> BadImageError:
    """Build the BadImageError for ``path``; the message tells the user how to carry on."""
    message = f"bad image {path}: {reason} (use --bad-images skip to skip such files)"
    return BadImageError(message, path=path, reason=reason)


# ---------------------------------------------------------------------------------------
# Layout checks and the file list
# ---------------------------------------------------------------------------------------


class FileList(collections.abc.Sequence):
    """The (path, label) pairs of a split, stored so that DataLoader workers do not copy them.

    A Python list of ImageNet's 1.28 M (path, label) tuples is millions of objects whose
    reference counts every forked worker writes as it reads them, so each worker ends up with
    a private copy of the pages holding them (copy-on-write): about 250 MB per worker per
    epoch, ~30 GB on a node of 8 processes x 16 workers. Here the whole list is three
    objects that are only ever read: the paths relative to ``root`` in one bytes buffer, each
    ended by a NUL byte (which no file name can contain), the int64 offsets where they start,
    and ``targets``, an int64 numpy array of the labels. An item is built when it is asked
    for: ``(os.path.join(root, relative path), label)``. benchmarks/scale.py measures both.
    """

    def __init__(self, root: str, names: bytes, targets):
        """``names``: the NUL-terminated relative paths, ``targets``: one label per path."""
        ends = np.flatnonzero(np.frombuffer(names, dtype=np.uint8) == 0) + 1
        targets = np.asarray(targets, dtype=np.int64)
        if len(ends) != len(targets) or (len(names) and names[-1:] != b"\0"):
            raise ValueError(f"file list: {len(ends)} NUL-terminated names for {len(targets)} labels")
        self.root = root = os.fspath(root)
        # os.path.join(root, name) for a relative name, without its per-call cost.
        self._prefix = os.path.join(root, "") if root else ""
        self._names = bytes(names)
        self._offsets = np.concatenate(([0], ends)).astype(np.int64)
        self.targets = targets
        # Read-only views: a stray write would silently relabel data, and would copy pages in a worker.
        self._offsets.flags.writeable = False
        self.targets.flags.writeable = False

    @classmethod
    def from_names(cls, root: str, names, targets) -> "FileList":
        """From relative path strings (joined to ``root`` when read) and their labels."""
        names = list(names)
        if any("\0" in name for name in names):
            raise ValueError("file list: a path contains a NUL character")
        return cls(root, _encode_names(names), targets)

    @classmethod
    def from_pairs(cls, pairs) -> "FileList":
        """From (path, label) pairs, stored as given (no common root)."""
        pairs = list(pairs)
        return cls.from_names("", (str(path) for path, _ in pairs), [operator.index(label) for _, label in pairs])

    def __len__(self):
        return len(self.targets)

    def _name(self, i):
        start, end = self._offsets.item(i), self._offsets.item(i + 1) - 1
        return self._names[start:end].decode(_FS_ENCODING, _FS_ERRORS)  # os.fsdecode, minus its overhead

    def __getitem__(self, index):
        i = operator.index(index)
        n = len(self.targets)
        if not -n <= i < n:
            raise IndexError(f"file list index {index} out of range for {n} files")
        i %= n
        return self._prefix + self._name(i), self.targets.item(i)

    def __eq__(self, other):
        if isinstance(other, FileList) and other.root == self.root:
            return self._names == other._names and np.array_equal(self.targets, other.targets)
        if isinstance(other, collections.abc.Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(mine == tuple(theirs) for mine, theirs in zip(self, other))
        return NotImplemented

    __hash__ = None  # equality compares contents, as for a list

    def __repr__(self):
        return f"FileList(root={self.root!r}, {len(self)} files, {self.nbytes:,} bytes)"

    @property
    def nbytes(self) -> int:
        """Memory held by the list's buffers."""
        return len(self._names) + self._offsets.nbytes + self.targets.nbytes


def _encode_names(names):
    """Relative path strings -> one bytes buffer, each name NUL-terminated (file-system encoding)."""
    return os.fsencode("\0".join(names) + "\0") if names else b""


def _is_hidden(name):
    # .DS_Store, ._foo (macOS resource forks), .ipynb_checkpoints: never data, never classes.
    return name.startswith(".")


def _is_image_name(name):
    return name.lower().endswith(IMG_EXTENSIONS)


def _name_some(names, limit=_NAMES_IN_MESSAGE):
    """'a, b, c' or 'a, b, c and 7 more': long lists stay readable in a one-line error."""
    names = list(names)
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return shown


def _scandir(path):
    """List a folder, turning OS errors into a one-line DataError naming the folder."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError as err:
        raise DataError(f"cannot read folder {path}: {err.strerror or err}") from None


def _folder_mtime(path):
    """A folder's mtime in ns, read BEFORE the folder is listed: a file added meanwhile then
    makes the recorded time stale (a rescan next time), never a cache that misses the file."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError as err:
        raise DataError(f"cannot read folder {path}: {err.strerror or err}") from None


def _scan_class_dir(class_dir):
    """Walk one class folder (nested folders too, as torchvision's ImageFolder does).

    Returns (images, unknown, dir_mtimes): image names and unknown-extension names relative
    to ``class_dir`` (sorted), and {folder: mtime_ns} for every folder visited (the file-list
    cache compares them to notice added or removed files). One os.scandir per folder keeps
    this fast on ImageNet's 1.3 M files, where per-file stat calls would dominate.
    """
    images, unknown, dir_mtimes = [], [], {}
    pending = [("", class_dir)]
    while pending:
        rel_dir, abs_dir = pending.pop()
        dir_mtimes[abs_dir] = _folder_mtime(abs_dir)
        for entry in _scandir(abs_dir):
            if _is_hidden(entry.name):
                continue
            rel = rel_dir + entry.name
            if entry.is_dir():
                pending.append((rel + "/", entry.path))
            elif _is_image_name(entry.name):
                images.append(rel)
            else:
                unknown.append(rel)
    images.sort()
    unknown.sort()
    return images, unknown, dir_mtimes


def find_classes(split_dir: str) -> list[str]:
    """Sorted names of the class folders in ``split_dir`` (hidden folders are ignored)."""
    if not os.path.isdir(split_dir):
        raise DataError(f"{split_dir} is not a folder; expected {split_dir}/<class>/<image>.JPEG")
    return sorted(e.name for e in _scandir(split_dir) if e.is_dir() and not _is_hidden(e.name))


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


def _check_has_classes(split_dir, classes):
    """A split without class folders is unusable; say why when images lie there loose."""
    if classes:
        return
    loose = sum(1 for e in _scandir(split_dir) if not e.is_dir() and _is_image_name(e.name))
    if loose:
        # The classic ImageNet pitfall: val/ comes as one flat folder of 50,000 JPEGs.
        raise DataError(
            f"{split_dir} holds {loose} images but no class folders; move each image "
            f"into a folder named after its class ({split_dir}/<class>/<image>.JPEG)"
        )
    raise DataError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>.JPEG")


def _list_split(split_dir, classes, split_mtime):
    """The one pass over a split's class folders: the file list and everything wrong in them.

    Returns (FileList, empty class names, unknown-extension paths, {folder relative to
    ``split_dir``: mtime_ns}); ``split_mtime`` is the split folder's own, read before its
    class folders were listed. Files are ordered by label, then path.
    """
    names, counts, empty, unknown = [], [], [], []
    dir_mtimes = {".": split_mtime}
    for name in classes:
        class_dir = os.path.join(split_dir, name)
        if not os.path.isdir(class_dir):
            raise DataError(f"class folder {class_dir} does not exist; the class list does not match {split_dir}")
        images, odd, mtimes = _scan_class_dir(class_dir)
        names.extend(f"{name}/{rel}" for rel in images)
        counts.append(len(images))
        if not images:
            empty.append(name)
        unknown.extend(os.path.join(class_dir, rel) for rel in odd)
        for folder, mtime in mtimes.items():
            dir_mtimes[os.path.relpath(folder, split_dir)] = mtime
    files = FileList.from_names(split_dir, names, np.repeat(np.arange(len(classes), dtype=np.int64), counts))
    return files, empty, unknown, dir_mtimes


def _check_class_contents(split_dir, classes, n_images, empty, unknown):
    """What the scan found must be usable: no empty class, no unknown-extension file."""
    if n_images == 0:
        raise DataError(
            f"{split_dir} has {len(classes)} class folder(s) but no images; expected "
            f"{split_dir}/<class>/<image> with one of: {' '.join(IMG_EXTENSIONS)}"
        )
    if empty:
        raise DataError(
            f"{split_dir} has {len(empty)} empty class folder(s): {_name_some(empty)}; "
            f"add images to them or remove them (every class needs images in every split)"
        )
    if unknown:
        more = f" and {len(unknown) - 1} more such file(s)" if len(unknown) > 1 else ""
        raise DataError(
            f"{unknown[0]}{more} in {split_dir}: unknown extension; expected one of: "
            f"{' '.join(IMG_EXTENSIONS)} (remove or convert them)"
        )


def _check_same_classes(split_dirs, classes_by_split):
    """Every split must have the same class folders, otherwise label i means different
    classes in train and val and accuracy is silently wrong."""
    splits = list(classes_by_split)
    first = splits[0]
    reference = set(classes_by_split[first])
    for other in splits[1:]:
        current = set(classes_by_split[other])
        if current == reference:
            continue
        only_first = sorted(reference - current)
        only_other = sorted(current - reference)
        parts = []
        if only_first:
            parts.append(f"{len(only_first)} only in {first}/: {_name_some(only_first)}")
        if only_other:
            parts.append(f"{len(only_other)} only in {other}/: {_name_some(only_other)}")
        raise DataError(
            f"class folders differ between {split_dirs[first]} and {split_dirs[other]} "
            f"({'; '.join(parts)}); both splits need the same class folders"
        )


def list_splits(data_path: str, splits=("train", "val"), cache_files=None) -> tuple[list[str], dict[str, FileList]]:
    """Check that ``data_path`` has the ImageNet folder layout and list every split, in ONE
    pass over its folders; return (classes, {split: FileList}).

    ``classes`` are the sorted class folder names, the same in every split (checked); labels
    index them. Raises DataError with a one-line message naming the path at fault: missing
    or misnamed folders, class sets that differ between splits, an empty class folder, a
    file with an unknown extension. Each folder is listed once (os.scandir), and the same
    listing both checks the folder and fills the file list.

    ``cache_files`` maps a split to a JSON file (see build_file_list for what makes one
    fresh). A fresh cache that was written here, after these checks passed, is trusted:
    that split is not listed at all, only its folders' mtimes are read (one stat each).
    Otherwise the split is scanned and the cache (re)written.
    """
    splits = tuple(splits)
    cache_files = cache_files or {}
    split_dirs = _check_data_path(data_path, splits)
    cached, classes_by_split, split_mtimes = {}, {}, {}
    for split in splits:
        loaded = _read_fresh_cache(cache_files.get(split), split_dirs[split], need_layout_checked=True)
        if loaded is not None:
            cached[split], classes_by_split[split] = loaded
        else:
            split_mtimes[split] = _folder_mtime(split_dirs[split])
            classes_by_split[split] = find_classes(split_dirs[split])
    for split in splits:
        _check_has_classes(split_dirs[split], classes_by_split[split])
    # Compare class sets before looking inside the folders: a missing class explains
    # empty or misplaced folders better than the individual symptoms would.
    _check_same_classes(split_dirs, classes_by_split)
    lists = {}
    for split in splits:
        if split in cached:
            lists[split] = cached[split]
            continue
        classes = classes_by_split[split]
        files, empty, unknown, dir_mtimes = _list_split(split_dirs[split], classes, split_mtimes[split])
        _check_class_contents(split_dirs[split], classes, len(files), empty, unknown)
        _write_cache(cache_files.get(split), files, classes, dir_mtimes, layout_checked=True)
        lists[split] = files
    return classes_by_split[splits[0]], lists


def check_layout(data_path: str, splits=("train", "val")) -> dict[str, str]:
    """Check that ``data_path`` has the ImageNet folder layout; return {split: split_dir}.

    Raises DataError with a one-line message naming the path at fault. The check is
    list_splits's single pass; use list_splits to keep the file lists it builds.
    """
    list_splits(data_path, splits)
    return {split: os.path.join(data_path, split) for split in splits}


# The --cache-dataset file: JSON, never pickle, so a cache file cannot execute code.
#   {"format": "imagenet-file-list", "version": 2, "split_dir": <absolute path>,
#    "layout_checked": true when list_splits wrote it (its layout checks passed),
#    "classes": [...], "counts": [files per class, in label order],
#    "dirs": {folder relative to split_dir ("." for itself): mtime_ns},
#    "names": the relative paths joined by NUL characters, in label then path order}
# One string instead of 1.28 M small JSON values loads in a fraction of the time.
# Version 1 (a list of [path, label] pairs) is not read: such a file is rebuilt.


def _read_cache(cache_file):
    """The parsed cache, or None when it is missing or unreadable (it is then rebuilt)."""
    try:
        with open(cache_file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _cache_is_fresh(cache, split_dir):
    """The cache was written by this version, for this split folder, and no folder changed since."""
    if not isinstance(cache, dict):
        return False
    if cache.get("format") != _CACHE_FORMAT or cache.get("version") != _CACHE_VERSION:
        return False
    if cache.get("split_dir") != os.path.abspath(split_dir):
        return False
    dirs = cache.get("dirs")
    if not isinstance(dirs, dict) or "." not in dirs:
        return False
    # Adding, removing or renaming a file changes its folder's mtime: a cheap staleness
    # check (one stat per folder) instead of listing every file.
    for rel, mtime in dirs.items():
        try:
            if os.stat(os.path.join(split_dir, rel)).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def _read_fresh_cache(cache_file, split_dir, need_layout_checked):
    """(FileList, classes) from a fresh, well-formed cache file, else None."""
    if cache_file is None:
        return None
    cache = _read_cache(cache_file)
    if not _cache_is_fresh(cache, split_dir):
        return None
    if need_layout_checked and cache.get("layout_checked") is not True:
        return None
    classes, counts, names = cache.get("classes"), cache.get("counts"), cache.get("names")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            and isinstance(counts, list) and len(counts) == len(classes)
            and all(type(c) is int and c >= 0 for c in counts) and isinstance(names, str)):
        return None
    try:
        buffer = os.fsencode(names + "\0") if sum(counts) else b""
        files = FileList(split_dir, buffer, np.repeat(np.arange(len(classes), dtype=np.int64), counts))
    except ValueError:  # names and counts disagree: a damaged file, rebuilt by the caller
        return None
    return files, classes


def _write_json_atomic(path, obj):
    """A crash or a concurrent writer (several ranks building the same cache) never leaves a torn file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fileio.atomic_write(path, lambda f: json.dump(obj, f, separators=(",", ":")), binary=False)


def _write_cache(cache_file, files, classes, dir_mtimes, layout_checked):
    if cache_file is None:
        return
    cache = {
        "format": _CACHE_FORMAT,
        "version": _CACHE_VERSION,
        "split_dir": os.path.abspath(files.root),
        "layout_checked": layout_checked,
        "classes": list(classes),
        "counts": np.bincount(files.targets, minlength=len(classes)).tolist(),
        "dirs": dir_mtimes,
        "names": os.fsdecode(files._names[:-1]),
    }
    try:
        _write_json_atomic(cache_file, cache)
    except OSError as err:
        # The cache only saves time; a read-only location must not stop training.
        print(f"warning: cannot write file list cache {cache_file}: {err.strerror or err}", file=sys.stderr)


def build_file_list(split_dir: str, classes: list[str], cache_file: str | None = None) -> FileList:
    """All (path, label) pairs of ``split_dir`` for these ``classes``, ordered by label then
    path, as a FileList. No layout checks (list_splits makes them, in the same pass).

    With ``cache_file`` the list is read from that JSON file when it is fresh and lists the
    same classes, and otherwise scanned and written there: listing 1.3 M files on a network
    filesystem can take minutes, reading the cache takes under a second.

    A cache is fresh when it was written by this version of the code (``version`` field)
    for this split folder (absolute path), and the mtime of the split folder and of every
    class folder (nested ones too) is still the recorded one. Adding, removing or renaming a
    file or a class folder changes its folder's mtime, so the cache is rebuilt; editing a
    file in place does not (the list would not change). On a filesystem whose timestamps
    are coarser than the time between a scan and a change (seconds on some network mounts),
    delete the cache file after changing the data.
    """
    classes = list(classes)
    loaded = _read_fresh_cache(cache_file, split_dir, need_layout_checked=False)
    if loaded is not None and loaded[1] == classes:
        return loaded[0]
    files, _, _, dir_mtimes = _list_split(split_dir, classes, _folder_mtime(split_dir))
    _write_cache(cache_file, files, classes, dir_mtimes, layout_checked=False)
    return files


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------


def _one_line(text, limit=160):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _header_size(data):
    """(width, height) read from the header without PIL's pixel-limit check, or None.

    Only used to report the size of an image PIL refused to open as a decompression bomb;
    the format plugins' own header parsers read just the first bytes.
    """
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            if accept is not None and not accept(prefix):
                continue
            return factory(io.BytesIO(data), None).size
        except Exception:  # this plugin cannot parse it; try the next one
            continue
    return None


def _tile_is_16bit(image):
    """Whether the file stores 16-bit samples (before load(), the tile's raw mode says so).

    Older Pillow opens 16-bit grayscale PNG as mode "I"; a dark 16-bit image (all values
    below 256) would otherwise be mistaken for an 8-bit one and come out far too bright.
    """
    for tile in getattr(image, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and rawmode.startswith("I;16"):
            return True
    return False


def _high_depth_to_l(image, is_16bit):
    """16-bit / 32-bit / float grayscale -> 8-bit "L" by scaling, never by clipping.

    PIL's own convert("RGB") clips such values at 255, which turns almost every 16-bit
    image completely white.
    """
    arr = np.asarray(image)
    is_float = arr.dtype.kind == "f"
    if arr.dtype.kind in "ui":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255 and not is_16bit and not image.mode.startswith("I;16"):
            return Image.fromarray(arr.astype(np.uint8))
        if lo >= 0 and hi <= 65535:
            return Image.fromarray((arr.astype(np.uint32) >> 8).astype(np.uint8))
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
    if is_float and lo >= 0.0 and hi <= 1.0:
        # Float images conventionally hold 0..1 intensities.
        scaled = arr * 255.0
    elif hi > lo:
        scaled = (arr - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _to_rgb(image, is_16bit):
    """Any PIL mode -> RGB. Alpha is dropped the way PIL's convert drops it (not blended)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        image = _high_depth_to_l(image, is_16bit)
    elif mode == "La":
        image = image.convert("LA")  # PIL has no direct La -> RGB conversion
    return image.convert("RGB")


def check_pixel_limit(width, height, path):
    """PIL's decompression-bomb limit (MAX_IMAGE_PIXELS), checked from the header before any pixel is decoded:
    a few KB file can otherwise expand to tens of GB."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise bad_image(path, f"too large: {width}x{height}")


def _open_loaded(data, path):
    """Open and fully decode; the pixel limit is checked before any pixel is decoded."""
    image = Image.open(io.BytesIO(data))
    check_pixel_limit(*image.size, path)
    is_16bit = _tile_is_16bit(image)
    image.load()
    return _to_rgb(image, is_16bit)


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
    """Decode image bytes into a fully loaded RGB PIL image, or raise BadImageError.

    Grayscale, CMYK, palette, alpha and 16-bit images all come back as 8-bit RGB. Images
    over PIL's MAX_IMAGE_PIXELS are rejected before decoding (a few KB file can otherwise
    expand to tens of GB). PIL's warnings (decompression bomb, corrupt EXIF/TIFF metadata)
    are silenced here: on a dataset of a million web images they would flood the log while
    saying nothing the result does not already say. The warning filter is process-wide for
    the duration of the call, which is fine for DataLoader worker processes.
    EXIF orientation is not applied, matching how ImageNet models are usually trained.
    """
    if not data:
        raise bad_image(path, "empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _open_loaded(data, path)
        except BadImageError:
            raise
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
            raise bad_image(path, _decode_failure_reason(err, data)) from None


# ---------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------


def read_file(path: str) -> bytes:
    """The file's bytes; an unreadable file is a bad image like an undecodable one."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise bad_image(path, f"cannot read: {_one_line(err.strerror or err)}") from None


def _split_key(key):
    """``key`` is an index or an (index, seed) pair; returns (index, seed or None)."""
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise TypeError(f"dataset key must be an index or an (index, seed) pair, got {key!r}")
        return operator.index(key[0]), operator.index(key[1])
    return operator.index(key), None


def run_seeded(fn, seed: int):
    """Call ``fn()`` with torch, python and numpy RNGs seeded by ``seed``, then put the
    caller's RNG states back.

    Seeding per sample makes augmentation depend only on (index, seed), not on which
    worker or process loads the sample or in which order, so runs and resumed runs are
    reproducible; restoring the states leaves the caller's own random streams untouched.
    Only the CPU generator is seeded: torch.manual_seed would also reseed the GPU
    generators, which fork_rng(devices=[]) does not restore, so loading data in the main
    process of a GPU run would keep resetting the model's GPU random stream.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
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

    ``samples`` is a FileList (what list_splits and build_file_list return) or any sequence
    of (path, label) pairs, which is stored as a FileList: DataLoader workers then read it
    without copying it (see FileList). ``targets`` is the labels' int64 numpy array.

    ``transform(data, path)`` receives the raw file bytes and decodes them itself (so it
    can choose e.g. a reduced-size JPEG decode), raising BadImageError for bad files.
    ``bad_images`` is "error" (raise) or "skip" (log once, use the next good sample).
    """

    def __init__(self, samples, classes: list[str], transform, bad_images: str = "error"):
        if bad_images not in ("error", "skip"):
            raise DataError(f"--bad-images must be 'error' or 'skip', got {bad_images!r}")
        self.samples = samples if isinstance(samples, FileList) else FileList.from_pairs(samples)
        self.classes = list(classes)
        self.targets = self.samples.targets
        self.transform = transform
        self.bad_images = bad_images
        # Per process (each DataLoader worker has its own copy): a bad file is reported
        # once rather than every epoch it is drawn.
        self._reported_bad = set()

    def __len__(self):
        return len(self.samples)

    def _load(self, index, seed):
        path, target = self.samples[index]
        data = read_file(path)
        if seed is None:
            return self.transform(data, path), target
        return run_seeded(lambda: self.transform(data, path), seed), target

    def _report_skip(self, err):
        path = err.path if err.path is not None else str(err)
        if path in self._reported_bad:
            return
        self._reported_bad.add(path)
        reason = err.reason if err.reason is not None else str(err)
        sys.stderr.write(f"skipping bad image {path}: {reason}\n")
        sys.stderr.flush()

    def __getitem__(self, key):
        index, seed = _split_key(key)
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        attempts = min(MAX_BAD_IN_A_ROW, n)
        last = None
        for step in range(attempts):
            try:
                output, target = self._load((index + step) % n, seed)
                return output, target, step
            except BadImageError as err:
                if self.bad_images == "error":
                    raise
                self._report_skip(err)
                last = err
        detail = f"{last.path}: {last.reason}" if last.path is not None else str(last)
        raise DataError(
            f"{attempts} bad images in a row starting at {self.samples[index][0]} "
            f"(last: {detail}); check the data with --verify-data"
        )


# ---------------------------------------------------------------------------------------
# Verification command
# ---------------------------------------------------------------------------------------


def _verify_file(path):
    """(path, reason) for an unreadable file, (path, None) for a good one. Never raises:
    one odd file must not end a scan of a million."""
    try:
        decode_pil(read_file(path), path)
        return path, None
    except BadImageError as err:
        return path, err.reason or str(err)
    except Exception as err:
        return path, f"cannot decode: {_one_line(err) or type(err).__name__}"


class _Progress:
    """Count, rate and ETA on one stderr line. On a terminal it redraws in place; in a log
    file it writes a new line only every ``log_interval`` seconds to avoid a flood."""

    def __init__(self, label, total, stream, enabled=True, tty_interval=0.5, log_interval=30.0):
        self.label, self.total, self.stream, self.enabled = label, total, stream, enabled
        self.is_tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.interval = tty_interval if self.is_tty else log_interval
        self.done = 0
        self.start = time.monotonic()
        self.last_draw = self.start

    def _line(self, now):
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = metrics.format_hms((self.total - self.done) / rate if rate > 0 else None)
        return f"verify {self.label}: {self.done:,}/{self.total:,} ({pct:.1f}%) {rate:,.0f} img/s ETA {eta}"

    def update(self, count=1):
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self.last_draw >= self.interval:
            self.last_draw = now
            self.stream.write(("\r" if self.is_tty else "") + self._line(now) + ("" if self.is_tty else "\n"))
            self.stream.flush()

    def close(self):
        if self.enabled:
            elapsed = time.monotonic() - self.start
            prefix = "\r" if self.is_tty else ""
            self.stream.write(f"{prefix}{self._line(time.monotonic())} done in {metrics.format_hms(elapsed)}\n")
            self.stream.flush()


def default_workers(processes_per_node: int = 1) -> int:
    """Worker processes for one of `processes_per_node` processes on this node: the CPU cores this process may
    use (its affinity mask, which SLURM and containers narrow, not the machine's count) shared evenly, at least
    1, and at most 16, beyond which more workers mostly add memory and start-up time."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores // max(1, processes_per_node)))


def _decode_all(paths, workers, progress):
    """Run _verify_file over ``paths``; return the bad (path, reason) pairs, sorted."""
    bad = []
    if workers <= 1 or len(paths) <= 1:
        results = map(_verify_file, paths)
        for path, reason in results:
            progress.update()
            if reason is not None:
                bad.append((path, reason))
        return sorted(bad)
    import multiprocessing

    workers = min(workers, len(paths))
    # Chunks amortise inter-process overhead; keeping ~8 chunks per worker keeps the load
    # balanced when some files are much larger than others.
    chunksize = max(1, min(64, len(paths) // (workers * 8)))
    with multiprocessing.Pool(workers) as pool:
        for path, reason in pool.imap_unordered(_verify_file, paths, chunksize=chunksize):
            progress.update()
            if reason is not None:
                bad.append((path, reason))
    return sorted(bad)


def verify_dataset(data_path: str, workers: int | None = None, progress: bool = True) -> dict:
    """Check the layout, then decode every train and val image in a process pool.

    Returns {"data_path": ..., "splits": {split: {"images": n, "classes": k, "bad": [(path, reason), ...]}}}.
    Raises DataError for layout problems. ``workers=0`` decodes in this process.
    """
    classes, lists = list_splits(data_path)
    workers = default_workers() if workers is None else int(workers)
    report = {"data_path": data_path, "splits": {}}
    for split, files in lists.items():
        paths = [path for path, _ in files]
        bar = _Progress(split, len(paths), sys.stderr, enabled=progress)
        bad = _decode_all(paths, workers, bar)
        bar.close()
        report["splits"][split] = {"images": len(paths), "classes": len(classes), "bad": bad}
    return report


def format_verify_report(report: dict) -> str:
    """Human-readable summary: counts per split, class count, every unreadable file, and,
    for ImageNet's 1000 classes, whether the counts match the official ImageNet-1k splits."""
    lines = []
    if report.get("data_path"):
        lines.append(f"dataset {report['data_path']}")
    n_bad = 0
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
        n_bad += len(info["bad"])
    if n_bad:
        lines.append(f"{n_bad} unreadable file(s):")
        for split, info in report["splits"].items():
            lines.extend(f"  {path}: {reason}" for path, reason in info["bad"])
        lines.append("remove or replace them, or train with --bad-images skip")
    else:
        lines.append("all images decoded cleanly")
    return "\n".join(lines)


def run_verify(data_path: str, workers: int | None = None) -> int:
    """The --verify-data command: print the report; exit code 0 clean, 1 unreadable files,
    2 layout error (printed as one line)."""
    try:
        report = verify_dataset(data_path, workers=workers, progress=True)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_verify_report(report))
    bad = sum(len(info["bad"]) for info in report["splits"].values())
    return 1 if bad else 0


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Check an ImageNet-style dataset: layout and every image decodes.")
    parser.add_argument("data_path", help="folder with train/<class>/*.JPEG and val/<class>/*.JPEG")
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: the CPU cores this process may use, at most 16)")
    args = parser.parse_args(argv)
    return run_verify(args.data_path, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
