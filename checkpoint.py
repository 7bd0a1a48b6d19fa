"""Checkpoints, in one place: atomic saves (fileio.atomic_write), retention, `--resume auto`, early checks of the
output folder, and the manager that builds a checkpoint from the run's stateful parts (model, optimizer, GradScaler,
EMA, sampler, RNG states, run counters), each with `state_dict` / `load_state_dict` under the key it has in the file:
a new piece of state is one more part. Checkpoints hold only tensors and plain types (`torch.load(path,
weights_only=True)`).

Files in --output-dir:
  checkpoint.pth        the newest state (end of an epoch, or mid-epoch with --checkpoint-interval)
  model_{epoch}.pth     the state at the end of each epoch (the newest --keep-checkpoints of them are kept)
  model_best.pth        the state at the end of the epoch with the best Acc@1 so far
  *.pth.prev            those of the run before, when a fresh run started in the same folder
  run_clock.json        the run's wall time, rewritten every CLOCK_INTERVAL_S seconds (RunClock): after a crash
                        without a checkpoint, the resume counts the time lost since the last one
"""

import contextlib
import glob
import json
import math
import os
import re
import shutil
import threading
import time
import uuid

import torch

import fileio
import utils

LATEST = "checkpoint.pth"
BEST = "model_best.pth"
EPOCH_RE = re.compile(r"^model_(\d+)\.pth$")
CLOCK = "run_clock.json"
CLOCK_INTERVAL_S = 30.0  # the most time a crash can take out of wall_time_s: a tiny file, rewritten this often


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message is one line for the user."""


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
        fileio.atomic_write(latest, lambda f: torch.save(state, f))
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
        existing = epoch_checkpoints(output_dir)  # model_best.pth is a separate link: it stays
        for _, path in existing[: max(0, len(existing) - keep)]:
            with contextlib.suppress(OSError):
                os.remove(path)
    return latest


def epoch_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(epoch, path) of the model_{epoch}.pth files, oldest first."""
    matches = ((EPOCH_RE.match(os.path.basename(path)), path) for path in glob.glob(os.path.join(output_dir, "*")))
    return sorted((int(m.group(1)), path) for m, path in matches if m)


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


def _progress(ckpt: dict) -> tuple[int, int]:
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
        if best is None or _progress(ckpt) > _progress(best[1]):
            best = (path, ckpt)
        if path.endswith(LATEST):
            continue  # checkpoint.pth is normally the newest; still compare with the newest epoch file
        break
    return best


def set_aside_earlier_run(output_dir: str, log) -> None:
    """A fresh run in a folder that holds another run's checkpoints renames them to NAME.prev (replacing those of
    the run before, as metrics.jsonl.prev is): left in place, --keep-checkpoints would delete this run's epoch
    files in favour of the other run's higher epochs, and --resume auto after a preemption would pick the other
    run's newest file."""
    names = sorted(n for n in os.listdir(output_dir) if n in (LATEST, BEST) or EPOCH_RE.match(n))
    if not names:
        return
    for name in os.listdir(output_dir):
        if name.endswith(".pth.prev"):
            os.remove(os.path.join(output_dir, name))
    for name in names:
        os.replace(os.path.join(output_dir, name), os.path.join(output_dir, name + ".prev"))
    fileio.fsync_dir(output_dir)
    log(f"fresh start: the {len(names)} checkpoint file(s) of an earlier run in {output_dir} are renamed to "
        f"*.pth.prev (to continue that run instead, start with --resume auto)")


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


class RunState:
    """Where the run stands and what it has measured, carried across resumes.

    `epoch`, `step` is the next iteration to run. In the file, `epoch` keeps the reference's meaning (the last
    completed epoch) and `step_in_epoch` > 0 marks a mid-epoch checkpoint of epoch + 1. A resume with another
    world size or global batch restarts the interrupted epoch at the same images (the step is rescaled)."""

    def __init__(self, *, world_size: int, global_batch: int, start_epoch: int = 0):
        self.world_size, self.global_batch = world_size, global_batch
        self.epoch, self.step, self.global_step = start_epoch, 0, 0
        self.best_acc1 = -1.0
        self.time_to_target_s = self.epochs_to_target = None
        self.wall_offset, self.run_start = 0.0, time.time()
        self.run_id = uuid.uuid4().hex  # a resume keeps it: RunClock's record is read for the same run only
        self.checkpoint_wall_time: float | None = None  # wall_time_s of the newest checkpoint saved or loaded
        self.epoch_times: list[float] = []
        self.resume_note = None  # a warning for the log, set by load_state_dict

    def wall_time(self) -> float:
        return self.wall_offset + time.time() - self.run_start

    def state_dict(self) -> dict:
        """The counters for a checkpoint about to be saved (which RunClock's record then refers to)."""
        self.checkpoint_wall_time = self.wall_time()
        return {
            "epoch": self.epoch - 1,  # mid-epoch (step > 0): the epoch before the one in progress
            "step_in_epoch": self.step,
            "lr_scheduler": {"epoch": self.epoch, "step": self.step},  # the schedule is a function of these
            "global_step": self.global_step,
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            "best_acc1": self.best_acc1,
            "wall_time_s": self.checkpoint_wall_time,
            "run_id": self.run_id,
            "time_to_target_s": self.time_to_target_s,
            "epochs_to_target": self.epochs_to_target,
            "epoch_times": list(self.epoch_times),  # whole-epoch seconds so far: the ETA after a resume
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"]) + 1
        self.step = int(state.get("step_in_epoch", 0))
        self.global_step = int(state.get("global_step", 0))
        self.best_acc1 = float(state.get("best_acc1", -1.0))
        self.wall_offset, self.run_start = float(state.get("wall_time_s", 0.0)), time.time()
        self.checkpoint_wall_time = self.wall_offset
        self.run_id = str(state.get("run_id", self.run_id))
        self.time_to_target_s, self.epochs_to_target = state.get("time_to_target_s"), state.get("epochs_to_target")
        self.epoch_times = [float(t) for t in state.get("epoch_times", [])]
        saved_world = int(state.get("world_size", self.world_size))
        saved_batch = int(state.get("global_batch", self.global_batch))
        if (saved_world, saved_batch) != (self.world_size, self.global_batch):
            self.resume_note = (
                f"warning: resuming with world size {self.world_size} and global batch {self.global_batch} "
                f"(checkpoint: {saved_world}, {saved_batch}); the LR schedule follows --lr per iteration of the new "
                f"batch, so scale --lr with the global batch (linear rule) if you changed it; the data order and "
                f"augmentation will differ from an uninterrupted run")
            # Mid-epoch positions are in units of the old batch; restart the epoch's data at the same images.
            self.step = (self.step * saved_batch) // self.global_batch


class RunClock:
    """The run's wall time on disk, rewritten every CLOCK_INTERVAL_S seconds by a background thread (rank 0),
    with the wall time of the newest checkpoint the process saved or loaded.

    A checkpoint holds the wall time at its save; a crash without one (SIGKILL, a lost node, an out-of-memory kill)
    loses the work done since, which the resumed run redoes. `count_lost_time` adds that time back when the run
    resumes from that very checkpoint, so wall_time_s and time_to_target_s are what the run cost, crashes included
    (short by at most CLOCK_INTERVAL_S). A resume from another checkpoint (an older epoch's file, a copy in another
    folder) is a choice, not a loss: nothing is added."""

    def __init__(self, run_state: RunState, output_dir: str | None):
        self.run_state, self.output_dir = run_state, output_dir  # None: a run that writes nothing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.output_dir, CLOCK)

    def count_lost_time(self, log) -> None:
        """After a resume: if this folder's clock was written by the same run after the checkpoint just loaded,
        the time since that checkpoint is work lost when the process ended; it counts in the run's wall time. A
        missing or unreadable clock, another run's, or one that refers to another checkpoint changes nothing."""
        if not self.output_dir:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                clock = json.load(f)
            run_id, wall, saved = clock["run_id"], float(clock["wall_time_s"]), clock["checkpoint_wall_time_s"]
            same_checkpoint = saved is not None and math.isclose(float(saved), self.run_state.wall_offset,
                                                                  abs_tol=1e-6)
        except (OSError, ValueError, KeyError, TypeError):
            return
        lost = wall - self.run_state.wall_offset  # the checkpoint's wall time (this process's own time runs on)
        if run_id != self.run_state.run_id or not same_checkpoint or lost <= 0:
            return
        self.run_state.wall_offset += lost
        if lost >= 1.0:  # less: the moments between a preemption's save and its exit
            log(f"resume: the run went on for {lost:.0f} s after that checkpoint, work lost when it ended; "
                f"they count in the run's wall time")

    def write(self) -> None:
        state = self.run_state
        payload = json.dumps({"run_id": state.run_id, "wall_time_s": state.wall_time(),
                              "checkpoint_wall_time_s": state.checkpoint_wall_time})
        try:
            fileio.atomic_write(self.path, lambda f: f.write(payload), binary=False)
        except OSError:
            pass  # a full or read-only disk: the checkpoints report it; the clock is a best effort

    def start(self) -> "RunClock":
        if self.output_dir:
            self.write()
            self._thread = threading.Thread(target=self._run, daemon=True, name="run-clock")
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(CLOCK_INTERVAL_S):
            self.write()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class RngStates:
    """Every rank's RNG states in rank order; saving is a collective. Restored only when the world size is unchanged
    (each rank takes its own entry): otherwise the data order differs anyway and the fresh states stay."""

    def __init__(self, dist_info):
        self.dist_info = dist_info

    def state_dict(self) -> list:
        return utils.all_gather_objects(utils.get_rng_state(), self.dist_info)

    def load_state_dict(self, states: list) -> None:
        if len(states) == self.dist_info.world_size:
            utils.set_rng_state(states[self.dist_info.rank])


class SamplerSeed:
    """The training sampler's part: its position is the run's (RunState), so a resume restores its seed, and the
    interrupted run's sample order and augmentation continue even when it was started without --seed."""

    def __init__(self, sampler):
        self.sampler = sampler

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if "seed" in state:
            self.sampler.seed = int(state["seed"])


class CheckpointManager:
    """Saves, finds and restores checkpoints made of stateful parts.

    `parts` maps each checkpoint key to an object with `state_dict` / `load_state_dict`; the key None merges that
    part's entries into the top level (the run counters, where the file has always kept them). Only rank 0 writes;
    every rank builds the state (the RNG part is a collective) and every rank restores from the same file."""

    def __init__(self, output_dir: str | None, parts: dict, *, dist_info, keep: int | None, extra: dict | None = None):
        self.output_dir, self.parts, self.dist_info, self.keep = output_dir, parts, dist_info, keep
        self.extra = extra or {}  # written as is, never restored (the resolved arguments)

    def state(self) -> dict:
        state = dict(self.extra)
        for key, part in self.parts.items():
            if key is None:
                state.update(part.state_dict())
            else:
                state[key] = part.state_dict()
        return state

    def save(self, *, epoch_end: bool, epoch: int, is_best: bool) -> None:
        state = self.state()
        if self.dist_info.is_main and self.output_dir:
            save_checkpoint(state, self.output_dir, epoch_end=epoch_end, epoch=epoch, is_best=is_best,
                            keep=self.keep)
        utils.barrier(self.dist_info)

    def find(self, resume: str, log) -> tuple[str, dict] | None:
        """--resume PATH, or the newest good checkpoint in the output folder for --resume auto (None if none).

        For --resume auto, rank 0 chooses and every rank loads that very file, checking that it holds the same
        progress: ranks choosing for themselves would start from different states without a word where they see
        different files (an --output-dir on each node's own disk, a directory listing cached across a restart). A
        rank that cannot load it, or finds another state under its name, stops every rank with one line."""
        if resume != "auto":
            return resume, load_checkpoint(resume)
        found = None
        if self.dist_info.is_main and os.path.isdir(self.output_dir or ""):
            found = find_resume_checkpoint(self.output_dir, log=log)
        path, progress = utils.all_gather_objects((found[0], _progress(found[1])) if found else (None, None),
                                                  self.dist_info)[0]
        if path is None:
            log(f"resume auto: no checkpoint in {self.output_dir}; starting fresh")
            return None
        error = None
        if found is None:  # not rank 0
            rank, shared = self.dist_info.rank, "--output-dir must be one folder that every node sees"
            try:
                found = path, load_checkpoint(path)
            except CheckpointError as e:
                error = f"rank {rank} cannot load {path}, which rank 0 resumes from ({e}); {shared}"
            else:
                if _progress(found[1]) != progress:
                    error = (f"rank {rank} sees another {path} than rank 0 (epoch {found[1].get('epoch')} against "
                             f"{progress[0] - 1}); {shared}")
        errors = [e for e in utils.all_gather_objects(error, self.dist_info) if e]
        if errors:
            raise CheckpointError(errors[0])
        return found

    def restore(self, ckpt: dict, *, only: tuple[str, ...] | None = None) -> None:
        """Load the checkpoint's entries into the parts (all, or the keys in `only`). A part whose key the file
        lacks (no EMA in it, a disabled GradScaler) keeps its fresh state."""
        for key, part in self.parts.items():
            if only is not None and key not in only:
                continue
            if key is None:
                part.load_state_dict(ckpt)
            elif key in ckpt:
                part.load_state_dict(ckpt[key])
