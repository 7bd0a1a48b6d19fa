"""Writing files that survive a crash, a kill or a power loss: the project's durability rules.

Every file another program (or a resumed run) reads back - checkpoints, summary.json, the
file-list cache, prepared ImageNet images, the built region decoder - is written the same
way, by :func:`atomic_write`:

1. into a temporary file in the same folder (``os.replace`` is atomic only within one
   file system, and a hidden ``.name.*.tmp`` is skipped by anything that lists the folder);
2. flushed and ``fsync``'d, so the data is on disk before the name points at it;
3. renamed over the final name with ``os.replace``, so readers see the old file or the
   new one, never half of one;
4. the folder is ``fsync``'d, so the rename itself survives a power loss.

On any failure before the rename the old file is left as it was. The new file gets the
permissions a plain ``open(path, "w")`` would give it (the old file's, else 0666 less the
umask), not a temporary file's owner-only ones: data sets and run folders are often shared.
Standard library only: scripts that do not need torch can use it.
"""

import os
import tempfile


def fsync_dir(folder: str) -> None:
    """fsync a folder so a just-renamed entry survives a power loss (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """This process's umask. Linux shows it in /proc; elsewhere it can only be read by setting it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str, write, *, binary: bool = True) -> None:
    """Write `path` with `write(f)` following the rules above: readers see the old content or the new.

    `f` is a binary file, or a UTF-8 text file with ``binary=False``. On an error (disk full, an exception
    in `write`) the temporary file is removed and `path` is untouched; a kill leaves `path` untouched too,
    and at most a hidden ``.NAME.*.tmp`` beside it.
    """
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
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)
