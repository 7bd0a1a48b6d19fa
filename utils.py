"""Small shared pieces: distributed setup (the only reader of torchrun's or SLURM's environment) and reductions,
seeding and RNG state, accuracy, step logging, weight-decay parameter groups, LARS and the learning-rate schedule."""

import datetime
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import accelerator
import metrics


# -------------------------------------------------------------------------- Distributed
@dataclass
class DistInfo:
    """Who this process is, and its two process groups: `device_group` for device tensors (DDP, SyncBatchNorm), on
    the device's backend; `control_group` for host values (sums, flags, objects, barriers), on gloo: NCCL refuses
    CPU tensors, and a host value reduced on the device would cost a copy and a synchronization."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    distributed: bool = False
    device_group: object = None
    control_group: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nnodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def read_launcher_env(environ=None) -> dict | None:
    """Rank, world size and local rank from torchrun's variables, else from SLURM's; None when neither."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return {
            "rank": int(env["RANK"]),
            "world_size": int(env["WORLD_SIZE"]),
            "local_rank": int(env.get("LOCAL_RANK", 0)),
            "local_world_size": int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        }
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        ntasks = int(env["SLURM_NTASKS"])
        nnodes = int(env.get("SLURM_NNODES", 1))
        return {
            "rank": int(env["SLURM_PROCID"]),
            "world_size": ntasks,
            "local_rank": int(env.get("SLURM_LOCALID", 0)),
            "local_world_size": max(1, ntasks // max(1, nnodes)),
            "master_addr": env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", "")),
        }
    return None


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list, e.g. 'gpu[03-05,07],cpu1' -> 'gpu03' (no scontrol needed)."""
    prefix, first_range = re.match(r"([^,\[]*)(?:\[([^\],-]*))?", nodelist.strip()).groups()
    return prefix + (first_range or "") or "127.0.0.1"


def init_distributed(device: torch.device, dist_backend: str, dist_url: str, timeout_minutes: float) -> DistInfo:
    """Start the process group when launched by torchrun or SLURM; a single process otherwise. Device tensors go
    to the default group (`dist_backend`) when it serves `device`, else (e.g. `--dist-backend cuda:gloo --device
    cpu`, the CPU stand-in for NCCL's CUDA-only rule) to a group of the device's own default backend."""
    env = read_launcher_env()
    if env is None or env["world_size"] <= 1 and "RANK" not in os.environ:
        return DistInfo()
    if "master_addr" in env:  # SLURM without torchrun: env:// needs these two
        os.environ.setdefault("MASTER_ADDR", env["master_addr"])
        os.environ.setdefault("MASTER_PORT", "29500")
    timeout = datetime.timedelta(minutes=timeout_minutes)
    store, rank, world_size = next(dist.rendezvous(dist_url, rank=env["rank"], world_size=env["world_size"],
                                                   timeout=timeout))
    # torchrun --max-restarts keeps its key-value store across restarts: without a per-attempt prefix, restarted
    # workers would read the dead workers' addresses and fail to connect.
    store = dist.PrefixStore(f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    dist.init_process_group(backend=dist_backend, store=store, world_size=world_size, rank=rank, timeout=timeout)
    # Every rank creates the same groups in the same order, as new_group requires.
    control = dist.new_group(backend="gloo", timeout=timeout)
    if accelerator.group_serves(dist.group.WORLD, device.type):
        device_group = dist.group.WORLD
    else:
        device_group = dist.new_group(backend=accelerator.dist_backend(device), timeout=timeout)
    return DistInfo(
        rank=env["rank"],
        world_size=env["world_size"],
        local_rank=env["local_rank"],
        local_world_size=env["local_world_size"],
        distributed=True,
        device_group=device_group,
        control_group=control,
    )


def _reduce_host(values, info: DistInfo, op) -> list:
    t = torch.tensor(values, dtype=torch.float64)
    if info.distributed:
        dist.all_reduce(t, op=op, group=info.control_group)
    return t.tolist()


def dist_sum(values, info: DistInfo) -> list:
    """Sum a list of host numbers over all ranks, exactly (float64), on the control group."""
    return _reduce_host(values, info, dist.ReduceOp.SUM)


def dist_max(values, info: DistInfo) -> list:
    """Element-wise maximum of a list of host numbers over all ranks, on the control group."""
    return _reduce_host(values, info, dist.ReduceOp.MAX)


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj, group=info.control_group)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier(group=info.control_group)


class PreemptionFlag:
    """SIGTERM / SIGUSR1 (what SLURM and Kubernetes send before a kill) only set a flag; the training loop asks a
    StopAgreement at step boundaries, all ranks save a checkpoint at the same step and exit."""

    def __init__(self):
        self.signum = None

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.signum = signum

    @property
    def set(self) -> bool:
        return self.signum is not None


class StopAgreement:
    """Whether to stop now, decided by all ranks at the same step without a collective on every step.

    A signal may reach one rank only, and a host barrier on every step would slow every step. The ranks agree
    about every `check_seconds` of training instead: at each check every rank proposes the next interval from its
    own step time, the shortest wins (in the same all-reduce as the flag), so all stop at the same step. A single
    process reads its flag on every step."""

    def __init__(self, flag: PreemptionFlag, info: DistInfo, *, check_seconds: float = 2.0, max_interval: int = 100):
        self.flag, self.info = flag, info
        self.check_seconds, self.max_interval = check_seconds, max_interval
        self.checks = 0  # collectives issued, for tests and logs
        self.start_epoch()

    def start_epoch(self) -> None:
        """Check at the first step of an epoch: the time since the last check includes evaluation."""
        self.next_check, self.last = None, None

    def should_stop_now(self) -> bool:
        """An agreement outside the step loop (at the end of an epoch), where every rank calls it."""
        self.start_epoch()
        return self.should_stop(0)

    def should_stop(self, step: int) -> bool:
        if not self.info.distributed:
            return self.flag.set
        if self.next_check is not None and step < self.next_check:
            return False
        now = time.perf_counter()
        proposal = 1
        if self.last is not None and step > self.last[0]:
            step_time = max(1e-9, (now - self.last[1]) / (step - self.last[0]))
            proposal = int(min(self.max_interval, max(1.0, self.check_seconds / step_time)))
        # MAX of the flags is "any rank was signalled"; MAX of the negated proposals is the shortest interval.
        t = torch.tensor([1 if self.flag.set else 0, -proposal], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.info.control_group)
        self.checks += 1
        self.last = (step, now)
        self.next_check = step + int(-t[1].item())
        return bool(t[0].item())


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process groups and drop `info`'s references to them. A gloo group object that outlives its
    destruction until the interpreter shuts down can abort the process there ("terminate called without an active
    exception", exit -6) after everything succeeded: about one run in five under load when `info` is global."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
    info.device_group = info.control_group = None


# ------------------------------------------------------------------ Seeds and RNG state
def seed_everything(seed: int, rank: int) -> None:
    """Seed python, numpy and torch; each rank gets its own stream (rank offset) for batch-level randomness
    such as MixUp/CutMix. Per-sample augmentation is seeded by the sampler instead (see sampler.py)."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def shared_random_seed(info: DistInfo) -> int:
    """A random seed, the same on every rank (rank 0's draw). The training sampler splits one shuffled order
    between the ranks, which partitions the data only if every rank shuffles with the same seed."""
    return int(all_gather_objects(int.from_bytes(os.urandom(4), "little"), info)[0])


def get_rng_state() -> dict:
    """This process's RNG states as plain types and tensors (loadable with weights_only=True)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    device_state = accelerator.get_rng_state()
    if device_state is not None:  # saved under the device type's name ("cuda", "xpu", ...)
        state[device_state[0]] = device_state[1]
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = state["numpy"]
    np.random.set_state((npv[0], npv[1].numpy().astype(np.uint32), npv[2], npv[3], npv[4]))
    torch.set_rng_state(state["torch"])
    for kind, device_state in state.items():
        if kind not in ("python", "numpy", "torch"):
            accelerator.set_rng_state(kind, device_state)


# ---------------------------------------------------------------------- Metrics helpers
def accuracy_counts(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """Number of correct predictions at each k, as device tensors (no sync). Soft targets (MixUp/CutMix)
    count their arg-max class."""
    if target.ndim == 2:
        target = target.argmax(dim=1)
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    correct = pred.eq(target.unsqueeze(1))
    return [correct[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


class StepLogger:
    """Per-iteration console log in the reference's shape. Running sums stay on the device and are read only every
    `print_freq` steps, so the hot loop never waits on the GPU."""

    def __init__(self, header: str, total_steps: int, print_freq: int, device, enabled: bool, stream=None,
                 start_step: int = 0):
        self.header, self.total, self.print_freq = header, total_steps, max(1, print_freq)
        self.start_step = start_step  # a resumed epoch: the steps before it ran in another process
        self.device, self.enabled = device, enabled
        self.stream = stream or sys.stdout
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct1 = torch.zeros((), dtype=torch.int64, device=device)
        self.correct5 = torch.zeros((), dtype=torch.int64, device=device)
        self.samples = 0
        self.last = time.perf_counter()
        self.data_time = 0.0
        self.last_steps = start_step

    def update(self, loss: torch.Tensor, correct1: torch.Tensor, correct5: torch.Tensor, batch: int,
               data_time: float) -> None:
        self.loss_sum += loss.detach().double() * batch
        self.correct1 += correct1
        self.correct5 += correct5
        self.samples += batch
        self.data_time += data_time

    def maybe_print(self, step: int, lr: float, global_batch: int) -> None:
        done = step + 1
        if not self.enabled or (done % self.print_freq != 0 and done != self.total):
            return
        now, n = time.perf_counter(), max(1, self.samples)
        step_time = (now - self.last) / max(1, done - self.last_steps)
        eta = step_time * (self.total - done)
        peak_gb = accelerator.peak_memory_gb(self.device)
        mem = "" if peak_gb is None else f"  max mem: {peak_gb * 1024:.0f}MB"
        print(
            f"{self.header} [{done}/{self.total}]  eta: {metrics.format_hms(eta)}  lr: {lr:.6f}  "
            f"img/s: {global_batch / step_time:.1f}  loss: {self.loss_sum.item() / n:.4f}  "
            f"acc1: {self.correct1.item() * 100.0 / n:.2f}  acc5: {self.correct5.item() * 100.0 / n:.2f}  "
            f"time: {step_time:.4f}  data: {self.data_time / max(1, done - self.start_step):.4f}{mem}",
            file=self.stream, flush=True)
        self.last, self.last_steps = now, done


# --------------------------------------- Optimizer parameter groups and the LR schedule
NORM_CLASSES = (
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.LocalResponseNorm,
)


def set_weight_decay(model: torch.nn.Module, weight_decay: float, norm_weight_decay: float | None = None,
                     custom_keys_weight_decay: list[tuple[str, float]] | None = None) -> list[dict]:
    """Parameter groups by weight decay: normalization layers' parameters get `norm_weight_decay` when
    given; parameters whose name ends with a custom key (e.g. 'bias') get that key's decay."""
    custom = dict(custom_keys_weight_decay or [])
    groups: dict[float, list] = {}
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            full = f"{prefix}.{name}" if prefix else name
            wd = weight_decay
            matched = [k for k in custom if full.endswith(k) or name == k]
            if matched:
                wd = custom[matched[0]]
            elif norm_weight_decay is not None and isinstance(module, NORM_CLASSES):
                wd = norm_weight_decay
            groups.setdefault(wd, []).append(p)
    return [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]


class LRSchedule:
    """LR factor as a function of (epoch, step), so a resumed run gets exactly the lr it would have had.

    Warmup is per iteration (Goyal et al. 2017). After it, steplr, exponentiallr and cosineannealinglr are per epoch,
    counted from the end of warmup as in torchvision's reference (SequentialLR). poly (MLPerf's polynomial decay)
    and linear (FFCV's ramp down) are per iteration and reach `lr_min` at the run's last iteration."""

    NAMES = ("steplr", "cosineannealinglr", "exponentiallr", "poly", "linear")
    WARMUPS = ("linear", "constant")

    def __init__(self, *, name: str, epochs: int, iters_per_epoch: int, warmup_epochs: int = 0,
                 warmup_method: str = "constant", warmup_decay: float = 0.01, step_size: int = 30,
                 gamma: float = 0.1, lr_min: float = 0.0, base_lr: float = 0.1, power: float = 2.0):
        self.name, self.epochs, self.iters = name, epochs, max(1, iters_per_epoch)
        self.warmup_epochs, self.warmup_method, self.warmup_decay = warmup_epochs, warmup_method, warmup_decay
        self.step_size, self.gamma, self.lr_min, self.base_lr = step_size, gamma, lr_min, base_lr
        self.power = power

    def factor(self, epoch: int, step: int) -> float:
        if epoch < self.warmup_epochs:
            if self.warmup_method == "constant":
                return self.warmup_decay
            it = epoch * self.iters + step
            total = self.warmup_epochs * self.iters
            return self.warmup_decay + (1.0 - self.warmup_decay) * it / total
        e = epoch - self.warmup_epochs
        if self.name == "steplr":
            return self.gamma ** (e // self.step_size)
        if self.name == "exponentiallr":
            return self.gamma ** e
        ratio = self.lr_min / self.base_lr if self.base_lr else 0.0
        if self.name in ("poly", "linear"):
            last = max(1, (self.epochs - self.warmup_epochs) * self.iters - 1)  # iterations after warmup, minus one
            left = 1.0 - min(1.0, (e * self.iters + step) / last)
            return ratio + (1.0 - ratio) * left ** (self.power if self.name == "poly" else 1.0)
        t_max = max(1, self.epochs - self.warmup_epochs)
        return ratio + (1.0 - ratio) * (1 + math.cos(math.pi * e / t_max)) / 2

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> float:
        """Set every group's lr for this iteration; returns the lr of the first group."""
        f = self.factor(epoch, step)
        for group in optimizer.param_groups:
            group["lr"] = self.base_lr * f  # --lr of this run, also after a resume
        return optimizer.param_groups[0]["lr"]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman and Ginsburg 2017), as the MLPerf ResNet-50 reference
    applies it. For each parameter tensor w with gradient g:

        trust = eta * ||w|| / (||g|| + wd * ||w|| + eps)    (1 when ||w|| or ||g|| is 0)
        v     = momentum * v + lr * trust * (g + wd * w)
        w     = w - v

    Groups with `lars_adapt=False` (BatchNorm and bias parameters, whose weight decay is 0 too) skip the trust
    ratio: plain momentum SGD. Everything stays on the device: no host synchronization per step."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            wd, lr, momentum = group["weight_decay"], group["lr"], group["momentum"]
            grads = [p.grad for p in params]
            if group["lars_adapt"]:
                # One fused kernel per list for the norms, instead of two launches per tensor.
                w_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
            for i, (p, g) in enumerate(zip(params, grads)):
                update = g.add(p, alpha=wd) if wd else g.clone()
                if group["lars_adapt"]:
                    w_norm, g_norm = w_norms[i], g_norms[i]
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"]),
                                        torch.ones_like(w_norm))
                    update.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(update, alpha=lr)
                p.sub_(buf)
        return loss


def lars_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """LARS groups as in the MLPerf reference: BatchNorm (any normalization layer) and bias parameters get neither
    weight decay nor the trust ratio; every other tensor gets both."""
    adapted, plain = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                (plain if isinstance(module, NORM_CLASSES) or name == "bias" else adapted).append(p)
    return [{"params": adapted, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0, "lars_adapt": False}]


def train_resolution(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> int:
    """Progressive resizing as FFCV's ImageNet recipes do it: `min_res` up to epoch `start_ramp`, `max_res` from
    `end_ramp` on, and in between the linear interpolation rounded to a multiple of 32, kept within
    [min_res, max_res]: FFCV's rounding alone would step outside a range narrower than 32 px (16 to 24 gives 32)."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interpolated = min_res + (max_res - min_res) * (epoch - start_ramp) / (end_ramp - start_ramp)
    return min(max(int(round(interpolated / 32)) * 32, min_res), max_res)
