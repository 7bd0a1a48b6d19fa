"""Start-up time and DataLoader-worker memory at ImageNet scale, on a synthetic tree of empty files.

    python benchmarks/scale.py                       # 1000 classes, 1,281,167 files (ImageNet train)
    python benchmarks/scale.py --quick               # 100 classes x 128 files, seconds
    python benchmarks/scale.py --classes 1000 --per-class 300 --root /scratch/tree --json scale.json

Builds <root>/train/<class>/<name>.JPEG as empty files (only names matter here: nothing is decoded) in
--root, or in a temporary folder removed at the end. A --root that already holds a complete tree of the
requested size is reused. Then it measures:

(a) Start-up: the time to have the training file list, for
    * ours, one scan: datasets.list_splits, the layout check and the file list in one pass over the folders;
    * ours, fresh cache: list_splits with a --cache-dataset file written by a previous scan (no listing);
    * torchvision.datasets.ImageFolder on the same split (its own listing, no layout checks).
    "first" is the first run of each after the tree was created, "warm" the median of --repeats more runs
    (alternating). Dropping the kernel's page, dentry and inode caches between runs needs root and a
    writable /proc/sys/vm/drop_caches; with --drop-caches the script tries, before each "first" run, and
    says whether it could. Without it, "first" runs still find the tree's metadata cached from its
    creation, so they are not cold-disk figures; the script says so in its output.

(b) Worker memory: a DataLoader worker is a fork of the main process, and every object it reads has its
    reference count written, which copies the page holding it (copy-on-write). A forked child reads every
    entry of the file list once in random order (one epoch) and reports how much its private memory
    (Private_Dirty in /proc/self/smaps_rollup) grew, for ours (datasets.FileList) and, as the control in
    the same run, the same entries as a plain list of (path, label) tuples (what the file list used to be).
    Target: under 20 MB per epoch for ours at 1.28 M entries.

Measured on this project's 2-core CPU machine (local disk, shared with other jobs, so +-30% between runs),
full ImageNet train size: creating the tree took 21 s. Start-up, caches dropped before each first run /
warm: one scan 5.7-6.6 s / 2.2-4.5 s, fresh cache 0.7-0.9 s / 0.2-0.4 s (a 42 MB file), torchvision's
ImageFolder 8.1-9.5 s / 3.8-5.0 s; the code before (layout check and file list as two scans) took 6-8 s
warm, and 3-7 s with its cache (a check scan, then 1.28 M JSON pairs). Worker memory per epoch: ours
0.09 MB (the list itself is 55 MB, shared), the list of tuples 245.8 MB (228 MB of Python objects).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMAGENET_CLASSES = 1000
IMAGENET_TRAIN_FILES = 1_281_167  # prepare_imagenet.OFFICIAL_SPLIT_SIZES["train"]
QUICK_CLASSES, QUICK_PER_CLASS = 100, 128
TARGET_GROWTH_MB = 20.0
_TREE_MARKER = ".scale_tree.json"  # hidden: never taken for a split or a class


def _project():
    """The repository's datasets module (main() puts the repository root on the path)."""
    import datasets

    return datasets


# ---------------------------------------------------------------------------------------
# The synthetic tree
# ---------------------------------------------------------------------------------------


def class_counts(classes: int, per_class: int | None, total: int = IMAGENET_TRAIN_FILES) -> list[int]:
    """Files per class: ``per_class`` each, or ``total`` spread as evenly as possible."""
    if per_class is not None:
        return [per_class] * classes
    base, extra = divmod(total, classes)
    return [base + (c < extra) for c in range(classes)]


def build_tree(root: str, counts: list[int], progress=None) -> tuple[str, bool]:
    """Create <root>/train/<class>/<name>.JPEG, empty; (split folder, whether it was created now).

    An existing tree with the same counts (recorded in a marker file written last) is reused."""
    split_dir = os.path.join(root, "train")
    marker = os.path.join(root, _TREE_MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            if json.load(f).get("counts") == counts:
                return split_dir, False
    except (OSError, ValueError):
        pass
    if os.path.exists(split_dir):
        raise SystemExit(f"error: --root {root} already has a train/ folder of another size; "
                         f"give an empty or new folder")
    start = time.monotonic()
    done, total = 0, sum(counts)
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    for c, count in enumerate(counts):
        name = f"n{c:08d}"
        class_dir = os.path.join(split_dir, name)
        os.makedirs(class_dir)
        for i in range(count):
            os.close(os.open(os.path.join(class_dir, f"{name}_{i}.JPEG"), flags, 0o644))
        done += count
        if progress is not None and (c + 1) % 50 == 0:
            elapsed = time.monotonic() - start
            progress(f"created {done:,}/{total:,} files in {elapsed:.0f} s")
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"counts": counts}, f)
    return split_dir, True


# ---------------------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------------------


def drop_caches() -> bool:
    """Write back dirty data, then drop the page, dentry and inode caches; False when not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure_startup(root: str, cache_file: str, repeats: int, try_drop: bool) -> dict:
    """Seconds to get the train file list: ours (scan, fresh cache) and torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder

    datasets = _project()
    split_dir = os.path.join(root, "train")
    listers = {
        "ours_scan": lambda: datasets.list_splits(root, ("train",))[1]["train"],
        "torchvision": lambda: ImageFolder(split_dir).samples,
    }
    first, dropped, sizes = {}, [], {}
    for name, fn in listers.items():
        if try_drop:
            dropped.append(drop_caches())
        first[name], files = _timed(fn)
        sizes[name] = len(files)
        del files
    # The cache: written by one scan (timed as well: the cost of the first --cache-dataset run),
    # then read back without listing.
    def with_cache():
        return datasets.list_splits(root, ("train",), cache_files={"train": cache_file})[1]["train"]

    if os.path.exists(cache_file):
        os.remove(cache_file)
    scan_and_write, _ = _timed(with_cache)
    listers["ours_cache"] = with_cache
    if try_drop:
        dropped.append(drop_caches())
    first["ours_cache"], files = _timed(with_cache)
    sizes["ours_cache"] = len(files)
    del files
    if len(set(sizes.values())) != 1:
        raise SystemExit(f"error: the listers disagree on the number of files: {sizes}")

    runs = {name: [] for name in listers}
    order = list(listers)
    for r in range(repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            seconds, files = _timed(listers[name])
            runs[name].append(seconds)
            del files
    if not try_drop:
        page_cache = "not dropped (not asked: --drop-caches)"
    elif all(dropped):
        page_cache = "dropped before each first run"
    else:
        page_cache = "not dropped (writing /proc/sys/vm/drop_caches was refused)"
    return {
        "files": sizes["ours_scan"],
        "first_s": {k: round(v, 6) for k, v in first.items()},
        "warm_s": {k: round(statistics.median(v), 6) for k, v in runs.items()},
        "scan_and_cache_write_s": round(scan_and_write, 6),
        "cache_file_mb": round(os.path.getsize(cache_file) / 2**20, 1),
        "page_cache": page_cache,
    }


# ---------------------------------------------------------------------------------------
# Worker memory
# ---------------------------------------------------------------------------------------


def private_dirty_kb() -> int | None:
    """This process's private dirty memory (pages written since fork, and its own), in KiB."""
    for path in ("/proc/self/smaps_rollup", "/proc/self/smaps"):
        try:
            with open(path) as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))
        except OSError:
            continue
    return None


def forked_read_growth_mb(samples, seed: int = 0) -> float:
    """MiB a forked child's private memory grows by while reading every (path, label) of
    ``samples`` once, in random order: what one DataLoader worker pays per epoch for the list."""
    if private_dirty_kb() is None:
        raise RuntimeError("needs /proc/self/smaps_rollup or /proc/self/smaps (Linux)")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, send one line, exit without running any parent cleanup
        status = 0
        try:
            os.close(read_fd)
            order = np.random.default_rng(seed).permutation(len(samples))  # allocated before "before"
            before = private_dirty_kb()
            for i in order:
                path, label = samples[i]
            after = private_dirty_kb()
            message = f"{after - before}"
        except BaseException as err:  # report anything to the parent rather than die silently
            message, status = f"error: {type(err).__name__}: {err}", 1
        try:
            os.write(write_fd, message.encode())
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    if message.startswith("error") or not message:
        raise RuntimeError(f"forked reader failed: {message or 'no answer'}")
    return int(message) / 1024


def python_list_mb(pairs: list) -> float:
    """Approximate memory of a list of (str, int) tuples: the list, the tuples, the strings and ints."""
    total = sys.getsizeof(pairs)
    seen_ints = set()
    for pair in pairs:
        total += sys.getsizeof(pair) + sys.getsizeof(pair[0])
        if id(pair[1]) not in seen_ints:  # small ints are shared
            seen_ints.add(id(pair[1]))
            total += sys.getsizeof(pair[1])
    return total / 2**20


def measure_memory(root: str, seed: int = 0) -> dict:
    """Private memory growth of a forked reader over one epoch: FileList vs a list of tuples, same run."""
    datasets = _project()
    files = datasets.list_splits(root, ("train",))[1]["train"]
    control = list(files)  # what ImageFolderDataset held before: a list of tuples...
    control_targets = [label for _, label in control]  # ...and a list of targets
    ours_mb = forked_read_growth_mb(files, seed)
    control_mb = forked_read_growth_mb(control, seed)
    del control_targets
    return {
        "entries": len(files),
        "ours_size_mb": round(files.nbytes / 2**20, 3),
        "control_size_mb": round(python_list_mb(control), 3),
        "ours_growth_mb": round(ours_mb, 3),
        "control_growth_mb": round(control_mb, 3),
    }


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def format_report(tree: dict, startup: dict, memory: dict | str) -> str:
    """The tables; ``memory`` is measure_memory's result, or why it was not measured."""
    lines = [
        f"tree: {tree['files']:,} empty files in {tree['classes']} classes under {tree['split_dir']} "
        + (f"(created in {tree['create_s']:.1f} s)" if tree["created"] else "(reused)"),
        f"page cache: {startup['page_cache']}"
        + ("" if startup["page_cache"].startswith("dropped") else
           "; so 'first' runs are not cold-disk figures: the tree's metadata was still cached "
           "(from its creation, or from earlier runs on a reused tree)"),
        "",
        f"{'start-up, train file list':<44}{'first (s)':>10}{'warm (s)':>10}",
    ]
    labels = {"ours_scan": "ours: one scan (layout check + file list)",
              "ours_cache": "ours: fresh --cache-dataset file, no listing",
              "torchvision": "torchvision ImageFolder (listing only)"}
    for key, label in labels.items():
        lines.append(f"{label:<44}{startup['first_s'][key]:>10.3f}{startup['warm_s'][key]:>10.3f}")
    lines.append(f"(first cached start: scan + cache write {startup['scan_and_cache_write_s']:.3f} s; "
                 f"cache file {startup['cache_file_mb']} MB; warm = median of the repeats)")
    if isinstance(memory, str):
        lines.append(f"worker memory: not measured ({memory})")
        return "\n".join(lines)
    lines += [
        "",
        f"worker memory: private memory a forked reader gains over one epoch of random reads "
        f"({memory['entries']:,} entries)",
        f"{'file list':<32}{'size (MB)':>12}{'growth (MB)':>14}",
        f"{'ours (datasets.FileList)':<32}{memory['ours_size_mb']:>12.1f}{memory['ours_growth_mb']:>14.2f}",
        f"{'control: list of tuples':<32}{memory['control_size_mb']:>12.1f}{memory['control_growth_mb']:>14.2f}",
    ]
    ours = memory["ours_growth_mb"]
    ratio = memory["control_growth_mb"] / ours if ours > 0 else float("inf")
    met = "met" if ours < TARGET_GROWTH_MB else "NOT met"
    lines.append(f"ratio control / ours: {ratio:,.0f}x; target under {TARGET_GROWTH_MB:g} MB per epoch: {met}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=None, help=f"class folders (default {IMAGENET_CLASSES})")
    parser.add_argument("--per-class", type=int, default=None,
                        help=f"files per class (default: {IMAGENET_TRAIN_FILES:,} spread over the classes)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small run: {QUICK_CLASSES} classes x {QUICK_PER_CLASS} files unless given")
    parser.add_argument("--root", help="folder to build the tree in and keep (default: a temporary folder, removed)")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs of each lister (default 3)")
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the kernel's caches before each first run (needs root; slows the whole machine)")
    parser.add_argument("--skip-memory", action="store_true", help="measure start-up only")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.classes is None:
        args.classes = QUICK_CLASSES if args.quick else IMAGENET_CLASSES
    if args.per_class is None and args.quick:
        args.per_class = QUICK_PER_CLASS
    if args.classes < 1 or (args.per_class is not None and args.per_class < 1) or args.repeats < 1:
        parser.error("--classes, --per-class and --repeats must be at least 1")
    if args.per_class is None and args.classes > IMAGENET_TRAIN_FILES:
        parser.error(f"--classes {args.classes} is more than {IMAGENET_TRAIN_FILES:,} files; give --per-class")
    return args


def main(argv=None):
    args = parse_args(argv)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    counts = class_counts(args.classes, args.per_class)
    owned = args.root is None
    root = tempfile.mkdtemp(prefix="scale-") if owned else os.path.abspath(args.root)
    try:
        os.makedirs(root, exist_ok=True)
        start = time.monotonic()
        split_dir, created = build_tree(root, counts, progress=lambda line: print(line, file=sys.stderr, flush=True))
        tree = {"files": sum(counts), "classes": len(counts), "split_dir": split_dir, "created": created,
                "create_s": round(time.monotonic() - start, 1)}
        with tempfile.TemporaryDirectory(prefix="scale-cache-") as cache_dir:
            startup = measure_startup(root, os.path.join(cache_dir, "train.json"), args.repeats, args.drop_caches)
        if args.skip_memory:
            memory = "--skip-memory"
        elif not hasattr(os, "fork") or private_dirty_kb() is None:
            memory = "needs fork and /proc/self/smaps (Linux)"
        else:
            memory = measure_memory(root)
        print(format_report(tree, startup, memory))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"tree": tree, "startup": startup, "memory": memory if isinstance(memory, dict) else None},
                          f, indent=1)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
