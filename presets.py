"""Preprocessing presets for ImageNet classification, as torchvision's classification reference builds them (so
accuracy numbers are comparable): random-resized crop + flip (+ automatic augmentation and random erasing) for
training, resize + center crop for evaluation, both ending in a normalized float32 CHW tensor.

``backend="pil"`` runs the ops on PIL images; ``backend="tensor"`` converts to a uint8 tensor first. ``use_v2``
selects ``torchvision.transforms.v2``.
"""

import importlib

import torch
from torchvision.transforms import InterpolationMode

BACKENDS = ("pil", "tensor")
AUTO_AUGMENT_POLICIES = ("ra", "ta_wide", "augmix", "imagenet", "cifar10", "svhn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _transforms_module(use_v2: bool):
    return importlib.import_module("torchvision.transforms.v2" if use_v2 else "torchvision.transforms")


def _auto_augment(transforms, policy: str, interpolation, ra_magnitude: int, augmix_severity: int):
    if policy == "ra":
        return transforms.RandAugment(interpolation=interpolation, magnitude=ra_magnitude)
    if policy == "ta_wide":
        return transforms.TrivialAugmentWide(interpolation=interpolation)
    if policy == "augmix":
        return transforms.AugMix(interpolation=interpolation, severity=augmix_severity)
    return transforms.AutoAugment(policy=transforms.AutoAugmentPolicy(policy), interpolation=interpolation)


class _Preset:
    """What both presets share: the conversions around the geometric ops, calling, and a readable repr."""

    def _compose(self, transforms, ops, backend, use_v2, mean, std, after=()):
        to_tensor = [transforms.PILToTensor()]
        # v2 renamed ConvertImageDtype to ToDtype.
        to_float = transforms.ToDtype(torch.float32, scale=True) if use_v2 else transforms.ConvertImageDtype(
            torch.float32)
        ops = [*(to_tensor if backend == "tensor" else ()), *ops, *(to_tensor if backend == "pil" else ()), to_float,
               transforms.Normalize(mean=mean, std=std), *after]
        if use_v2:
            ops.append(transforms.ToPureTensor())  # a plain tensor even when given a tv_tensors.Image
        self.backend, self.use_v2 = backend, bool(use_v2)
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
        interpolation = InterpolationMode(interpolation)  # a mode or its name, as --interpolation gives it
        transforms = _transforms_module(use_v2)
        # antialias=True so PIL and tensor backends downscale alike.
        ops = [transforms.RandomResizedCrop(crop_size, interpolation=interpolation, antialias=True)]
        if hflip_prob > 0:
            ops.append(transforms.RandomHorizontalFlip(hflip_prob))
        if auto_augment_policy is not None:
            ops.append(_auto_augment(transforms, auto_augment_policy, interpolation, ra_magnitude, augmix_severity))
        # Erasing after normalization, as in the reference: erased pixels are zeros in normalized space.
        after = [transforms.RandomErasing(p=random_erase_prob)] if random_erase_prob > 0 else []
        self._compose(transforms, ops, backend, use_v2, mean, std, after)


class ClassificationPresetEval(_Preset):
    """Evaluation preprocessing: resize the shorter side, center crop, normalize."""

    def __init__(self, *, crop_size, resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation=InterpolationMode.BILINEAR, backend="pil", use_v2=False):
        interpolation = InterpolationMode(interpolation)
        transforms = _transforms_module(use_v2)
        ops = [transforms.Resize(resize_size, interpolation=interpolation, antialias=True),
               transforms.CenterCrop(crop_size)]
        self._compose(transforms, ops, backend, use_v2, mean, std)
