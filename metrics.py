"""The run's files, ``metrics.jsonl`` and ``summary.json``: their schema, their one writer and their one reader.

The trainer hands one record per epoch to :class:`MetricsSink`, which prints the console line, appends it to
``metrics.jsonl``, mirrors it to TensorBoard and keeps it for the summary. Everything that reads a run afterwards
(``scripts/results_table.py``, ``scripts/plot_curves.py``, ``scripts/demo.sh``, tests) goes through
:func:`read_metrics` and :func:`read_summary`. Both files are described once, field by field, in
:data:`RECORD_SCHEMA` and :data:`SUMMARY_SCHEMA`; ``python metrics.py`` prints them as tables.

Accuracies are percentages, memory GiB (2**30 bytes, named ``*_gb``), times seconds. NaN and inf are written as
``null`` (strict JSON has no spelling for them); the console line still shows ``nan``. Standard library only
(TensorBoard is imported when asked for): the scripts read runs without torch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from typing import Any, NamedTuple

import fileio


class Field(NamedTuple):
    """One field of metrics.jsonl or summary.json."""

    name: str
    type: str  # JSON type of a non-null value
    meaning: str  # what it holds, and when it is null
    source: str = ""  # summary.json: "run_info" (copied from the trainer), "derived" (from the records), "constant"
    tensorboard: str = ""  # metrics.jsonl: the TensorBoard tag it is mirrored to ("" = not mirrored)


SCHEMA_VERSION = 1

# OUTPUT/metrics.jsonl: every field is present in every record (null where the meaning allows); a
# record may carry extra fields, which are kept as they are. TensorBoard tags are grouped by prefix so
# TensorBoard shows one section per concern; epoch is TensorBoard's step and so not a scalar.
RECORD_SCHEMA = (
    Field("epoch", "int", "0-based index of the epoch that just finished."),
    Field("lr", "float", "learning rate of the first parameter group at the epoch's last step.",
          tensorboard="train/lr"),
    Field("train_loss", "float", "mean training loss over the epoch, averaged over all ranks.",
          tensorboard="train/loss"),
    Field("train_acc1", "float", "top-1 accuracy (%) on the epoch's (augmented) training batches.",
          tensorboard="train/acc1"),
    Field("val_acc1", "float", "top-1 validation accuracy (%); null when not evaluated this epoch.",
          tensorboard="val/acc1"),
    Field("val_acc5", "float", "top-5 validation accuracy (%); null when not evaluated this epoch.",
          tensorboard="val/acc5"),
    Field("ema_acc1", "float", "top-1 validation accuracy (%) of the EMA weights; null unless EMA is enabled "
          "and evaluated this epoch.", tensorboard="val/ema_acc1"),
    Field("imgs_per_sec", "float", "global training throughput: images per second summed over all ranks, "
          "excluding the warmup steps at the start of the epoch.", tensorboard="perf/imgs_per_sec"),
    Field("data_wait_frac", "float", "fraction (0..1) of training step time spent waiting for the next batch; "
          "near 0 means the input pipeline keeps up.", tensorboard="perf/data_wait_frac"),
    Field("epoch_time_s", "float", "wall-clock seconds for the epoch (training and evaluation).",
          tensorboard="perf/epoch_time_s"),
    Field("peak_mem_gb", "float", "peak device memory allocated by this process during the epoch (GiB, "
          "tensors only: not the runtime's context or the allocator's cache); null on CPU.",
          tensorboard="memory/peak_device_gb"),
    Field("peak_host_rss_gb", "float", "peak resident set size of this process so far (GiB, see "
          "peak_host_rss_gb); a lifetime peak, never reset.", tensorboard="memory/peak_host_rss_gb"),
    Field("bad_images", "int", "images that failed to decode this epoch and were skipped/replaced.",
          tensorboard="data/bad_images"),
    Field("eta_s", "float", "estimated seconds until all planned epochs are done.", tensorboard="perf/eta_s"),
    Field("global_step", "int", "optimizer steps done since the start of training (across resumes).",
          tensorboard="train/global_step"),
    Field("train_res", "int", "the epoch's training crop size in pixels (changes with progressive resizing).",
          tensorboard="data/train_res"),
)

# OUTPUT/summary.json, in this order. Missing data stays null: nothing is estimated or filled in.
SUMMARY_SCHEMA = (
    Field("schema_version", "int", "1; bumped when a field changes meaning.", "constant"),
    Field("status", "str", '"finished" (all planned epochs ran), "target_reached" (stopped early at '
          'target_acc), "preempted" (stopped by a signal, resumable) or "running" (written mid-run).', "run_info"),
    Field("model", "str", 'model name, e.g. "resnet50".', "run_info"),
    Field("best_acc1", "float", "highest val_acc1 over all epochs (%); null if never evaluated.", "derived"),
    Field("best_acc5", "float", "val_acc5 of the epoch that gave best_acc1 (same checkpoint, as model zoos "
          "report it), not the highest val_acc5.", "derived"),
    Field("best_epoch", "int", "epoch of best_acc1 (first one on ties).", "derived"),
    Field("final_acc1", "float", "val_acc1 of the last epoch run; null when that epoch was not evaluated (the "
          "final weights' accuracy is then unknown).", "derived"),
    Field("final_acc5", "float", "val_acc5 of the last epoch run, same rule.", "derived"),
    Field("epochs_run", "int", "number of distinct epochs in metrics.jsonl.", "derived"),
    Field("epochs_planned", "int", "epochs the run was configured for.", "run_info"),
    Field("wall_time_s", "float", "wall-clock seconds of the whole run, summed over resumes; the work a crash lost "
          "counts too (run_clock.json).", "run_info"),
    Field("target_acc", "float", "top-1 target (%) for convergence runs; null if none.", "run_info"),
    Field("reached_target", "bool", "best_acc1 >= target_acc; null when target_acc is null.", "derived"),
    Field("time_to_target_s", "float", "wall-clock seconds until val_acc1 first reached target_acc.", "run_info"),
    Field("epochs_to_target", "int", "epochs run until val_acc1 first reached target_acc.", "run_info"),
    Field("world_size", "int", "number of training processes (one per card).", "run_info"),
    Field("nnodes", "int", "number of nodes.", "run_info"),
    Field("batch_size_per_process", "int", "batch size of one process.", "run_info"),
    Field("global_batch", "int", "batch_size_per_process x world_size (x accumulation steps).", "run_info"),
    Field("precision", "str", '"fp32", "amp_fp16" or "amp_bf16".', "run_info"),
    Field("tf32", "bool", "whether float32 convolutions and matmuls ran in TF32 (--tf32; NVIDIA Ampere and later, "
          "where an fp32 run is TF32 by default); null off NVIDIA GPUs.", "run_info"),
    Field("memory_format", "str", '"channels_last" or "contiguous".', "run_info"),
    Field("mean_imgs_per_sec", "float", "mean of the per-epoch imgs_per_sec (global, all ranks).", "derived"),
    Field("peak_mem_gb_per_card", "float", "max over epochs of peak_mem_gb (GiB); null on CPU.", "derived"),
    Field("peak_mem_note", "str", "how peak_mem_gb_per_card was measured, or why it is null.", "derived"),
    Field("peak_host_rss_gb", "float", "max over epochs of peak_host_rss_gb (GiB).", "derived"),
    Field("mean_power_w_per_card", "float", "mean board power per card in watts; null when not measured.",
          "run_info"),
    Field("power_note", "str", "how power was measured, or why it was not.", "run_info"),
    Field("device", "str", 'device type, e.g. "cuda" or "cpu".', "run_info"),
    Field("device_names", "list", "names of the devices used (the CPU model on a CPU run).", "run_info"),
    Field("versions", "object", "{python, torch, torchvision, cuda, cudnn}; cuda/cudnn null on a CPU-only "
          "build.", "run_info"),
    Field("command", "str", "the command line that started the run, as one string.", "run_info"),
    Field("bad_images", "int", "total of bad_images over all epochs.", "derived"),
)

RECORD_FIELDS = tuple(f.name for f in RECORD_SCHEMA)
SUMMARY_FIELDS = tuple(f.name for f in SUMMARY_SCHEMA)
# The summary fields that summarize_run copies from the trainer's run_info instead of deriving.
RUN_INFO_FIELDS = tuple(f.name for f in SUMMARY_SCHEMA if f.source == "run_info")
TENSORBOARD_TAGS = {f.name: f.tensorboard for f in RECORD_SCHEMA if f.tensorboard}

VERSION_KEYS = ("python", "torch", "torchvision", "cuda", "cudnn")
STATUSES = ("finished", "target_reached", "preempted", "running")
PRECISIONS = ("fp32", "amp_fp16", "amp_bf16")
MEMORY_FORMATS = ("channels_last", "contiguous")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"

_GIB = float(2**30)


def schema_tables() -> str:
    """Both files' fields as Markdown tables: what ``python metrics.py`` prints."""
    parts = []
    for title, schema, extra in (
        (f"{METRICS_FILE}: one JSON object per finished epoch", RECORD_SCHEMA, "tensorboard"),
        (f"{SUMMARY_FILE}: one object per run (schema_version {SCHEMA_VERSION})", SUMMARY_SCHEMA, "source"),
    ):
        parts += [f"### {title}", "", f"| field | type | {extra} | meaning |", "|---|---|---|---|"]
        parts += [f"| {f.name} | {f.type} | {getattr(f, extra)} | {f.meaning} |" for f in schema]
        parts.append("")
    return "\n".join(parts)


# --------------------------------------------------------------------------- helpers


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> Python numbers (json cannot encode them), non-finite floats -> None (strict
    JSON readers such as jq reject NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # multi-element tensor/array: keep as a list
            return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- reading


class RunFileError(ValueError):
    """A run's metrics.jsonl or summary.json is missing or unusable; the message is one line naming the file."""


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics.jsonl file in file order; [] when there is no such file. A crash mid-write can
    leave a truncated last line: losing that epoch's record beats refusing to resume, so bad lines are dropped
    with a warning naming the file and line."""
    records: list[dict] = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                warnings.warn(f"{path}:{line_no}: dropping unreadable metrics line ({exc.msg})", stacklevel=2)
                continue
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                warnings.warn(f"{path}:{line_no}: dropping metrics line without an integer 'epoch'", stacklevel=2)
                continue
            records.append(record)
    return records


def latest_per_epoch(records: list[dict]) -> list[dict]:
    """One record per epoch, in epoch order; when an epoch repeats (a resumed run wrote it again) the last wins."""
    by_epoch = {int(r["epoch"]): r for r in records}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_metrics(output_dir: str) -> list[dict]:
    """The records of a run's OUTPUT/metrics.jsonl, one per epoch in epoch order; RunFileError without the file."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise RunFileError(f"{output_dir}: no {METRICS_FILE} (is it the --output-dir of a training run?)")
    return latest_per_epoch(read_jsonl(path))


def read_summary(output_dir: str) -> dict:
    """A run's OUTPUT/summary.json as a dict; RunFileError, one line naming the file, when it is missing,
    unreadable, not a JSON object or of another schema version."""
    path = os.path.join(output_dir, SUMMARY_FILE)
    if not os.path.isfile(path):
        raise RunFileError(f"{output_dir}: no {SUMMARY_FILE} (is it the --output-dir of a run that started?)")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except json.JSONDecodeError as exc:
        raise RunFileError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(summary, dict):
        raise RunFileError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    if summary.get("schema_version") != SCHEMA_VERSION:
        raise RunFileError(f"{path}: schema_version {summary.get('schema_version')!r} is not supported "
                           f"(expected {SCHEMA_VERSION})")
    return summary


# --------------------------------------------------------------------------- the console line


def format_hms(seconds: float | None) -> str:
    """Format seconds as H:MM:SS (hours may exceed 24) or 'n/a' when unknown: the project's one duration format."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _num(value: Any, spec: str, suffix: str = "") -> str:
    """Format a number for the console line; None prints as 'n/a'."""
    if value is None:
        return "n/a"
    return f"{value:{spec}}{suffix}"


def format_epoch_line(record: dict) -> str:
    """The human console line for one epoch record, ending with the whole run's ETA."""
    r, wait = record, record["data_wait_frac"]
    parts = [
        f"Epoch {r['epoch']}",
        f"lr {_num(r['lr'], '.5g')}",
        f"train loss {_num(r['train_loss'], '.4f')} acc1 {_num(r['train_acc1'], '.2f', '%')}",
        "val not evaluated" if r["val_acc1"] is None and r["val_acc5"] is None else
        f"val acc1 {_num(r['val_acc1'], '.2f', '%')} acc5 {_num(r['val_acc5'], '.2f', '%')}",
        f"ema acc1 {_num(r['ema_acc1'], '.2f', '%')}" if r["ema_acc1"] is not None else None,
        f"{_num(r['imgs_per_sec'], '.1f')} img/s",
        f"data wait {_num(None if wait is None else 100.0 * wait, '.1f', '%')}",
        f"epoch {format_hms(r['epoch_time_s'])}",
        f"mem {_num(r['peak_mem_gb'], '.2f', ' GiB')}" if r["peak_mem_gb"] is not None else None,
        f"rss {_num(r['peak_host_rss_gb'], '.2f', ' GiB')}",
        f"bad images {r['bad_images']}" if r["bad_images"] else None,
        f"step {r['global_step']}",
        f"ETA {format_hms(r['eta_s'])}",
    ]
    return " | ".join(part for part in parts if part is not None)


# --------------------------------------------------------------------------- the sink


class MetricsSink:
    """Writes the epoch records to metrics.jsonl (+ TensorBoard) and the run summary, and keeps the records.

    ``records`` holds the run's records in epoch order, as written (plain numbers, null for NaN): on a resume the
    kept ones are read once, at :meth:`start`, and the trainer builds the summary from them, never reading the file
    back. Other ranks get a sink that does nothing, so the trainer calls it unconditionally; ``output_dir=None``
    keeps the console line and the records but writes no files.
    """

    def __init__(self, output_dir: str | None, *, is_main: bool, tensorboard: bool = False):
        self.output_dir, self.is_main = output_dir, is_main
        self.records: list[dict] = []
        self._writer = self._writer_cls = None
        self._started = False
        if not is_main:
            return
        if tensorboard:
            if output_dir is None:
                raise ValueError("TensorBoard logging needs an output directory; set one or turn TensorBoard off")
            try:  # now, not at the first epoch, so that a missing package fails before training
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError(
                    f"TensorBoard logging was requested but the 'tensorboard' package cannot be imported ({exc}); "
                    "pip install tensorboard, or turn TensorBoard logging off") from None
            self._writer_cls = SummaryWriter
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)

    def start(self, resume_epoch: int | None) -> None:
        """Prepare metrics.jsonl (and TensorBoard) for a fresh run or a resume, and load ``records``.

        ``resume_epoch`` is the first epoch that will run: records of that epoch and later came from epochs whose
        checkpoint was lost and will be produced again, so the file is rewritten atomically without them. On a
        fresh run (None) an existing metrics.jsonl belongs to another run: it is moved aside to
        ``metrics.jsonl.prev``, neither mixed with the new one nor deleted.
        """
        if not self.is_main:
            return
        self._started = True
        self.records = []
        if self.output_dir is None:
            return
        path = os.path.join(self.output_dir, METRICS_FILE)
        if resume_epoch is None:
            if os.path.exists(path) and os.path.getsize(path) > 0:
                os.replace(path, path + ".prev")
        elif os.path.exists(path):
            self.records = [r for r in read_jsonl(path) if r["epoch"] < resume_epoch]
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records)
            fileio.atomic_write(path, lambda f: f.write(text), binary=False)
        if self._writer_cls is not None and self._writer is None:
            # purge_step makes TensorBoard hide events from the abandoned epochs >= resume_epoch.
            self._writer = self._writer_cls(log_dir=os.path.join(self.output_dir, TENSORBOARD_DIR),
                                            purge_step=resume_epoch)

    def log_epoch(self, record: dict) -> str:
        """Append one record to ``records`` and metrics.jsonl (durably), mirror it to TensorBoard, return the
        console line."""
        if not self.is_main:
            return ""
        if not self._started:
            raise RuntimeError("MetricsSink.log_epoch called before start(); call start(resume_epoch) once first")
        missing = [f for f in RECORD_FIELDS if f not in record]
        if missing:
            raise ValueError(f"metrics record is missing field(s) {', '.join(missing)}; see metrics.RECORD_SCHEMA")
        clean = _plain(dict(record))
        if self.output_dir is not None:
            with open(os.path.join(self.output_dir, METRICS_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(clean, allow_nan=False) + "\n")
                f.flush()
                # fsync per epoch: a preempted job must not lose epochs its checkpoint already covers.
                os.fsync(f.fileno())
        self.records.append(clean)
        if self._writer is not None:
            for field, tag in TENSORBOARD_TAGS.items():
                value = clean.get(field)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(tag, value, global_step=clean["epoch"])
            self._writer.flush()
        # The console line uses the raw values so a NaN loss is visible as 'nan'.
        raw = {k: v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v for k, v in record.items()}
        return format_epoch_line(raw)

    def write_summary(self, summary: dict) -> None:
        """Write summary.json atomically (see fileio.atomic_write)."""
        if self.is_main and self.output_dir is not None:
            text = json.dumps(_plain(summary), indent=2, allow_nan=False) + "\n"
            fileio.atomic_write(os.path.join(self.output_dir, SUMMARY_FILE), lambda f: f.write(text), binary=False)

    def close(self) -> None:
        """Flush and close TensorBoard; safe to call twice."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


# --------------------------------------------------------------------------- measurements


def peak_host_rss_gb() -> float:
    """Lifetime peak resident memory of this process (GiB), DataLoader workers not included."""
    import resource  # Unix only; imported here so the module still imports elsewhere

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024) / _GIB  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- summary


def _present(records: list[dict], field: str) -> list:
    """Non-null, finite values of one field, in epoch order."""
    values = [r.get(field) for r in records if not isinstance(r.get(field), bool)]
    return [v for v in values if v is not None and (not isinstance(v, float) or math.isfinite(v))]


def summarize_run(records: list[dict], run_info: dict) -> dict:
    """The summary.json dict (SUMMARY_SCHEMA) from the records and the trainer's run_info. Derived values come
    only from the records (an epoch written twice counts once, the last record winning), None where they lack
    the data."""
    missing = [f for f in RUN_INFO_FIELDS if f not in run_info]
    if missing:
        raise ValueError(f"summarize_run: run_info is missing {', '.join(missing)}; see metrics.SUMMARY_SCHEMA")
    for field, allowed in (("status", STATUSES), ("precision", PRECISIONS), ("memory_format", MEMORY_FORMATS)):
        if run_info[field] not in allowed:
            raise ValueError(f"summarize_run: {field} must be one of {allowed}, got {run_info[field]!r}")

    ordered = latest_per_epoch(records)
    # The first of equally good epochs; its val_acc5 is the same checkpoint's, as model zoos report it.
    best = max((r for r in ordered if _present([r], "val_acc1")), key=lambda r: r["val_acc1"], default={})
    best_acc1 = best.get("val_acc1")
    last = ordered[-1] if ordered else {}
    imgs = _present(ordered, "imgs_per_sec")
    mem = _present(ordered, "peak_mem_gb")
    rss = _present(ordered, "peak_host_rss_gb")
    bad = _present(ordered, "bad_images")

    target = run_info["target_acc"]
    reached = None if target is None else (best_acc1 is not None and best_acc1 >= target)

    if mem:
        mem_note = (
            "max over epochs of the device memory allocated by the logging process's tensors "
            "(torch.accelerator.max_memory_allocated); excludes the runtime's context and the allocator's cached blocks"
        )
    elif run_info["device"] == "cpu":
        mem_note = "not measured: device is cpu"
    else:
        mem_note = "not measured: no epoch recorded peak_mem_gb"

    derived = {
        "schema_version": SCHEMA_VERSION,
        "best_acc1": best_acc1,
        "best_acc5": best.get("val_acc5"),
        "best_epoch": best.get("epoch"),
        "final_acc1": last.get("val_acc1"),
        "final_acc5": last.get("val_acc5"),
        "epochs_run": len(ordered),
        "reached_target": reached,
        "mean_imgs_per_sec": sum(imgs) / len(imgs) if imgs else None,
        "peak_mem_gb_per_card": max(mem) if mem else None,
        "peak_mem_note": mem_note,
        "peak_host_rss_gb": max(rss) if rss else None,
        "bad_images": sum(bad) if bad else None,
    }
    summary = {field: derived[field] if field in derived else run_info[field] for field in SUMMARY_FIELDS}
    summary["versions"] = {k: (run_info["versions"] or {}).get(k) for k in VERSION_KEYS}
    return _plain(summary)


if __name__ == "__main__":
    print(schema_tables())
