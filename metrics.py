"""One metrics sink for the console line, ``metrics.jsonl``, ``summary.json`` and TensorBoard.

The trainer builds one record per epoch and hands it to :class:`MetricsSink`; every
consumer (console, JSON lines, TensorBoard, ``scripts/results_table.py``,
``scripts/plot_curves.py``) reads from that single record, so the numbers can never
disagree between them.

Units: accuracies are percentages (0..100); memory figures are GiB (2**30 bytes),
named ``*_gb`` for brevity; times are seconds. Non-finite floats (NaN, inf) are written
as JSON ``null`` because strict JSON has no spelling for them; the console line still
shows them as ``nan``.

``OUTPUT/metrics.jsonl``: one JSON object per finished epoch
============================================================

================  =======  =================================================================
field             type     meaning
================  =======  =================================================================
epoch             int      0-based index of the epoch that just finished.
lr                float    learning rate of the first parameter group at the epoch's last step.
train_loss        float    mean training loss over the epoch, averaged over all ranks.
train_acc1        float    top-1 accuracy (%) on the epoch's (augmented) training batches.
val_acc1          float    top-1 validation accuracy (%); null when not evaluated this epoch.
val_acc5          float    top-5 validation accuracy (%); null when not evaluated this epoch.
ema_acc1          float    top-1 validation accuracy (%) of the EMA weights; null unless EMA
                           is enabled and evaluated this epoch.
imgs_per_sec      float    global training throughput: images per second summed over all
                           ranks, excluding the warmup steps at the start of the epoch.
data_wait_frac    float    fraction (0..1) of training step time spent waiting for the next
                           batch; near 0 means the input pipeline keeps up.
epoch_time_s      float    wall-clock seconds for the epoch (training and evaluation).
peak_mem_gb       float    peak CUDA memory allocated by this process during the epoch (GiB,
                           see :func:`peak_device_memory_gb`); null on CPU.
peak_host_rss_gb  float    peak resident set size of this process so far (GiB, see
                           :func:`peak_host_rss_gb`); a lifetime peak, never reset.
bad_images        int      images that failed to decode this epoch and were skipped/replaced.
eta_s             float    estimated seconds until all planned epochs are done.
global_step       int      optimizer steps done since the start of training (across resumes).
================  =======  =================================================================

Every field must be present in the record given to :meth:`MetricsSink.log_epoch`
(value ``None`` where the table allows null); extra fields are kept as they are.

``OUTPUT/summary.json``: one object per run, built by :func:`summarize_run`
==========================================================================

Fields marked *run_info* are copied from the trainer's ``run_info`` dict; fields marked
*derived* are computed from the metrics.jsonl records. Missing data stays null: nothing
is estimated or filled in.

=====================  ==========  ===========================================================
field                  source      meaning
=====================  ==========  ===========================================================
schema_version         constant    1; bumped when a field changes meaning.
status                 run_info    "finished" (all planned epochs ran), "target_reached"
                                   (stopped early at target_acc), "preempted" (stopped by a
                                   signal, resumable) or "running" (written mid-run).
model                  run_info    model name, e.g. "resnet50".
best_acc1              derived     highest val_acc1 over all epochs (%); null if never evaluated.
best_acc5              derived     val_acc5 of the epoch that gave best_acc1 (same checkpoint,
                                   as model zoos report it), not the highest val_acc5.
best_epoch             derived     epoch of best_acc1 (first one on ties).
final_acc1             derived     val_acc1 of the last epoch run; null when that epoch was not
                                   evaluated (the final weights' accuracy is then unknown).
final_acc5             derived     val_acc5 of the last epoch run, same rule.
epochs_run             derived     number of distinct epochs in metrics.jsonl.
epochs_planned         run_info    epochs the run was configured for.
wall_time_s            run_info    wall-clock seconds of the whole run, summed over resumes.
target_acc             run_info    top-1 target (%) for convergence runs; null if none.
reached_target         derived     best_acc1 >= target_acc; null when target_acc is null.
time_to_target_s       run_info    wall-clock seconds until val_acc1 first reached target_acc.
epochs_to_target       run_info    epochs run until val_acc1 first reached target_acc.
world_size             run_info    number of training processes (one per card).
nnodes                 run_info    number of nodes.
batch_size_per_process run_info    batch size of one process.
global_batch           run_info    batch_size_per_process x world_size (x accumulation steps).
precision              run_info    "fp32", "amp_fp16" or "amp_bf16".
memory_format          run_info    "channels_last" or "contiguous".
mean_imgs_per_sec      derived     mean of the per-epoch imgs_per_sec (global, all ranks).
peak_mem_gb_per_card   derived     max over epochs of peak_mem_gb (GiB); null on CPU.
peak_mem_note          derived     how peak_mem_gb_per_card was measured, or why it is null.
peak_host_rss_gb       derived     max over epochs of peak_host_rss_gb (GiB).
mean_power_w_per_card  run_info    mean board power per card in watts (see PowerMonitor); null
                                   when not measured.
power_note             run_info    how power was measured, or why it was not.
device                 run_info    "cuda" or "cpu".
device_names           run_info    list of device names (see :func:`environment_info`).
versions               run_info    {python, torch, torchvision, cuda, cudnn}; cuda/cudnn null on
                                   a CPU-only build.
command                run_info    the command line that started the run, as one string.
bad_images             derived     total of bad_images over all epochs.
=====================  ==========  ===========================================================
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import threading
import warnings
from typing import Any

import torch

import utils

SCHEMA_VERSION = 1

RECORD_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc1",
    "val_acc1",
    "val_acc5",
    "ema_acc1",
    "imgs_per_sec",
    "data_wait_frac",
    "epoch_time_s",
    "peak_mem_gb",
    "peak_host_rss_gb",
    "bad_images",
    "eta_s",
    "global_step",
)

SUMMARY_FIELDS = (
    "schema_version",
    "status",
    "model",
    "best_acc1",
    "best_acc5",
    "best_epoch",
    "final_acc1",
    "final_acc5",
    "epochs_run",
    "epochs_planned",
    "wall_time_s",
    "target_acc",
    "reached_target",
    "time_to_target_s",
    "epochs_to_target",
    "world_size",
    "nnodes",
    "batch_size_per_process",
    "global_batch",
    "precision",
    "memory_format",
    "mean_imgs_per_sec",
    "peak_mem_gb_per_card",
    "peak_mem_note",
    "peak_host_rss_gb",
    "mean_power_w_per_card",
    "power_note",
    "device",
    "device_names",
    "versions",
    "command",
    "bad_images",
)

# The summary fields that summarize_run copies from run_info instead of deriving.
RUN_INFO_FIELDS = (
    "status",
    "model",
    "epochs_planned",
    "wall_time_s",
    "target_acc",
    "time_to_target_s",
    "epochs_to_target",
    "world_size",
    "nnodes",
    "batch_size_per_process",
    "global_batch",
    "precision",
    "memory_format",
    "mean_power_w_per_card",
    "power_note",
    "device",
    "device_names",
    "versions",
    "command",
)

VERSION_KEYS = ("python", "torch", "torchvision", "cuda", "cudnn")
STATUSES = ("finished", "target_reached", "preempted", "running")
PRECISIONS = ("fp32", "amp_fp16", "amp_bf16")
MEMORY_FORMATS = ("channels_last", "contiguous")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"

# Record field -> TensorBoard tag. Grouped by prefix so TensorBoard shows one section
# per concern; epoch is the global step itself and so is not logged as a scalar.
TENSORBOARD_TAGS = {
    "lr": "train/lr",
    "train_loss": "train/loss",
    "train_acc1": "train/acc1",
    "val_acc1": "val/acc1",
    "val_acc5": "val/acc5",
    "ema_acc1": "val/ema_acc1",
    "imgs_per_sec": "perf/imgs_per_sec",
    "data_wait_frac": "perf/data_wait_frac",
    "epoch_time_s": "perf/epoch_time_s",
    "peak_mem_gb": "memory/peak_device_gb",
    "peak_host_rss_gb": "memory/peak_host_rss_gb",
    "bad_images": "data/bad_images",
    "eta_s": "perf/eta_s",
    "global_step": "train/global_step",
}

_GIB = float(2**30)


# --------------------------------------------------------------------------- helpers


def _plain(value: Any) -> Any:
    """Turn tensors / numpy scalars into Python numbers and non-finite floats into None.

    The trainer often hands over 0-d tensors; json cannot encode them, and strict JSON
    (jq, browsers) rejects NaN, so both are normalised in one place.
    """
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


def _atomic_write_text(path: str, text: str) -> None:
    """Readers see either the old or the new file, never half (see utils.atomic_write)."""
    utils.atomic_write(path, lambda f: f.write(text), binary=False)


def read_jsonl(path: str) -> list[dict]:
    """Read metrics.jsonl records, skipping lines that do not parse.

    A crash in the middle of a write can leave a truncated last line; losing that one
    epoch's record is better than refusing to resume, so bad lines are dropped with a
    warning naming the file and line.
    """
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


def format_hms(seconds: float | None) -> str:
    """Format seconds as H:MM:SS (hours may exceed 24) or 'n/a' when unknown."""
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
    parts = [
        f"Epoch {record['epoch']}",
        f"lr {_num(record['lr'], '.5g')}",
        f"train loss {_num(record['train_loss'], '.4f')} acc1 {_num(record['train_acc1'], '.2f', '%')}",
    ]
    if record["val_acc1"] is None and record["val_acc5"] is None:
        parts.append("val not evaluated")
    else:
        parts.append(f"val acc1 {_num(record['val_acc1'], '.2f', '%')} acc5 {_num(record['val_acc5'], '.2f', '%')}")
    if record["ema_acc1"] is not None:
        parts.append(f"ema acc1 {_num(record['ema_acc1'], '.2f', '%')}")
    wait = record["data_wait_frac"]
    parts.append(f"{_num(record['imgs_per_sec'], '.1f')} img/s")
    parts.append(f"data wait {_num(None if wait is None else 100.0 * wait, '.1f', '%')}")
    parts.append(f"epoch {format_hms(record['epoch_time_s'])}")
    if record["peak_mem_gb"] is not None:
        parts.append(f"mem {_num(record['peak_mem_gb'], '.2f', ' GiB')}")
    parts.append(f"rss {_num(record['peak_host_rss_gb'], '.2f', ' GiB')}")
    if record["bad_images"]:
        parts.append(f"bad images {record['bad_images']}")
    parts.append(f"step {record['global_step']}")
    parts.append(f"ETA {format_hms(record['eta_s'])}")
    return " | ".join(parts)


def _import_summary_writer():
    """Import SummaryWriter, turning a missing tensorboard package into one actionable line."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise RuntimeError(
            f"TensorBoard logging was requested but the 'tensorboard' package cannot be imported ({exc}); "
            "pip install tensorboard, or turn TensorBoard logging off"
        ) from None
    return SummaryWriter


# --------------------------------------------------------------------------- the sink


class MetricsSink:
    """Writes per-epoch records to metrics.jsonl (+ TensorBoard) and the run summary.

    Only the main process writes: other ranks get a sink whose methods do nothing, so the
    trainer can call it unconditionally. ``output_dir=None`` keeps the console line but
    writes no files (handy for quick experiments).
    """

    def __init__(self, output_dir: str | None, *, is_main: bool, tensorboard: bool = False):
        self.output_dir = output_dir
        self.is_main = is_main
        self.tensorboard = tensorboard
        self._writer = None
        self._writer_cls = None
        self._started = False
        if not is_main:
            return
        if tensorboard:
            if output_dir is None:
                raise ValueError("TensorBoard logging needs an output directory; set one or turn TensorBoard off")
            # Import now, not at the first epoch, so a missing package fails before training.
            self._writer_cls = _import_summary_writer()
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)

    @property
    def metrics_path(self) -> str | None:
        return None if self.output_dir is None else os.path.join(self.output_dir, METRICS_FILE)

    @property
    def summary_path(self) -> str | None:
        return None if self.output_dir is None else os.path.join(self.output_dir, SUMMARY_FILE)

    def _writes_files(self) -> bool:
        return self.is_main and self.output_dir is not None

    def start(self, resume_epoch: int | None) -> None:
        """Prepare metrics.jsonl (and TensorBoard) for a fresh run or a resume.

        ``resume_epoch`` is the first epoch that will run. Records with epoch >= it came
        from epochs whose checkpoint was lost, and they will be produced again, so the
        file is rewritten atomically without them. For a fresh run (``None``) an existing
        metrics.jsonl belongs to another run: it is moved aside to ``metrics.jsonl.prev``
        rather than mixed with the new one or deleted.
        """
        if not self.is_main:
            return
        self._started = True
        if self.output_dir is None:
            return
        path = self.metrics_path
        if resume_epoch is None:
            if os.path.exists(path) and os.path.getsize(path) > 0:
                os.replace(path, path + ".prev")
        else:
            if resume_epoch < 0:
                raise ValueError(f"MetricsSink.start: resume_epoch must be >= 0, got {resume_epoch}")
            if os.path.exists(path):
                kept = [r for r in read_jsonl(path) if r["epoch"] < resume_epoch]
                _atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
        if self._writer_cls is not None and self._writer is None:
            # purge_step makes TensorBoard hide events from the abandoned epochs >= resume_epoch.
            self._writer = self._writer_cls(
                log_dir=os.path.join(self.output_dir, TENSORBOARD_DIR),
                purge_step=resume_epoch,
            )

    def log_epoch(self, record: dict) -> str:
        """Append one record to metrics.jsonl (durably), mirror it to TensorBoard, return the console line."""
        if not self.is_main:
            return ""
        if not self._started:
            raise RuntimeError("MetricsSink.log_epoch called before start(); call start(resume_epoch) once first")
        missing = [f for f in RECORD_FIELDS if f not in record]
        if missing:
            raise ValueError(f"metrics record is missing field(s) {', '.join(missing)}; see the table in metrics.py")
        clean = _plain(dict(record))
        if not isinstance(clean["epoch"], int):
            raise ValueError(f"metrics record 'epoch' must be an int, got {record['epoch']!r}")
        if self.output_dir is not None:
            line = json.dumps(clean, allow_nan=False) + "\n"
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                # fsync per epoch: a preempted job must not lose epochs its checkpoint already covers.
                os.fsync(f.fileno())
        if self._writer is not None:
            for field, tag in TENSORBOARD_TAGS.items():
                value = clean.get(field)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(tag, value, global_step=clean["epoch"])
            self._writer.flush()
        # The console line uses the raw values so a NaN loss is visible as 'nan'.
        raw = {k: (v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v) for k, v in record.items()}
        return format_epoch_line(raw)

    def write_summary(self, summary: dict) -> None:
        """Write summary.json atomically (tmp file + fsync + os.replace)."""
        if not self._writes_files():
            return
        text = json.dumps(_plain(summary), indent=2, allow_nan=False) + "\n"
        _atomic_write_text(self.summary_path, text)

    def close(self) -> None:
        """Flush and close TensorBoard; safe to call twice."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# --------------------------------------------------------------------------- measurements


def peak_device_memory_gb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated by this process since the last call (GiB); None off CUDA.

    Resets the peak counter so each call covers one epoch. This is memory held by
    tensors: the CUDA context and the caching allocator's spare blocks are not counted,
    so nvidia-smi shows more.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / _GIB
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def peak_host_rss_gb() -> float:
    """Lifetime peak resident memory of this process (GiB).

    getrusage reports kilobytes on Linux (bytes on macOS). DataLoader workers are
    separate processes and are not included.
    """
    import resource  # Unix only; imported here so the module still imports elsewhere.

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    return peak_bytes / _GIB


def _nvml_handle(pynvml, device_index: int):
    """NVML handle for a CUDA device index.

    CUDA indices follow CUDA_VISIBLE_DEVICES while NVML numbers all cards, so the PCI
    address is used when torch exposes it; otherwise the visible-devices list is mapped.
    """
    try:
        props = torch.cuda.get_device_properties(device_index)
        domain = getattr(props, "pci_domain_id", None)
        bus = getattr(props, "pci_bus_id", None)
        dev = getattr(props, "pci_device_id", None)
        if None not in (domain, bus, dev):
            return pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{bus:02x}:{dev:02x}.0")
    except Exception:  # fall back to index mapping below
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    index = device_index
    if entries and all(e.isdigit() for e in entries) and device_index < len(entries):
        index = int(entries[device_index])
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class PowerMonitor:
    """Mean board power of one GPU, sampled from NVML in a background thread.

    Uses the optional ``nvidia-ml-py`` package (module ``pynvml``). Power is a side
    measurement, so every failure (CPU run, package missing, unsupported board) turns into
    ``(None, reason)`` rather than an exception that would stop training.
    """

    def __init__(self, device_index: int | None, interval_s: float = 1.0):
        if interval_s <= 0:
            raise ValueError(f"PowerMonitor interval_s must be > 0, got {interval_s}")
        self.device_index = device_index
        self.interval_s = interval_s
        self._samples: list[float] = []
        self._note = "not started"
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pynvml = None
        self._name = ""

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.device_index is None:
            self._note = "power not measured: no CUDA device (CPU run)"
            return
        try:
            import pynvml
        except ImportError:
            self._note = "power not measured: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self._note = f"power not measured: NVML init failed ({exc})"
            return
        try:
            handle = _nvml_handle(pynvml, self.device_index)
            name = pynvml.nvmlDeviceGetName(handle)
            self._name = name.decode() if isinstance(name, bytes) else str(name)
            # One sample now: proves the board reports power and guarantees a non-empty mean.
            self._samples.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        except Exception as exc:
            self._note = f"power not measured: NVML cannot read power of CUDA device {self.device_index} ({exc})"
            self._shutdown(pynvml)
            return
        self._pynvml = pynvml
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, args=(pynvml, handle), daemon=True, name="power-monitor")
        self._thread.start()

    def _sample(self, pynvml, handle) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._samples.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
            except Exception as exc:  # keep what we have; report why sampling ended
                self._error = str(exc)
                return

    @staticmethod
    def _shutdown(pynvml) -> None:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass

    def stop(self) -> tuple[float | None, str]:
        """Stop sampling; return (mean watts or None, a note saying how or why not)."""
        if self._thread is None:
            return None, self._note
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval_s))
        self._thread = None
        self._shutdown(self._pynvml)
        self._pynvml = None
        samples = list(self._samples)
        mean = sum(samples) / len(samples)
        note = (
            f"NVML board power, mean of {len(samples)} samples every {self.interval_s:g}s "
            f"on CUDA device {self.device_index} ({self._name})"
        )
        if self._error:
            note += f"; sampling stopped early: {self._error}"
        self._note = note
        return mean, note


def _cpu_name() -> str:
    """A readable CPU model name; Linux exposes it in cpuinfo, other systems via platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def environment_info(device: torch.device) -> dict:
    """Versions and hardware names for summary.json (``versions`` = the VERSION_KEYS subset).

    cuda/cudnn are None on a CPU-only torch build. device_names lists every visible CUDA
    device on a CUDA run, or the CPU model on a CPU run.
    """
    import torchvision  # imported here: only this function needs it

    device = torch.device(device)
    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    if device.type == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        names = [_cpu_name()]
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device_names": names,
        "hostname": socket.gethostname(),
    }


# --------------------------------------------------------------------------- summary


def _present(records: list[dict], field: str) -> list:
    """Non-null, finite values of one field, in epoch order."""
    values = []
    for r in records:
        v = r.get(field)
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        values.append(v)
    return values


def summarize_run(records: list[dict], run_info: dict) -> dict:
    """Build the summary.json dict from the metrics.jsonl records and the trainer's run_info.

    See the module docstring for every field. Derived values come only from the records;
    when the records lack the data, the field is None.
    """
    missing = [f for f in RUN_INFO_FIELDS if f not in run_info]
    if missing:
        raise ValueError(f"summarize_run: run_info is missing {', '.join(missing)}; see the table in metrics.py")
    if run_info["status"] not in STATUSES:
        raise ValueError(f"summarize_run: status must be one of {STATUSES}, got {run_info['status']!r}")
    if run_info["precision"] not in PRECISIONS:
        raise ValueError(f"summarize_run: precision must be one of {PRECISIONS}, got {run_info['precision']!r}")
    if run_info["memory_format"] not in MEMORY_FORMATS:
        raise ValueError(
            f"summarize_run: memory_format must be one of {MEMORY_FORMATS}, got {run_info['memory_format']!r}"
        )

    # One record per epoch, the last written wins (a resumed run may rewrite an epoch).
    by_epoch: dict[int, dict] = {}
    for r in records:
        by_epoch[int(r["epoch"])] = r
    ordered = [by_epoch[e] for e in sorted(by_epoch)]

    best_acc1 = best_acc5 = best_epoch = None
    for r in ordered:
        acc1 = r.get("val_acc1")
        if acc1 is None or (isinstance(acc1, float) and not math.isfinite(acc1)):
            continue
        if best_acc1 is None or acc1 > best_acc1:
            best_acc1, best_acc5, best_epoch = acc1, r.get("val_acc5"), r["epoch"]

    last = ordered[-1] if ordered else {}
    imgs = _present(ordered, "imgs_per_sec")
    mem = _present(ordered, "peak_mem_gb")
    rss = _present(ordered, "peak_host_rss_gb")
    bad = _present(ordered, "bad_images")

    target = run_info["target_acc"]
    reached = None if target is None else (best_acc1 is not None and best_acc1 >= target)

    if mem:
        mem_note = (
            "max over epochs of torch.cuda.max_memory_allocated of the logging process; "
            "excludes the CUDA context and the allocator's cached blocks"
        )
    elif run_info["device"] != "cuda":
        mem_note = f"not measured: device is {run_info['device']}"
    else:
        mem_note = "not measured: no epoch recorded peak_mem_gb"

    derived = {
        "schema_version": SCHEMA_VERSION,
        "best_acc1": best_acc1,
        "best_acc5": best_acc5,
        "best_epoch": best_epoch,
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
    versions = run_info["versions"]
    summary = {}
    for field in SUMMARY_FIELDS:
        if field in derived:
            summary[field] = derived[field]
        elif field == "versions":
            summary[field] = {k: (versions or {}).get(k) for k in VERSION_KEYS}
        else:
            summary[field] = run_info[field]
    return _plain(summary)
