"""Checkpoint I/O, in one place: atomic saves, retention, `--resume auto`, and early checks of the output folder.

Every write goes to a temporary file in the same folder, is flushed and fsync'd, then renamed over the target
with `os.replace`, which is atomic on POSIX file systems: a process killed at any instant leaves either the
previous file or the new one, never a truncated one. Checkpoints hold only tensors and plain Python types, so
they load with `torch.load(path, weights_only=True)`.

Files in --output-dir:
  checkpoint.pth        the newest state (end of an epoch, or mid-epoch with --checkpoint-interval)
  model_{epoch}.pth     the state at the end of each epoch (the newest --keep-checkpoints of them are kept)
  model_best.pth        the state at the end of the epoch with the best Acc@1 so far
"""

import glob
import os
import re
import shutil
import sys

import torch

import fileio

LATEST = "checkpoint.pth"
BEST = "model_best.pth"
EPOCH_RE = re.compile(r"^model_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message is one line for the user."""


def atomic_save(obj, path: str) -> None:
    """torch.save through fileio.atomic_write: the existing `path` survives any failure or kill."""
    fileio.atomic_write(path, lambda f: torch.save(obj, f))


def _link_or_copy(src: str, dst: str) -> None:
    """Publish `src` under the name `dst` atomically: a hard link (no second write) renamed into place, or an
    atomic copy where the filesystem has no hard links."""
    folder = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(folder, f".{os.path.basename(dst)}.tmp-{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as source:
            fileio.atomic_write(dst, lambda f: shutil.copyfileobj(source, f))
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.remove(tmp)
        raise
    fileio.fsync_dir(folder)  # the new name survives a power loss, as atomic_write's do


def save_checkpoint(state: dict, output_dir: str, *, epoch_end: bool, epoch: int, is_best: bool,
                    keep: int | None) -> str:
    """Write checkpoint.pth; at the end of an epoch also model_{epoch}.pth (and model_best.pth when this epoch
    is the best so far), then prune old epoch files down to `keep`. Returns the path written.
    Raises CheckpointError (one line) if the write fails; the previous files stay intact."""
    latest = os.path.join(output_dir, LATEST)
    try:
        atomic_save(state, latest)
        if epoch_end:
            _link_or_copy(latest, os.path.join(output_dir, f"model_{epoch}.pth"))
            if is_best:
                _link_or_copy(latest, os.path.join(output_dir, BEST))
    except OSError as e:
        raise CheckpointError(
            f"could not save a checkpoint in {output_dir}: {e.strerror or e}; the previous checkpoint is kept "
            f"(free some space or choose another --output-dir, then resume with --resume auto)"
        ) from e
    if epoch_end and keep is not None:
        prune_epoch_checkpoints(output_dir, keep)
    return latest


def epoch_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(epoch, path) of the model_{epoch}.pth files, oldest first."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "model_*.pth")):
        m = EPOCH_RE.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def prune_epoch_checkpoints(output_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` model_{epoch}.pth files (model_best.pth is a separate link)."""
    existing = epoch_checkpoints(output_dir)
    for _, path in existing[: max(0, len(existing) - keep)]:
        try:
            os.remove(path)
        except OSError:
            pass


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint without unpickling code; one-line CheckpointError when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume {path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong format, foreign pickle: all mean "not a usable checkpoint"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({reason[:200]})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry; is it a checkpoint of this trainer?")
    return ckpt


def checkpoint_progress(ckpt: dict) -> tuple[int, int]:
    """(completed epochs + 1, steps done in that next epoch): orders checkpoints by training progress."""
    return int(ckpt.get("epoch", -1)) + 1, int(ckpt.get("step_in_epoch", 0))


def find_resume_checkpoint(output_dir: str, log=print) -> tuple[str, dict] | None:
    """The newest checkpoint in output_dir that loads. Corrupt or truncated files are reported and skipped."""
    candidates = [os.path.join(output_dir, LATEST)] + [p for _, p in reversed(epoch_checkpoints(output_dir))]
    best = None
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            log(f"resume: skipping {e}")
            continue
        if best is None or checkpoint_progress(ckpt) > checkpoint_progress(best[1]):
            best = (path, ckpt)
        if path.endswith(LATEST):
            continue  # checkpoint.pth is normally the newest; still compare with the newest epoch file
        break
    return best


def check_output_dir(output_dir: str, checkpoint_bytes: int) -> None:
    """Fail before training, not after the first epoch: the folder must be writable and hold two checkpoints."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"--output-dir {output_dir} is not writable ({e.strerror or e})") from e
    free = shutil.disk_usage(output_dir).free
    need = 2 * checkpoint_bytes
    if free < need:
        raise CheckpointError(
            f"--output-dir {output_dir} has {free / 2**20:.0f} MiB free but two checkpoints need about "
            f"{need / 2**20:.0f} MiB; free some space or choose another folder"
        )


def estimate_checkpoint_bytes(model: torch.nn.Module, optimizer_slots: int = 1, ema: bool = False) -> int:
    """Model + optimizer state (+ EMA copy) in bytes, with headroom for metadata."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    total = (params + buffers) * (1 + optimizer_slots + (1 if ema else 0))
    return int(total * 1.05) + (1 << 20)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)
