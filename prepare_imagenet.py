"""Turn the official ILSVRC2012 downloads into the folder layout the trainer reads.

    python prepare_imagenet.py --source DOWNLOADS --output data/imagenet
    python prepare_imagenet.py --train-tar T.tar --val-tar V.tar --devkit D.tar.gz --output OUT
    python prepare_imagenet.py --val-dir val_flat/ --devkit D.tar.gz --split val --output OUT
    python prepare_imagenet.py --check-only --devkit D.tar.gz --output OUT

OUT/train/<wnid>/ comes from the tar of per-class tars, OUT/val/<wnid>/ from the flat val tar (or folder) labelled
with the devkit's ground truth. The archives are read member by member, never unpacked whole (the train tar is
~140 GB). A rerun resumes: each train class is written into `<wnid>.partial` and renamed once complete, each val
image is written to a temporary name and renamed. The run ends by checking class folders and image counts against
the devkit, or the official totals without one. Exit codes: 0 complete, 1 incomplete (the report says what is
missing), 2 bad input or I/O error (one line naming the file), 130 interrupted.

Reading meta.mat needs scipy; the rest is the standard library and this folder's torch-free fileio and metrics.
"""

import argparse
import collections
import dataclasses
import functools
import io
import os
import posixpath
import re
import shutil
import sys
import tarfile
import time
import zlib

import fileio
import metrics

# The official ILSVRC2012 (ImageNet-1k) sizes: what a run without devkit checks, what tells a devkit of another
# dataset, and what --verify-data compares a copy with.
OFFICIAL_NUM_CLASSES = 1000
OFFICIAL_SPLIT_SIZES = {"train": 1_281_167, "val": 50_000}

TRAIN_TAR_NAME = "ILSVRC2012_img_train.tar"
VAL_TAR_NAME = "ILSVRC2012_img_val.tar"
DEVKIT_NAME = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR_NAME = "ILSVRC2012_devkit_t12"
META_PATH = "data/meta.mat"
GROUND_TRUTH_PATH = "data/ILSVRC2012_validation_ground_truth.txt"

PARTIAL_SUFFIX = ".partial"
VAL_NAME_RE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")

# Errors that tarfile, gzip and zlib raise on a damaged or non-tar file.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error)

_PROG = "prepare_imagenet"


class BadInput(Exception):
    """An input file or option is missing, unreadable or malformed (exit code 2); one line naming it."""


def first_few(items, limit=10):
    """'a, b, c' or 'a, b, c and 7 more': long lists stay readable in one line."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class ProgressBar:
    """One line: count, percent, rate, elapsed time and ETA.

    Drawn at most every `min_interval` seconds (once per image would cost more than writing it): in place on a
    terminal, as a new line (every 30 s) in a log. Work an earlier run did (`skip`) moves the count but not the
    rate, so a resumed run shows an honest ETA.
    """

    def __init__(self, total, label, stream=None, min_interval=None, clock=time.monotonic, enabled=True):
        self.total, self.label, self.enabled, self.clock = total, label, enabled, clock
        self.stream = sys.stderr if stream is None else stream
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = (0.25 if self._tty else 30.0) if min_interval is None else min_interval
        self.count = self.skipped = 0
        self._start = clock()
        self._last_draw = None

    def advance(self, n=1):
        """Record `n` items processed by this run."""
        self.count += n
        self._maybe_draw()

    def skip(self, n=1):
        """Record `n` items that an earlier run already finished."""
        self.count += n
        self.skipped += n
        self._maybe_draw()

    def render(self):
        elapsed = max(self.clock() - self._start, 1e-9)
        rate = (self.count - self.skipped) / elapsed
        percent = 100.0 * self.count / self.total if self.total else 100.0
        eta = metrics.format_hms(max(self.total - self.count, 0) / rate if rate > 0 else None)
        return (f"{self.label}: {self.count:,}/{self.total:,} {percent:5.1f}% "
                f"{rate:,.1f}/s elapsed {metrics.format_hms(elapsed)} ETA {eta}")

    def _maybe_draw(self):
        now = self.clock()
        if self.enabled and (self._last_draw is None or now - self._last_draw >= self.min_interval):
            self._last_draw = now
            self._draw()

    def _draw(self):
        self.stream.write("\r" + self.render().ljust(79) if self._tty else self.render() + "\n")
        self.stream.flush()

    def close(self):
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw()
            if self._tty:
                self.stream.write("\n")
                self.stream.flush()


# --------------------------------------------------------------------------- devkit


@dataclasses.dataclass(frozen=True)
class Devkit:
    id_to_wnid: dict  # ILSVRC2012_ID (1..1000) -> WNID, leaf synsets only
    train_counts: object  # WNID -> number of train images, or None if meta.mat lacks them
    val_labels: list  # WNID of val image i+1 (ILSVRC2012_val_{i+1:08d}.JPEG)


def _scalar(value):
    """Unwrap the nested 1x1 arrays that loadmat returns for MATLAB struct fields."""
    import numpy as np  # scipy depends on numpy; kept local so import stays cheap

    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"expected a single value, got shape {array.shape}")
    item = array.reshape(-1)[0]
    if isinstance(item, np.ndarray):  # object arrays can wrap one more level
        return _scalar(item)
    return item.item() if isinstance(item, np.generic) else item


def parse_meta(data, source):
    """(id_to_wnid, train_counts) from meta.mat's bytes: of its 1860 synsets, those without children
    (ILSVRC2012_ID 1..1000) are the classes; num_train_images gives the per-class train counts."""
    try:
        import scipy.io
    except ImportError:
        raise BadInput(f"reading {source} needs scipy: pip install scipy") from None
    try:
        mat = scipy.io.loadmat(io.BytesIO(data))
    except Exception as exc:  # scipy raises several unrelated types on a bad file
        raise BadInput(f"{source}: not a readable MATLAB file ({exc})") from exc
    if "synsets" not in mat:
        raise BadInput(f"{source}: no 'synsets' variable; is this the ILSVRC2012 devkit's meta.mat?")
    synsets = mat["synsets"].reshape(-1)
    fields = synsets.dtype.names or ()
    for needed in ("ILSVRC2012_ID", "WNID", "num_children"):
        if needed not in fields:
            raise BadInput(f"{source}: synsets lack the field {needed!r}")
    id_to_wnid, counts = {}, {}
    try:
        for synset in synsets:
            if int(_scalar(synset["num_children"])) != 0:
                continue
            class_id = int(_scalar(synset["ILSVRC2012_ID"]))
            wnid = str(_scalar(synset["WNID"]))
            if class_id in id_to_wnid:
                raise BadInput(f"{source}: ILSVRC2012_ID {class_id} appears twice")
            id_to_wnid[class_id] = wnid
            if "num_train_images" in fields:
                counts[wnid] = int(_scalar(synset["num_train_images"]))
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{source}: unexpected synsets layout ({exc})") from exc
    if not id_to_wnid:
        raise BadInput(f"{source}: no leaf synsets (num_children == 0) found")
    if sorted(id_to_wnid) != list(range(1, len(id_to_wnid) + 1)):
        raise BadInput(f"{source}: leaf ILSVRC2012_IDs are not 1..{len(id_to_wnid)}")
    if len(set(id_to_wnid.values())) != len(id_to_wnid):
        raise BadInput(f"{source}: a WNID appears for two ILSVRC2012_IDs")
    # Missing or zero counts mean this meta.mat cannot tell us per-class expectations.
    train_counts = counts if counts and all(n > 0 for n in counts.values()) else None
    return id_to_wnid, train_counts


def parse_ground_truth(text, id_to_wnid, source):
    """Map the ground-truth lines (one ILSVRC2012_ID per val image) to WNIDs."""
    labels = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            class_id = int(line)
        except ValueError:
            raise BadInput(f"{source}:{line_number}: {line!r} is not an ILSVRC2012_ID") from None
        if class_id not in id_to_wnid:
            raise BadInput(f"{source}:{line_number}: ILSVRC2012_ID {class_id} is not a class in meta.mat")
        labels.append(id_to_wnid[class_id])
    if not labels:
        raise BadInput(f"{source}: no labels")
    return labels


def _read_devkit_files(path):
    """Return (meta_bytes, ground_truth_bytes) from a devkit tar(.gz) or extracted folder."""
    if os.path.isdir(path):
        for base in (path, os.path.join(path, DEVKIT_DIR_NAME)):
            meta = os.path.join(base, *META_PATH.split("/"))
            truth = os.path.join(base, *GROUND_TRUTH_PATH.split("/"))
            if os.path.isfile(meta) and os.path.isfile(truth):
                with open(meta, "rb") as f_meta, open(truth, "rb") as f_truth:
                    return f_meta.read(), f_truth.read()
        raise BadInput(f"{path}: no {META_PATH} and {GROUND_TRUTH_PATH} inside; "
                       f"pass {DEVKIT_NAME} or its extracted folder")
    if not os.path.isfile(path):
        raise BadInput(f"{path}: no such devkit file (--devkit)")
    wanted = {META_PATH: None, GROUND_TRUTH_PATH: None}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                check_member_name(member.name, path)
                for suffix in wanted:
                    if member.isfile() and (member.name == suffix or member.name.endswith("/" + suffix)):
                        wanted[suffix] = tar.extractfile(member).read()
    except _ARCHIVE_ERRORS + (OSError,) as exc:
        raise BadInput(f"{path}: not a readable tar archive ({exc})") from exc
    for suffix, data in wanted.items():
        if data is None:
            raise BadInput(f"{path}: no {suffix} inside; is this {DEVKIT_NAME}?")
    return wanted[META_PATH], wanted[GROUND_TRUTH_PATH]


def read_devkit(path):
    """Read the class list, train counts and val labels from the devkit at `path`."""
    meta_bytes, truth_bytes = _read_devkit_files(path)
    id_to_wnid, train_counts = parse_meta(meta_bytes, f"{path}: {META_PATH}")
    try:
        truth_text = truth_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: {GROUND_TRUTH_PATH} is not a text file") from None
    val_labels = parse_ground_truth(truth_text, id_to_wnid, f"{path}: {GROUND_TRUTH_PATH}")
    return Devkit(id_to_wnid=id_to_wnid, train_counts=train_counts, val_labels=val_labels)


# --------------------------------------------------------------------------- writing


def check_member_name(name, archive):
    """Reject archive member names that could write outside the output folder."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise BadInput(f"{archive}: unsafe member name {name!r} (absolute or with '..'); refusing to read this archive")


def count_images(folder):
    """Finished files in a class folder; hidden names are temporary files."""
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.is_file() and not e.name.startswith("."))


def _remove_temp_files(split_dir):
    """Delete the hidden .tmp files a killed run left in `split_dir`'s class folders: their images are written
    again, under new temporary names."""
    for folder, _, names in os.walk(split_dir):
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(folder, name))


@dataclasses.dataclass
class TrainResult:
    written: list = dataclasses.field(default_factory=list)  # classes extracted by this run
    skipped: list = dataclasses.field(default_factory=list)  # classes finished earlier
    redone: list = dataclasses.field(default_factory=list)  # leftover .partial classes redone
    images: int = 0  # images written by this run
    ignored: list = dataclasses.field(default_factory=list)  # outer members that are not <wnid>.tar


def prepare_train(train_tar, out_dir, progress):
    """Write OUT/train/<wnid>/ from the outer train tar; returns a TrainResult.

    The outer tar is opened for random access ("r:"), not as a stream, so that a resumed run seeks over the
    classes it finished instead of reading through their ~100 GB; each per-class tar is streamed ("r|") straight
    from its member.
    """
    train_dir = os.path.join(out_dir, "train")
    os.makedirs(train_dir, exist_ok=True)
    result = TrainResult()
    current = train_tar
    try:
        with tarfile.open(train_tar, mode="r:") as outer:
            for member in outer:
                current = f"{train_tar}: {member.name}"
                check_member_name(member.name, train_tar)
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                if not base.endswith(".tar") or base.startswith("."):
                    result.ignored.append(member.name)
                    continue
                wnid = base[:-len(".tar")]
                final = os.path.join(train_dir, wnid)
                if os.path.isdir(final):
                    progress.skip(count_images(final))
                    result.skipped.append(wnid)
                    continue
                partial = final + PARTIAL_SUFFIX
                if os.path.exists(partial):
                    shutil.rmtree(partial)
                    result.redone.append(wnid)
                os.makedirs(partial)
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                    for item in inner:
                        check_member_name(item.name, current)
                        if item.isfile():
                            with open(os.path.join(partial, posixpath.basename(item.name)), "wb") as out:
                                shutil.copyfileobj(inner.extractfile(item), out)
                            result.images += 1
                            progress.advance(1)
                # The rename is what marks the class finished; before it, a rerun redoes it.
                os.rename(partial, final)
                result.written.append(wnid)
    except _ARCHIVE_ERRORS as exc:
        raise BadInput(f"{current}: not a readable tar archive ({exc})") from exc
    return result


@dataclasses.dataclass
class ValResult:
    written: int = 0  # images written by this run
    skipped: int = 0  # images an earlier run already wrote
    unrecognised: list = dataclasses.field(default_factory=list)  # names not ILSVRC2012_val_*.JPEG


def prepare_val(source, val_labels, out_dir, progress):
    """Write OUT/val/<wnid>/ from the flat val tar (streamed in one pass) or an extracted flat folder; returns a
    ValResult. An image is done when it exists with its size; each is written atomically."""
    val_dir = os.path.join(out_dir, "val")
    _remove_temp_files(val_dir)
    result = ValResult()

    def place(name, size, open_source):
        match = VAL_NAME_RE.fullmatch(posixpath.basename(name))
        if match is None:
            result.unrecognised.append(name)
            return
        index = int(match.group(1))
        if not 1 <= index <= len(val_labels):
            raise BadInput(f"{source}: {posixpath.basename(name)} has no label; the devkit ground truth lists "
                           f"{len(val_labels)} images")
        dest = os.path.join(val_dir, val_labels[index - 1], posixpath.basename(name))
        if os.path.isfile(dest) and os.path.getsize(dest) == size:
            result.skipped += 1
            progress.skip(1)
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open_source() as src:
            fileio.atomic_write(dest, lambda out: shutil.copyfileobj(src, out))
        result.written += 1
        progress.advance(1)

    if os.path.isdir(source):
        with os.scandir(source) as entries:
            names = sorted(e.name for e in entries if e.is_file())
        for name in names:
            path = os.path.join(source, name)
            place(name, os.path.getsize(path), functools.partial(open, path, "rb"))
        return result
    current = source
    try:
        with tarfile.open(source, mode="r|") as tar:
            for member in tar:
                current = f"{source}: {member.name}"
                check_member_name(member.name, source)
                if member.isfile():
                    place(member.name, member.size, functools.partial(tar.extractfile, member))
    except _ARCHIVE_ERRORS as exc:
        raise BadInput(f"{current}: not a readable tar archive ({exc})") from exc
    return result


# --------------------------------------------------------------------------- checking


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a finished split should contain; wnids and counts are None when unknown (no devkit): then only the
    totals are checked."""

    num_classes: int
    num_images: int
    wnids: object = None  # frozenset of class folder names
    counts: object = None  # dict wnid -> image count


def expectation_for(split, devkit):
    """Expected content of `split` ("train" or "val") from the devkit, else the official totals."""
    if devkit is None:
        return Expectation(OFFICIAL_NUM_CLASSES, OFFICIAL_SPLIT_SIZES[split])
    if split == "val":
        counts = dict(collections.Counter(devkit.val_labels))
        return Expectation(len(counts), sum(counts.values()), frozenset(counts), counts)
    wnids = frozenset(devkit.id_to_wnid.values())
    if devkit.train_counts is None:
        return Expectation(len(wnids), OFFICIAL_SPLIT_SIZES["train"], wnids)
    counts = dict(devkit.train_counts)
    return Expectation(len(counts), sum(counts.values()), wnids, counts)


@dataclasses.dataclass
class SplitReport:
    split: str
    expected: Expectation
    found: dict  # finished class folder -> image count
    missing: list  # expected classes without a finished folder
    extra: list  # finished folders that are not expected classes
    wrong_counts: list  # (wnid, found, expected) for classes with the wrong image count
    partial: list  # classes left as <wnid>.partial by an interrupted run

    @property
    def num_images(self):
        return sum(self.found.values())

    @property
    def complete(self):
        return (not self.missing and not self.extra and not self.wrong_counts and not self.partial
                and len(self.found) == self.expected.num_classes and self.num_images == self.expected.num_images)


def check_split(split_dir, split, expected):
    """Compare OUT/<split>/ with `expected`; returns a SplitReport."""
    found, partial = {}, []
    if os.path.isdir(split_dir):
        with os.scandir(split_dir) as entries:
            folders = sorted(e.name for e in entries if e.is_dir())
        for name in folders:
            if name.endswith(PARTIAL_SUFFIX):
                partial.append(name[:-len(PARTIAL_SUFFIX)])
            else:
                found[name] = count_images(os.path.join(split_dir, name))
    missing = sorted(expected.wnids - found.keys()) if expected.wnids is not None else []
    extra = sorted(found.keys() - expected.wnids) if expected.wnids is not None else []
    wrong = []
    if expected.counts is not None:
        wrong = [(w, found[w], expected.counts[w]) for w in sorted(found)
                 if w in expected.counts and found[w] != expected.counts[w]]
    return SplitReport(split, expected, found, missing, extra, wrong, partial)


def format_report(report):
    """A SplitReport in a few lines: totals, then exactly what differs."""
    exp = report.expected
    status = "complete" if report.complete else "INCOMPLETE"
    lines = [f"{report.split}: {report.num_images:,} of {exp.num_images:,} images, "
             f"{len(report.found):,} of {exp.num_classes:,} classes: {status}"]
    if report.missing:
        lines.append(f"  missing classes ({len(report.missing)}): {first_few(report.missing)}")
    if report.partial:
        lines.append(f"  unfinished classes ({len(report.partial)}; {PARTIAL_SUFFIX} folders, "
                     f"redone by a rerun): {first_few(report.partial)}")
    if report.wrong_counts:
        described = [f"{w} {n:,} of {e:,}" for w, n, e in report.wrong_counts]
        lines.append(f"  classes with the wrong image count ({len(report.wrong_counts)}; "
                     f"delete the folder and rerun to redo): {first_few(described)}")
    if report.extra:
        lines.append(f"  unexpected folders ({len(report.extra)}): {first_few(report.extra)}")
    if exp.wnids is None and not report.complete:
        lines.append("  (pass --devkit to name the missing classes)")
    return "\n".join(lines)


def devkit_note(devkit):
    """One line when the devkit does not describe the official dataset, else None."""
    train = sum(devkit.train_counts.values()) if devkit.train_counts else None
    if (len(devkit.id_to_wnid) == OFFICIAL_NUM_CLASSES and len(devkit.val_labels) == OFFICIAL_SPLIT_SIZES["val"]
            and train in (None, OFFICIAL_SPLIT_SIZES["train"])):
        return None
    train_text = f"{train:,}" if train is not None else "?"
    return (f"note: the devkit describes {len(devkit.id_to_wnid):,} classes, {train_text} train and "
            f"{len(devkit.val_labels):,} val images, not the official {OFFICIAL_NUM_CLASSES:,}, "
            f"{OFFICIAL_SPLIT_SIZES['train']:,} and {OFFICIAL_SPLIT_SIZES['val']:,}; checking against the devkit")


# --------------------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="prepare_imagenet.py",
        description="Lay out ILSVRC2012 as OUT/train/<wnid>/*.JPEG and OUT/val/<wnid>/*.JPEG. "
                    "Rerun the same command to resume an interrupted run.",
        epilog="exit codes: 0 complete, 1 incomplete (see report), 2 bad input or I/O error")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder that receives train/ and val/")
    parser.add_argument("--source", metavar="DIR",
                        help=f"folder holding {TRAIN_TAR_NAME}, {VAL_TAR_NAME} and {DEVKIT_NAME} "
                             "(options below override single files)")
    parser.add_argument("--train-tar", metavar="PATH", help=TRAIN_TAR_NAME)
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val-tar", metavar="PATH", help=VAL_TAR_NAME)
    val.add_argument("--val-dir", metavar="DIR", help="already extracted flat folder of ILSVRC2012_val_*.JPEG")
    parser.add_argument("--devkit", metavar="PATH",
                        help=f"{DEVKIT_NAME} or its extracted folder (needed for val; "
                             "for train it lets the check name missing classes)")
    parser.add_argument("--split", choices=("train", "val", "both"), default="both",
                        help="which split to prepare and check (default: both)")
    parser.add_argument("--check-only", action="store_true",
                        help="write nothing; only check OUT against the devkit or official totals")
    parser.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    return parser


def resolve_inputs(args):
    """(splits, train tar, val tar or folder, devkit) from --source and the explicit options; checks they exist."""
    splits = ("train", "val") if args.split == "both" else (args.split,)
    source = args.source
    if source is not None and not os.path.isdir(source):
        raise BadInput(f"--source {source}: no such folder")

    def in_source(name):
        return os.path.join(source, name) if source is not None else None

    train_tar = args.train_tar or in_source(TRAIN_TAR_NAME)
    val_tar = args.val_tar or in_source(VAL_TAR_NAME)
    devkit = args.devkit or next((path for path in map(in_source, (DEVKIT_NAME, DEVKIT_DIR_NAME))
                                  if path is not None and os.path.exists(path)), None)
    if devkit is not None and not os.path.exists(devkit):
        raise BadInput(f"--devkit {devkit}: no such file")
    if "val" in splits and devkit is None:
        raise BadInput(f"val needs the devkit: pass --devkit {DEVKIT_NAME} (or --split train)")
    if not args.check_only:
        if "train" in splits:
            if train_tar is None:
                raise BadInput("train needs --train-tar or --source (or --split val)")
            if not os.path.isfile(train_tar):
                raise BadInput(f"--train-tar {train_tar}: no such file")
        if "val" in splits:
            if args.val_dir is not None:
                if not os.path.isdir(args.val_dir):
                    raise BadInput(f"--val-dir {args.val_dir}: no such folder")
            elif val_tar is None:
                raise BadInput("val needs --val-tar, --val-dir or --source (or --split train)")
            elif not os.path.isfile(val_tar):
                raise BadInput(f"--val-tar {val_tar}: no such file")
    return splits, train_tar, args.val_dir or val_tar, devkit


def run(args, out=None, err=None):
    """Prepare and check the requested splits; returns the exit code (0 or 1)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    splits, train_tar, val_source, devkit_path = resolve_inputs(args)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise BadInput(f"--output {args.output}: exists and is not a folder")
    devkit = read_devkit(devkit_path) if devkit_path is not None else None
    if not args.check_only:
        os.makedirs(args.output, exist_ok=True)
        if "train" in splits:
            bar = ProgressBar(expectation_for("train", devkit).num_images, "train images", stream=err,
                              enabled=not args.no_progress)
            result = prepare_train(train_tar, args.output, bar)
            bar.close()
            print(f"train: classes written {len(result.written)} ({result.images:,} images), "
                  f"finished earlier {len(result.skipped)}, unfinished redone {len(result.redone)}", file=out)
            if result.ignored:
                print(f"train: ignored members that are not <wnid>.tar ({len(result.ignored)}): "
                      f"{first_few(result.ignored, 3)}", file=err)
        if "val" in splits:
            bar = ProgressBar(len(devkit.val_labels), "val images", stream=err, enabled=not args.no_progress)
            result = prepare_val(val_source, devkit.val_labels, args.output, bar)
            bar.close()
            print(f"val: images written {result.written:,}, already present {result.skipped:,}", file=out)
            if result.unrecognised:
                print(f"val: ignored files not named ILSVRC2012_val_<8 digits>.JPEG "
                      f"({len(result.unrecognised)}): {first_few(result.unrecognised, 3)}", file=err)
    note = devkit_note(devkit) if devkit is not None else None
    if note:
        print(note, file=out)
    complete = True
    for split in splits:
        report = check_split(os.path.join(args.output, split), split, expectation_for(split, devkit))
        print(format_report(report), file=out)
        complete = complete and report.complete
    return 0 if complete else 1


def main(argv=None):
    """Command-line entry point; returns the exit code instead of exiting."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on bad options
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return run(args)
    except BadInput as exc:
        message = str(exc).replace("\n", " ")
        print(f"{_PROG}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. disk full or no permission on the output folder
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{_PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{_PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
