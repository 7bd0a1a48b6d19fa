"""The input pipeline, built by one factory: `build_data_loaders` makes the datasets, samplers, DataLoaders
and the device-side stage for every backend, and `DeviceLoader` is what the training loop iterates.

Backends (--backend):
  pil, tensor   torchvision's reference presets: decode, augment, convert to float and normalize on the CPU
  fast          uint8 end to end on the CPU (decode + crop-resize in one step, flip), 4x fewer bytes to copy;
                float conversion, normalization and channels_last happen on the device. Training JPEGs are
                decoded only where the crop lies when nvImageCodec is installed (--roi-decode, jpeg_roi.py)
With --decode-device cuda the workers only read file bytes and sample crop parameters; each batch's crop regions
are decoded on the GPU (nvJPEG, device_decode.py), resized and flipped there, in DeviceLoader's background
thread. The same code runs with the CPU as the device.
"""

import dataclasses
import hashlib
import multiprocessing
import os
import queue
import signal
import sys
import threading
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

import accelerator
import datasets
import device_decode
import jpeg_roi
import presets
import sampler as samplers
import transforms

BACKENDS = ("pil", "tensor", "fast")


@dataclass
class DataConfig:
    data_path: str
    backend: str = "pil"
    decode_on_device: bool = False  # --decode-device cuda; tests run the same path with the CPU as the device
    batch_size: int = 32
    workers: int = 4
    train_crop_size: int = 224
    val_resize_size: int = 256
    val_crop_size: int = 224
    interpolation: str = "bilinear"
    auto_augment: str | None = None
    ra_magnitude: int = 9
    augmix_severity: int = 3
    random_erase: float = 0.0
    use_v2: bool = False
    ra_sampler: bool = False
    ra_reps: int = 3
    seed: int = 0
    roi_decode: str = "auto"  # --roi-decode: decode only each training crop's region (jpeg_roi.py), fast backend
    bad_images: str = "error"
    cache_dataset: bool = False
    pin_memory: bool = False  # page-locked host batches: only copies to an accelerator gain from them
    endless: bool = False  # benchmarks: the train loader runs epoch after epoch in one pass (sampler.EndlessSampler)
    train_sizes: tuple = ()  # progressive resizing: every training crop size the run uses (Loaders.set_train_size)


@dataclass
class Loaders:
    train: DataLoader | None
    val: DataLoader
    train_sampler: object
    classes: list
    roi_decode: bool = False  # whether training JPEGs are decoded crop region only
    decode_note: str | None = None  # one line for the log: which JPEG decode the fast backend uses and why

    def set_train_size(self, size: int) -> None:
        """Progressive resizing: the training crop size of the coming epoch (call before iterating it)."""
        transform = self.train.dataset.transform
        if isinstance(transform, ResolutionSwitch):
            transform.select(size)
        elif getattr(transform, "crop_size", size) != size:
            raise ValueError(f"the train loader was built for crops of {transform.crop_size} px, not {size}")


class ResolutionSwitch:
    """One training transform per crop size of a progressive-resizing run, and the size in use, kept in shared
    memory: DataLoader workers (persistent, forked or spawned) read it for every sample, so the main process
    switches sizes between epochs without restarting them. Set it before an epoch's iterator is created, which
    is when persistent workers are handed that epoch's indices."""

    def __init__(self, by_size: dict):
        self.by_size = by_size
        self.current = multiprocessing.RawValue("i", min(by_size))

    @property
    def crop_size(self) -> int:
        return self.current.value

    def select(self, size: int) -> None:
        if size not in self.by_size:
            raise ValueError(f"no training transform for crops of {size} px (built for {sorted(self.by_size)})")
        self.current.value = size

    def __call__(self, data: bytes, path: str):
        return self.by_size[self.current.value](data, path)


class _PresetOnBytes:
    """Adapts a reference preset (PIL image in) to the dataset's (bytes, path) transform contract."""

    def __init__(self, preset):
        self.preset = preset

    def __call__(self, data: bytes, path: str):
        return self.preset(datasets.decode_pil(data, path))


def _ignore_preemption_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1/SIGINT to the main process, which saves a checkpoint before exiting."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def stop_workers(timeout: float = 5.0) -> None:
    """End this process's DataLoader workers. They ignore SIGTERM (see above), so when the run ends on an
    exception, multiprocessing's exit hook (terminate = SIGTERM, then join) would wait on them forever; SIGKILL
    cannot be ignored, and workers hold nothing worth saving."""
    workers = multiprocessing.active_children()
    if workers:
        # torch's SIGCHLD handler would report the workers' deaths as a crash of the run; this end is ours.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for proc in workers:
        proc.kill()
        proc.join(timeout)


def collate_encoded(batch):
    """--decode-device: the encoded items stay a list (their sizes differ); targets and counts become tensors."""
    items, targets, n_bad = zip(*batch)
    return list(items), torch.tensor(targets, dtype=torch.int64), torch.tensor(n_bad, dtype=torch.int64)


def build_transforms(cfg: DataConfig, train: bool, roi_library: str | None = None):
    """The per-sample transform for a split, for the backend (--backend's choices are checked by the command line).
    ``roi_library`` names the region decoder (jpeg_roi.prepare) for the fast training transform.
    With several training sizes (progressive resizing) it is a ResolutionSwitch over one transform per size."""
    sizes = sorted(set(cfg.train_sizes))
    if train and len(sizes) > 1 and not cfg.decode_on_device:  # device decode crops on the device (DeviceLoader)
        return ResolutionSwitch({size: build_transforms(dataclasses.replace(cfg, train_crop_size=size, train_sizes=()),
                                                        True, roi_library) for size in sizes})
    if cfg.decode_on_device:
        return transforms.EncodedTrainTransform() if train else transforms.EncodedEvalTransform()
    if cfg.backend == "fast":
        if train:
            return transforms.FastTrainTransform(crop_size=cfg.train_crop_size, interpolation=cfg.interpolation,
                                                 roi_library=roi_library)
        return transforms.FastEvalTransform(crop_size=cfg.val_crop_size, resize_size=cfg.val_resize_size,
                                            interpolation=cfg.interpolation)
    if train:
        return _PresetOnBytes(presets.ClassificationPresetTrain(
            crop_size=cfg.train_crop_size, interpolation=cfg.interpolation, auto_augment_policy=cfg.auto_augment,
            ra_magnitude=cfg.ra_magnitude, augmix_severity=cfg.augmix_severity,
            random_erase_prob=cfg.random_erase, backend=cfg.backend, use_v2=cfg.use_v2,
        ))
    return _PresetOnBytes(presets.ClassificationPresetEval(
        crop_size=cfg.val_crop_size, resize_size=cfg.val_resize_size, interpolation=cfg.interpolation,
        backend=cfg.backend, use_v2=cfg.use_v2,
    ))


def _cache_file(split_dir: str, enabled: bool) -> str | None:
    """--cache-dataset: the split's file list, as JSON (format and freshness rules: datasets.list_splits),
    kept under ~/.cache, keyed by the split's absolute path. The folder is made when the list is written, where a
    failure is a warning: a read-only or missing home must not stop training."""
    if not enabled:
        return None
    key = hashlib.sha1(os.path.abspath(split_dir).encode()).hexdigest()[:16]
    folder = os.path.join(os.path.expanduser("~"), ".cache", "resnet50-imagenet", "filelists")
    return os.path.join(folder, f"{key}-{os.path.basename(os.path.normpath(split_dir))}.json")


def build_datasets(cfg: DataConfig, need_train: bool, roi_library: str | None = None):
    """Check the layout and list both splits in one pass over the folders (one-line DataError on anything
    wrong); with --cache-dataset a fresh cached list is used without listing any folder."""
    splits = ("train", "val")
    cache_files = {s: _cache_file(os.path.join(cfg.data_path, s), cfg.cache_dataset) for s in splits}
    classes, lists = datasets.list_splits(cfg.data_path, splits, cache_files=cache_files)
    out = {}
    for split in (splits if need_train else ("val",)):
        out[split] = datasets.ImageFolderDataset(
            lists[split], classes, build_transforms(cfg, train=split == "train", roi_library=roi_library),
            bad_images=cfg.bad_images,
        )
    return out, classes


def build_data_loaders(cfg: DataConfig, *, rank: int, world_size: int, need_train: bool = True) -> Loaders:
    """Datasets, samplers and DataLoaders for training and evaluation."""
    roi_library = decode_note = None
    if need_train and cfg.backend == "fast" and not cfg.decode_on_device:
        # Only the fast CPU training transform crops from a decode. Its decoder is checked here, before any worker
        # starts: --roi-decode on stops with one line, auto says once why it decodes whole images.
        roi_library, decode_note = jpeg_roi.prepare(cfg.roi_decode)
    splits, classes = build_datasets(cfg, need_train, roi_library)
    common = dict(num_workers=cfg.workers, pin_memory=cfg.pin_memory, worker_init_fn=_ignore_preemption_signals,
                  collate_fn=collate_encoded if cfg.decode_on_device else None, persistent_workers=cfg.workers > 0)

    train_loader = train_sampler = None
    if need_train:
        n = len(splits["train"])
        if n < cfg.batch_size * world_size:
            raise datasets.DataError(
                f"{cfg.data_path}/train has {n} images, fewer than one global batch "
                f"({cfg.batch_size} x {world_size} processes); lower --batch-size"
            )
        if cfg.ra_sampler:
            train_sampler = samplers.RASampler(n, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed,
                                               batch_size=cfg.batch_size, repetitions=cfg.ra_reps)
        else:
            train_sampler = samplers.DistributedTrainSampler(n, num_replicas=world_size, rank=rank, shuffle=True,
                                                             seed=cfg.seed, drop_last=True, batch_size=cfg.batch_size)
        # A private generator: the loader must not draw from the global RNG, whose state is checkpointed and
        # must evolve identically in an interrupted and an uninterrupted run.
        sampler = samplers.EndlessSampler(train_sampler) if cfg.endless else train_sampler
        train_loader = DataLoader(splits["train"], batch_size=cfg.batch_size, sampler=sampler,
                                  drop_last=True, generator=torch.Generator().manual_seed(cfg.seed), **common)
    val_sampler = samplers.ExactEvalSampler(len(splits["val"]), num_replicas=world_size, rank=rank)
    val_loader = DataLoader(splits["val"], batch_size=cfg.batch_size, sampler=val_sampler, drop_last=False,
                            generator=torch.Generator().manual_seed(cfg.seed), **common)
    return Loaders(train_loader, val_loader, train_sampler, classes, roi_decode=roi_library is not None,
                   decode_note=decode_note)


# Ends the decode thread's input (a DataLoader never yields it).
_END = object()
# How long a stopping iteration waits for the decode thread's current batch: far longer than any batch takes, yet
# a hung device cannot hang the run's exit (the thread is a daemon).
_JOIN_TIMEOUT_S = 60.0


class DeviceLoader:
    """Iterates a DataLoader and yields (images, targets, n_bad) ready for the model on `device`.

    A background thread prepares the coming batches while the training thread runs steps, up to `prefetch` batches
    ahead, on its own stream: the copy to the device, the decode with --decode-device (device_decode.py) and the
    conversion of uint8 batches, normalized straight into `dtype` (the autocast dtype under --amp, so the first
    convolution's cast is not a second pass over the batch). The same threaded code runs on the CPU, without
    streams. The training thread still takes the DataLoader's batches and hands them over: without workers (-j 0)
    that runs the dataset, whose per-sample seeding swaps the process's global RNG state, which another thread
    must not do while training draws from it (MixUp, CutMix) or a checkpoint saves it."""

    prefetch = 2  # batches prepared ahead of the one the training thread holds

    def __init__(self, loader: DataLoader, device: torch.device, *, channels_last: bool, bad_images: str,
                 decoder: "device_decode.DeviceDecoder | None" = None, dtype: torch.dtype = torch.float32,
                 train: bool = True):
        self.loader, self.device, self.channels_last = loader, device, channels_last
        self.bad_images, self.decoder, self.dtype, self.train = bad_images, decoder, dtype, train
        self.stream = accelerator.new_stream(device)
        self._reported: set[str] = set()

    def __len__(self):
        return len(self.loader)

    def set_crop_size(self, size: int) -> None:
        """Progressive resizing with device decode (the decoder crops and resizes): call between epochs."""
        if self.decoder is not None:
            self.decoder.crop_size = size

    def __iter__(self):
        batches = iter(self.loader)
        todo, done, stop = queue.Queue(), queue.Queue(), threading.Event()
        thread = threading.Thread(target=self._prepare_all, args=(todo, done, stop), name="device-loader",
                                  daemon=True)
        thread.start()
        in_flight, exhausted = 0, False
        try:
            while True:
                while not exhausted and in_flight <= self.prefetch:  # the batch to yield and `prefetch` more
                    batch = next(batches, _END)
                    exhausted = batch is _END
                    if not exhausted:
                        todo.put(batch)
                        in_flight += 1
                if in_flight == 0:
                    return
                result = done.get()
                in_flight -= 1
                if isinstance(result, BaseException):
                    raise result
                yield self._handed_over(*result)
        finally:  # exhausted, broken out of, or an exception on either side: end the thread
            stop.set()
            todo.put(_END)
            # Not from the thread itself (a garbage collection there may close this generator), nor at interpreter
            # exit, when daemon threads no longer run.
            if thread is not threading.current_thread() and not sys.is_finalizing():
                thread.join(_JOIN_TIMEOUT_S)

    def _prepare_all(self, todo, done, stop):
        """The background thread: prepares the batches of `todo` in order into `done`, each with the event that
        marks its work on this loader's stream, until the end marker or `stop`; its exception goes to `done`, to be
        raised in the training thread."""
        try:
            if self.device.index is not None:
                accelerator.activate(self.device)  # the current device is per thread
            with accelerator.on_stream(self.stream):
                while not stop.is_set():
                    batch = todo.get()
                    if batch is _END:
                        return
                    prepared = self._prepare(batch)
                    done.put((prepared, None if self.stream is None else self.stream.record_event()))
        except BaseException as e:  # whatever it is, the training thread raises it
            done.put(e)

    def _handed_over(self, prepared, event):
        """The prepared batch, usable on the training thread's stream: that stream waits for the batch's work only
        (not for the batches prepared after it), and the allocator learns that it uses these tensors, so their
        memory is not handed back to the loader's stream while the step still reads it."""
        if event is None:
            return prepared
        current = accelerator.current_stream(self.device)
        current.wait_event(event)
        for t in prepared[:2]:
            t.record_stream(current)
        return prepared

    def _prepare(self, batch):
        images, targets, n_bad = batch
        if self.decoder is not None:
            paths = [it["path"] for it in images]
            images, bad = self.decoder(images)
            if bad:
                images, targets, replaced = self._apply_bad_policy(images, targets, bad, paths)
                n_bad = n_bad.clone()
                n_bad[0] += replaced
        else:
            images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = transforms.normalize_batch(images, presets.IMAGENET_MEAN, presets.IMAGENET_STD,
                                                dtype=self.dtype, channels_last=self.channels_last)
        elif self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets, n_bad

    def _apply_bad_policy(self, images, targets, bad, paths):
        """A file the device decoder could not decode: stop naming it (error), or replace it by a good sample
        of the same batch and count it (skip). An evaluation batch without a good sample (a rank's last batch
        can hold one image) comes out empty, and evaluate() passes over it; a training batch is full, and one
        made of bad files alone means a broken data set."""
        if self.bad_images == "error":
            raise datasets.bad_image(paths[bad[0]], "cannot be decoded")
        good = [i for i in range(images.shape[0]) if i not in set(bad)]
        if not good and self.train:
            raise datasets.DataError(f"every image of a training batch failed to decode, e.g. {paths[bad[0]]}")
        for i in bad:
            if paths[i] not in self._reported:  # each bad path once, as the CPU-side dataset does
                self._reported.add(paths[i])
                print(f"skipping bad image {paths[i]}: cannot be decoded", file=sys.stderr, flush=True)
        if not good:
            return images[:0], targets[:0], len(bad)
        for k, i in enumerate(bad):
            src = good[k % len(good)]
            images[i] = images[src]
            targets[i] = targets[src]
        return images, targets, len(bad)


def make_device_loader(loader: DataLoader, cfg: DataConfig, device: torch.device, *, train: bool,
                       channels_last: bool, dtype: torch.dtype = torch.float32) -> DeviceLoader:
    decoder = None
    if cfg.decode_on_device:
        decoder = device_decode.DeviceDecoder(
            crop_size=cfg.train_crop_size if train else cfg.val_crop_size, device=device,
            resize_size=None if train else cfg.val_resize_size, interpolation=cfg.interpolation,
        )
    return DeviceLoader(loader, device, channels_last=channels_last, bad_images=cfg.bad_images, decoder=decoder,
                        dtype=dtype, train=train)
