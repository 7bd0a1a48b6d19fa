"""Writing files that survive a crash, a kill or a power loss: how every file that is read back (checkpoints,
summary.json, the file-list cache, prepared ImageNet images) is written, by :func:`atomic_write`:

1. into a hidden temporary file in the same folder (``os.replace`` is atomic only within one file system);
2. flushed and ``fsync``'d, so the data is on disk before the name points at it;
3. renamed over the final name with ``os.replace``: readers see the old file or the new one, never half of one;
4. the folder ``fsync``'d, so the rename itself survives a power loss.

The new file gets the permissions a plain ``open(path, "w")`` would give it (the old file's, else 0666 less the
umask), not a temporary file's owner-only ones: data sets and run folders are often shared. Standard library only.
"""

import contextlib
import os
import tempfile


def fsync_dir(folder: str) -> None:
    """fsync a folder so a just-renamed entry survives a power loss (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_file_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    try:  # Linux shows the umask in /proc; elsewhere it can only be read by setting it
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, ValueError, StopIteration):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, write, *, binary: bool = True) -> None:
    """Write `path` with `write(f)` following the rules above; `f` is a binary file, or a UTF-8 text file with
    ``binary=False``. On an error (disk full, an exception in `write`) the temporary file is removed and `path` is
    untouched; a kill leaves `path` untouched too, and at most a hidden ``.NAME.*.tmp`` beside it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            os.fchmod(f.fileno(), _new_file_mode(path))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
