"""The device layer and the GPU rules that a CPU can check: device choice per process, the two process groups,
TF32, the compile timeout, normalization into the autocast dtype, the preemption agreement, and the NVIDIA-only
measurements that must say why they are missing (the stream drain before GPU JPEG decode: test_device_decode.py)."""

import datetime
import subprocess
import sys
import time
import types

import pytest
import torch
import torch.distributed as dist

import accelerator
import data
import presets
import train
import transforms
import utils
from conftest import REPO


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend this machine has `n` CUDA cards (device choice is pure logic on top of these two calls)."""

    def install(n):
        monkeypatch.setattr(accelerator, "accelerator_type", lambda: "cuda")
        monkeypatch.setattr(torch.accelerator, "device_count", lambda: n)

    return install


@pytest.fixture
def single_rank_group():
    """A real one-process group with backend cuda:gloo (NCCL's rule: device tensors only), torn down after."""
    store = dist.HashStore()
    dist.init_process_group("cuda:gloo", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=30))
    yield
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------------------
# Device choice
# ------------------------------------------------------------------------------------------------------------
def test_cpu_and_a_missing_accelerator():
    assert accelerator.resolve_device("cpu") == torch.device("cpu")
    if accelerator.accelerator_type() is None:
        with pytest.raises(ValueError, match="--device cuda was asked for but no CUDA device is available"):
            accelerator.resolve_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        accelerator.resolve_device("gpu0")


def test_explicit_index_is_honoured_in_a_single_process(fake_gpus):
    fake_gpus(4)
    assert accelerator.resolve_device("cuda:2") == torch.device("cuda", 2)
    assert accelerator.resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"only 4 cuda device\(s\) are visible"):
        accelerator.resolve_device("cuda:4")
    with pytest.raises(ValueError, match="names one card for all 8 processes"):
        accelerator.resolve_device("cuda:2", local_rank=3, world_size=8)


def test_train_uses_the_device_the_user_named(fake_gpus, monkeypatch):
    """`--device cuda:N` used to be replaced by cuda:local_rank (always cuda:0 in one process)."""
    fake_gpus(4)
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    args = train.get_args_parser().parse_args(["--device", "cuda:3"])
    assert train.run_device(args) == torch.device("cuda", 3)


def test_slurm_task_with_one_visible_card_gets_a_valid_ordinal(fake_gpus, monkeypatch):
    """SLURM without torchrun, one GPU per task: SLURM_LOCALID 5 must not become cuda:5 on a node where each task
    sees a single card."""
    fake_gpus(1)
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "13")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    args = train.get_args_parser().parse_args(["--device", "cuda"])
    assert train.run_device(args) == torch.device("cuda", 0)
    fake_gpus(8)  # eight visible cards: the local id picks one
    assert train.run_device(args) == torch.device("cuda", 5)


def test_decode_device_cuda_needs_an_nvidia_gpu():
    args = train.get_args_parser().parse_args(["--data-path", "x", "--device", "cpu", "--decode-device", "cuda"])
    with pytest.raises(train.ConfigError, match="nvJPEG, which NVIDIA GPUs alone have"):
        train.validate_args(args)


# ------------------------------------------------------------------------------------------------------------
# Process groups
# ------------------------------------------------------------------------------------------------------------
def test_group_serves_reads_the_backend_config(single_rank_group):
    assert accelerator.group_serves(dist.group.WORLD, "cuda")
    assert not accelerator.group_serves(dist.group.WORLD, "cpu")
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.all_reduce(torch.ones(1))  # what NCCL does with a host tensor
    gloo = dist.new_group(backend="gloo")
    assert accelerator.group_serves(gloo, "cpu")


def test_host_reductions_and_ddp_avoid_a_device_only_default_group(single_rank_group):
    info = utils.DistInfo(distributed=True, control_group=dist.new_group(backend="gloo"),
                          device_group=dist.new_group(backend="gloo"))
    assert utils.dist_sum([1.5, 2], info) == [1.5, 2.0]
    assert utils.dist_max([3.0], info) == [3.0]
    assert utils.all_gather_objects({"a": 1}, info) == [{"a": 1}]
    utils.barrier(info)
    model = torch.nn.Linear(3, 2)
    ddp = train.wrap_ddp(model, torch.device("cpu"), info.device_group)
    assert ddp.process_group is info.device_group
    assert not ddp.static_graph  # static_graph buys nothing for ResNet50 and is fragile with torch.compile
    ddp(torch.randn(4, 3)).sum().backward()  # the gradient all-reduce runs on the device group
    assert model.weight.grad is not None


# ------------------------------------------------------------------------------------------------------------
# Precision and compile options
# ------------------------------------------------------------------------------------------------------------
def test_tf32_for_the_autotuner_leaves_the_precision_readable():
    """torch.compile's max-autotune reads torch.get_float32_matmul_precision(); after the per-backend TF32
    switches it raises, and the compile failed. The switches for the autotuner keep it readable, with TF32 on and
    off. (A fresh interpreter: these global settings would otherwise outlive the test.)"""
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import accelerator\n"
            "for on in (True, False):\n"
            "    accelerator.set_tf32(on, for_autotune=True)\n"
            "    print(torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,\n"
            "          torch.backends.cudnn.allow_tf32)\n")
    proc = subprocess.run([sys.executable, "-c", code, REPO], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["high True True", "highest False False"]


def test_tf32_switch_and_note():
    before = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    try:
        accelerator.set_tf32(False)
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        accelerator.set_tf32(True)
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
    assert accelerator.tf32_note(torch.device("cpu"), True) is None
    if torch.version.cuda is not None and torch.version.hip is None:
        assert "TF32 convolutions" in accelerator.tf32_note(torch.device("cuda", 0), True)
        assert "IEEE" in accelerator.tf32_note(torch.device("cuda", 0), False)


def test_tf32_off_reaches_the_backend_flags(tmp_path):
    before = torch.backends.cudnn.conv.fp32_precision
    try:
        code = train.cli(["--benchmark", "model", "--benchmark-steps", "1", "--benchmark-warmup", "0", "--device",
                          "cpu", "--model", "resnet18", "--batch-size", "2", "--train-crop-size", "32",
                          "--tf32", "off", "--output-dir", str(tmp_path)])
        assert code == 0
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    finally:
        torch.backends.cudnn.conv.fp32_precision = before


def test_max_autotune_raises_the_collective_timeout():
    parse = train.get_args_parser().parse_args
    assert train.dist_timeout_minutes(parse([])) == 30.0
    assert train.dist_timeout_minutes(parse(["--compile"])) == 30.0
    assert train.dist_timeout_minutes(parse(["--compile", "--compile-mode", "max-autotune"])) == 120.0
    assert train.dist_timeout_minutes(parse(["--compile", "--compile-mode", "max-autotune-no-cudagraphs",
                                             "--dist-timeout", "300"])) == 300.0


def test_uint8_batches_are_normalized_straight_into_the_autocast_dtype(tmp_path):
    batch = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    reference = transforms.normalize_batch(batch, presets.IMAGENET_MEAN, presets.IMAGENET_STD)
    half = transforms.normalize_batch(batch, presets.IMAGENET_MEAN, presets.IMAGENET_STD, dtype=torch.bfloat16,
                                      channels_last=True)
    assert half.dtype == torch.bfloat16 and half.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(half, reference.to(torch.bfloat16))  # float32 arithmetic, one rounding

    from conftest import make_imagefolder

    folder = make_imagefolder(tmp_path / "data", classes=2, train_per_class=4, val_per_class=1, size=40)
    cfg = data.DataConfig(data_path=folder, backend="fast", batch_size=2, workers=0, train_crop_size=32,
                          val_resize_size=36, val_crop_size=32)
    loaders = data.build_data_loaders(cfg, rank=0, world_size=1)
    device_loader = data.make_device_loader(loaders.train, cfg, torch.device("cpu"), train=True,
                                            channels_last=False, dtype=torch.bfloat16)
    images, targets, _ = next(iter(device_loader))
    assert images.dtype == torch.bfloat16 and images.shape == (2, 3, 32, 32)


# ------------------------------------------------------------------------------------------------------------
# Preemption: agreed every few steps, not every step
# ------------------------------------------------------------------------------------------------------------
def test_stop_agreement_checks_about_every_two_seconds_and_stops_at_a_check(single_rank_group, monkeypatch):
    info = utils.DistInfo(distributed=True, control_group=dist.new_group(backend="gloo"))
    flag = utils.PreemptionFlag()
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    agreement = utils.StopAgreement(flag, info, check_seconds=2.0)
    decisions = []
    for step in range(100):  # 0.125 s per step
        decisions.append(agreement.should_stop(step))
        clock[0] += 0.125
    assert not any(decisions)
    # Step 0 and 1 check (no step time known yet), then every 16 steps: 2 s / 0.125 s.
    assert agreement.checks == 2 + len(range(17, 100, 16))
    flag.signum = 15
    stops = [step for step in range(100, 140) if agreement.should_stop(step)]
    assert stops and stops[0] - 100 <= 16  # answered at the next check, about 2 s later
    agreement.start_epoch()
    assert agreement.should_stop(0)  # a new epoch checks at once


def test_a_single_process_reads_its_flag_every_step():
    flag = utils.PreemptionFlag()
    agreement = utils.StopAgreement(flag, utils.DistInfo())
    assert not agreement.should_stop(5)
    flag.signum = 10
    assert agreement.should_stop(6) and agreement.checks == 0


# ------------------------------------------------------------------------------------------------------------
# Measurements that exist only on some hardware
# ------------------------------------------------------------------------------------------------------------
def test_power_monitor_on_cpu_returns_none_with_reason():
    monitor = accelerator.PowerMonitor(torch.device("cpu"), interval_s=0.01)
    monitor.start()
    watts, note = monitor.stop()
    assert watts is None and "NVIDIA GPUs only (CPU run)" in note


def test_power_monitor_without_nvml_package_names_it(monkeypatch):
    monkeypatch.setattr(accelerator, "is_nvidia", lambda device: True)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monitor = accelerator.PowerMonitor(torch.device("cuda", 0), interval_s=0.01)
    monitor.start()
    watts, note = monitor.stop()
    assert watts is None and "nvidia-ml-py" in note


def test_power_monitor_averages_samples_from_nvml(monkeypatch):
    """A stand-in pynvml exercises the sampling thread and the mean on a CPU machine."""
    readings = iter([100_000, 200_000, 300_000] + [300_000] * 1000)  # milliwatts
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: ("handle", i),
        nvmlDeviceGetHandleByPciBusId=lambda bus: ("handle", bus),
        nvmlDeviceGetName=lambda h: b"Fake GPU",
        nvmlDeviceGetPowerUsage=lambda h: next(readings),
    )
    monkeypatch.setattr(accelerator, "is_nvidia", lambda device: True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monitor = accelerator.PowerMonitor(torch.device("cuda", 0), interval_s=0.005)
    monitor.start()
    time.sleep(0.2)
    watts, note = monitor.stop()
    assert 200.0 < watts <= 300.0
    assert "Fake GPU" in note and "samples" in note


def test_nvml_handle_prefers_pci_address_then_visible_devices(monkeypatch):
    """CUDA indices follow CUDA_VISIBLE_DEVICES, NVML's do not: the lookup must translate."""
    calls = []
    fake = types.SimpleNamespace(
        nvmlDeviceGetHandleByPciBusId=lambda bus: calls.append(("pci", bus)) or "h",
        nvmlDeviceGetHandleByIndex=lambda i: calls.append(("index", i)) or "h",
    )
    props = types.SimpleNamespace(pci_domain_id=0, pci_bus_id=0x65, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    accelerator._nvml_handle(fake, 0)
    assert calls == [("pci", "00000000:65:00.0")]

    def no_gpu(i):
        raise RuntimeError("no CUDA")

    calls.clear()
    monkeypatch.setattr(torch.cuda, "get_device_properties", no_gpu)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    accelerator._nvml_handle(fake, 1)
    assert calls == [("index", 5)]


def test_memory_and_environment_on_cpu():
    import platform

    import torchvision

    assert accelerator.peak_memory_gb(torch.device("cpu")) is None
    accelerator.reset_peak_memory(torch.device("cpu"))  # a no-op, not an error
    info = accelerator.environment_info(torch.device("cpu"))
    assert info["torch"] == torch.__version__ and info["torchvision"] == torchvision.__version__
    assert info["cuda"] == torch.version.cuda and info["python"] == platform.python_version()
    assert isinstance(info["device_names"], list) and info["device_names"][0] and info["hostname"]
