"""Training and evaluation preprocessing presets for ImageNet classification.

They follow the recipe of torchvision's classification reference so that accuracy
numbers are comparable: random-resized crop + flip (+ optional automatic
augmentation and random erasing) for training, resize + center crop for evaluation.
Both return a normalized float32 CHW tensor.

``backend="pil"`` runs the geometric/colour ops on PIL images (the classic
pipeline); ``backend="tensor"`` converts to a uint8 tensor first, which is what
GPU-side or decoded-tensor pipelines use. ``use_v2`` selects
``torchvision.transforms.v2`` instead of the v1 transforms.
"""

import torch
from torchvision.transforms import InterpolationMode

BACKENDS = ("pil", "tensor")
AUTO_AUGMENT_POLICIES = ("ra", "ta_wide", "augmix", "imagenet", "cifar10", "svhn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _transforms_module(use_v2: bool):
    """Import the transforms namespace lazily so importing presets stays cheap."""
    if use_v2:
        import torchvision.transforms.v2 as transforms
    else:
        import torchvision.transforms as transforms
    return transforms


def _check_backend(backend: str) -> str:
    name = str(backend).lower()
    if name not in BACKENDS:
        raise ValueError(f"presets: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return name


def check_interpolation(interpolation, choices=None, *, by: str = "") -> InterpolationMode:
    """The InterpolationMode for a mode or its name (e.g. ``--interpolation bicubic``): the one check of it.

    ``choices`` (mode names) narrows what is accepted, as the fast pipeline does (``by`` names it in the
    message); by default every mode torchvision has is. The error lists what would be accepted.
    """
    allowed = [mode.value for mode in InterpolationMode] if choices is None else list(choices)
    name = interpolation.value if isinstance(interpolation, InterpolationMode) else str(interpolation).lower()
    if name not in allowed:
        where = f" by {by}" if by else ""
        raise ValueError(f"--interpolation {interpolation!r} is not supported{where}; "
                         f"choose one of {', '.join(allowed)}")
    return InterpolationMode(name)


def _auto_augment(transforms, policy: str, interpolation, ra_magnitude: int, augmix_severity: int):
    """Build the automatic-augmentation op named by ``policy``."""
    if policy == "ra":
        return transforms.RandAugment(interpolation=interpolation, magnitude=ra_magnitude)
    if policy == "ta_wide":
        return transforms.TrivialAugmentWide(interpolation=interpolation)
    if policy == "augmix":
        return transforms.AugMix(interpolation=interpolation, severity=augmix_severity)
    if policy in AUTO_AUGMENT_POLICIES:
        return transforms.AutoAugment(policy=transforms.AutoAugmentPolicy(policy), interpolation=interpolation)
    raise ValueError(
        f"presets: unknown auto_augment_policy {policy!r}; choose one of {', '.join(AUTO_AUGMENT_POLICIES)} "
        "(or None for no automatic augmentation)")


def _to_float_and_normalize(transforms, use_v2: bool, mean, std) -> list:
    """uint8 tensor -> float in [0, 1] -> normalized; v2 renamed ConvertImageDtype to ToDtype."""
    if use_v2:
        to_float = transforms.ToDtype(torch.float32, scale=True)
    else:
        to_float = transforms.ConvertImageDtype(torch.float32)
    return [to_float, transforms.Normalize(mean=mean, std=std)]


class _Preset:
    """What both presets share: the composed pipeline, calling it, and a readable repr."""

    def _compose(self, transforms, ops, backend, use_v2):
        if use_v2:
            # Strip any tv_tensors wrapper (e.g. if a caller passes a tv_tensors.Image)
            # so callers always get a plain tensor.
            ops.append(transforms.ToPureTensor())
        self.backend = backend
        self.use_v2 = bool(use_v2)
        self.transforms = transforms.Compose(ops)

    def __call__(self, img):
        return self.transforms(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, use_v2={self.use_v2}, {self.transforms!r})"


class ClassificationPresetTrain(_Preset):
    """Training preprocessing: crop, flip, optional auto-augment, normalize, optional erasing."""

    def __init__(self, *, crop_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation=InterpolationMode.BILINEAR, hflip_prob=0.5, auto_augment_policy=None,
                 ra_magnitude=9, augmix_severity=3, random_erase_prob=0.0, backend="pil", use_v2=False):
        backend = _check_backend(backend)
        interpolation = check_interpolation(interpolation)
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"presets: hflip_prob must be in [0, 1], got {hflip_prob}")
        if not 0.0 <= random_erase_prob <= 1.0:
            raise ValueError(f"presets: random_erase_prob must be in [0, 1], got {random_erase_prob}")
        transforms = _transforms_module(use_v2)
        ops = []
        if backend == "tensor":
            ops.append(transforms.PILToTensor())
        # antialias=True so PIL and tensor backends downscale alike.
        ops.append(transforms.RandomResizedCrop(crop_size, interpolation=interpolation, antialias=True))
        if hflip_prob > 0:
            ops.append(transforms.RandomHorizontalFlip(hflip_prob))
        if auto_augment_policy is not None:
            ops.append(_auto_augment(transforms, auto_augment_policy, interpolation, ra_magnitude,
                                     augmix_severity))
        if backend == "pil":
            ops.append(transforms.PILToTensor())
        ops.extend(_to_float_and_normalize(transforms, use_v2, mean, std))
        if random_erase_prob > 0:
            # Erasing runs after normalization, as in the reference, so erased
            # pixels are zero-mean noise/zeros in normalized space.
            ops.append(transforms.RandomErasing(p=random_erase_prob))
        self._compose(transforms, ops, backend, use_v2)


class ClassificationPresetEval(_Preset):
    """Evaluation preprocessing: resize the shorter side, center crop, normalize."""

    def __init__(self, *, crop_size, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation=InterpolationMode.BILINEAR, backend="pil", use_v2=False):
        backend = _check_backend(backend)
        interpolation = check_interpolation(interpolation)
        transforms = _transforms_module(use_v2)
        ops = []
        if backend == "tensor":
            ops.append(transforms.PILToTensor())
        ops.append(transforms.Resize(resize_size, interpolation=interpolation, antialias=True))
        ops.append(transforms.CenterCrop(crop_size))
        if backend == "pil":
            ops.append(transforms.PILToTensor())
        ops.extend(_to_float_and_normalize(transforms, use_v2, mean, std))
        self._compose(transforms, ops, backend, use_v2)
