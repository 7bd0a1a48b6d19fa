"""The device layer: every device-specific call of the project goes through this module.

Built on `torch.accelerator` and `torch.distributed.get_default_backend_for_device`, so NVIDIA CUDA, AMD ROCm (as
`cuda`), Intel XPU, Ascend NPU (`torch_npu`) and the CPU take the same path. What exists only on NVIDIA hardware
(nvJPEG decode, NVML power, TF32) says so in one line instead of failing.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import socket
import threading

import torch
import torch.distributed as dist

_GIB = float(2**30)

# Device types whose runtime lives in a separate package, imported only when asked for.
_OUT_OF_TREE = {"npu": "torch_npu"}


def accelerator_type() -> str | None:
    """The type of this machine's accelerator ('cuda', 'xpu', 'npu', ...) when one is usable, else None."""
    acc = torch.accelerator.current_accelerator(check_available=True)
    return acc.type if acc is not None else None


def default_device_type() -> str:
    return accelerator_type() or "cpu"


def resolve_device(spec: str, *, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device this process trains on, from --device and the launcher's local rank; a one-line ValueError naming
    --device when it cannot be used.

    `cuda` (no index) is local rank modulo the visible devices, a valid ordinal under torchrun (8 processes, 8
    visible cards) and under SLURM without torchrun (one visible card per task, local ids 0-7). `cuda:N` is
    honoured in a single process; with several it would put them all on one card, so it is refused."""
    try:
        requested = torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {spec!r} is not a device name; use cpu, cuda, cuda:N, xpu or npu") from e
    if requested.type == "cpu":
        return torch.device("cpu")
    if requested.type in _OUT_OF_TREE:
        module = _OUT_OF_TREE[requested.type]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"--device {requested.type} needs the {module} package (pip install {module})") from e
    if accelerator_type() != requested.type:
        raise ValueError(f"--device {spec} was asked for but no {requested.type.upper()} device is available; "
                         f"use --device {default_device_type()}")
    count = torch.accelerator.device_count()
    if requested.index is not None:
        if world_size > 1:
            raise ValueError(f"--device {spec} names one card for all {world_size} processes; pass --device "
                             f"{requested.type} (each process takes its local rank's card) and choose cards with "
                             f"CUDA_VISIBLE_DEVICES")
        if requested.index >= count:
            raise ValueError(f"--device {spec}: only {count} {requested.type} device(s) are visible "
                             f"(0..{count - 1})")
        return requested
    return torch.device(requested.type, local_rank % count)


def activate(device: torch.device) -> None:
    """Make `device` this process's current device (before the process group, so NCCL binds to it)."""
    if device.type != "cpu":
        torch.accelerator.set_device_index(device.index)


def synchronize(device: torch.device) -> None:
    """Wait for all work queued on the device (a no-op on the CPU, whose ops run synchronously)."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def new_stream(device: torch.device) -> torch.Stream | None:
    """A side stream on an accelerator; None on the CPU, where work runs on the calling thread in order."""
    return None if device.type == "cpu" else torch.Stream(device=device)


def current_stream(device: torch.device) -> torch.Stream | None:
    return None if device.type == "cpu" else torch.accelerator.current_stream(device)


def on_stream(stream: torch.Stream | None):
    """Context that makes `stream` current (nothing to do for None)."""
    return stream if stream is not None else contextlib.nullcontext()


def drain_current_stream(device: torch.device) -> None:
    """Block until the current stream of `device` is idle.

    Needed before any library call that allocates its output on the current stream but writes it on a private
    stream (nvJPEG through nvImageCodec in device_decode.py, pytorch/vision#9606): the caching allocator may hand out a
    block that kernels queued earlier on the current stream still read or write."""
    stream = current_stream(device)
    if stream is not None:
        stream.synchronize()


def pin_memory(device: torch.device) -> bool:
    """Whether host batches should be pinned: only copies to an accelerator benefit."""
    return device.type != "cpu"


def dist_backend(device: torch.device, requested: str | None = None) -> str:
    """--dist-backend, or the default for the device: nccl for CUDA/ROCm, xccl for XPU, hccl for NPU, gloo on CPU."""
    return requested or dist.get_default_backend_for_device(device)


def group_serves(group, device_type: str) -> bool:
    """Whether a process group has a backend for tensors of `device_type` (NCCL serves only CUDA tensors; a
    group made with backend 'cuda:gloo' serves only CUDA tensors too, which is how CPU tests emulate NCCL)."""
    config = dist.get_backend_config(group)
    served = {entry.split(":", 1)[0].strip() for entry in config.split(",") if ":" in entry}
    return not served or device_type in served


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=enabled)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on the device's type; no autocast when dtype is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_tf32(enabled: bool, *, for_autotune: bool = False) -> None:
    """TF32 (10-bit mantissa) for float32 convolutions and matmuls on NVIDIA Ampere and later. PyTorch's default
    already runs convolutions in TF32 on those cards, so an "fp32" run is TF32 unless this is off.

    `for_autotune` (--compile-mode max-autotune*) sets the same through the older global switches: torch.compile's
    autotuner reads torch.get_float32_matmul_precision(), which raises once the per-backend settings below have
    been used (pytorch/pytorch#196728), and the compile would fail at the first step."""
    if for_autotune:
        torch.set_float32_matmul_precision("high" if enabled else "highest")
        torch.backends.cudnn.allow_tf32 = enabled
        return
    precision = "tf32" if enabled else "ieee"
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cuda.matmul.fp32_precision = precision


def tf32_note(device: torch.device, enabled: bool) -> str | None:
    """One log line on what "fp32" means on this device, or None where TF32 does not exist."""
    if not is_nvidia(device):
        return None
    if enabled:
        return ("fp32 math: TF32 convolutions and matmuls on Ampere and later GPUs (--tf32 on); "
                "--tf32 off for IEEE float32")
    return "fp32 math: IEEE float32 convolutions and matmuls (--tf32 off)"


def is_nvidia(device: torch.device) -> bool:
    """CUDA on NVIDIA hardware (ROCm also appears as 'cuda', with torch.version.hip set)."""
    return device.type == "cuda" and torch.version.cuda is not None and torch.version.hip is None


def device_name(device: torch.device) -> str:
    if device.type == "cpu":
        return cpu_name()
    return torch.get_device_module(device.type).get_device_name(device.index)


# ------------------------ RNG state of the accelerator (the CPU's: utils.get_rng_state)
def get_rng_state() -> tuple[str, torch.Tensor] | None:
    """(device type, generator state of the current device) when an accelerator is in use, else None."""
    kind = accelerator_type()
    if kind is None:
        return None
    module = torch.get_device_module(kind)
    if hasattr(module, "is_initialized") and not module.is_initialized():
        return None
    return kind, module.get_rng_state()


def set_rng_state(kind: str, state: torch.Tensor) -> None:
    if accelerator_type() == kind:
        torch.get_device_module(kind).set_rng_state(state)


# ----------------------------------------------------------- Memory, names and versions
def peak_memory_gb(device: torch.device) -> float | None:
    """Peak memory held by tensors on the device since the last `reset_peak_memory` (GiB); None on the CPU.
    The context and the allocator's spare blocks are not counted, so nvidia-smi shows more."""
    if device.type == "cpu":
        return None
    return torch.accelerator.max_memory_allocated(device) / _GIB


def reset_peak_memory(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.reset_peak_memory_stats(device)


def cpu_name() -> str:
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
    """Versions and hardware names for summary.json. cuda/cudnn are None on builds without them; device_names
    lists every visible accelerator of the run's type, or the CPU model on a CPU run."""
    import torchvision  # only this function needs it

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cpu":
        names = [cpu_name()]
    else:
        names = [torch.get_device_module(device.type).get_device_name(i)
                 for i in range(torch.accelerator.device_count())]
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device_names": names,
        "hostname": socket.gethostname(),
    }


# ---------------------------------------------- Board power (NVIDIA only, through NVML)
def _nvml_handle(pynvml, device_index: int):
    """NVML handle for a CUDA device index.

    CUDA indices follow CUDA_VISIBLE_DEVICES while NVML numbers all cards, so the PCI address is used when torch
    exposes it; otherwise the visible-devices list is mapped."""
    try:
        props = torch.cuda.get_device_properties(device_index)
        domain, bus, dev = (getattr(props, f"pci_{part}_id", None) for part in ("domain", "bus", "device"))
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
    """Mean board power of one NVIDIA GPU, sampled from NVML (the optional ``nvidia-ml-py`` package) in a background
    thread. Power is a side measurement: every failure (a CPU run, another vendor, the package missing, an
    unsupported board) is ``(None, reason)``, not an exception that would stop training."""

    def __init__(self, device: torch.device | None, interval_s: float = 1.0):
        self.device = device
        self.device_index = device.index if device is not None and is_nvidia(device) else None
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
            kind = "CPU run" if self.device is None or self.device.type == "cpu" else f"{self.device.type} device"
            self._note = f"power not measured: NVML reads NVIDIA GPUs only ({kind})"
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
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
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

    def stop(self) -> tuple[float | None, str]:
        """Stop sampling; return (mean watts or None, a note saying how or why not)."""
        if self._thread is None:
            return None, self._note
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval_s))
        self._thread = None
        with contextlib.suppress(Exception):
            self._pynvml.nvmlShutdown()
        self._pynvml = None
        samples = list(self._samples)
        mean = sum(samples) / len(samples)
        note = (f"NVML board power, mean of {len(samples)} samples every {self.interval_s:g}s "
                f"on CUDA device {self.device_index} ({self._name})")
        if self._error:
            note += f"; sampling stopped early: {self._error}"
        self._note = note
        return mean, note
