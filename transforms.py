"""Fast input transforms: uint8 end to end on the CPU, float conversion on the device.

The torchvision reference pipeline (PIL decode, RandomResizedCrop, flip, PILToTensor,
ConvertImageDtype, Normalize) spends most of a worker's time on work that does not need
to happen there: it materialises a float32 copy of every image (4x the bytes of uint8) and
normalises it one image at a time, and PIL's resampler is slower than torch's uint8 one.
Here the workers only decode, crop, resize and flip, all in uint8; the batch is converted
and normalised with one multiply-add per element on the device (``normalize_batch``).

Honesty rules that keep the speed-up comparable with the reference:

* crop parameters come from :func:`sample_crop_params`, which draws from torch's global RNG
  exactly like ``torchvision.transforms.RandomResizedCrop.get_params`` (same seed, same crop);
* resizing is antialiased bilinear (or bicubic), as PIL does it;
* we decode less than the whole image in two ways only: the region decoder (jpeg_roi.py)
  decodes just the crop's pixels, bit-identical to the same crop of a full decode; and
  libjpeg's DCT-domain downscaling (1/2, 1/4, 1/8) is used only when the decoded crop
  keeps 1.5x the output resolution, so the final antialiased resample still does the
  low-pass filtering.

The ``--decode-device cuda`` path splits the same work differently: workers only read
bytes and sample parameters (:class:`EncodedTrainTransform`), and device_decode.py decodes
each batch's crop regions on the device (nvJPEG through nvImageCodec on CUDA).
"""

import functools
import io
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import accelerator
import datasets
import jpeg_roi

INTERPOLATIONS = ("bilinear", "bicubic")

# libjpeg can scale by 1/8, 1/4 and 1/2 while decoding (it drops high DCT coefficients),
# which is much cheaper than decoding in full and resizing.
_DCT_SCALES = (8, 4, 2)
# Decode at reduced scale only when at least this many times the output size remains, so
# the final antialiased resample still does most of the low-pass filtering. At 1.0 the
# output is close to libjpeg's block averaging (a box filter) and measurably further from
# the reference pipeline (99th percentile 11 levels instead of 3 on a test image); this is
# the same idea as PIL's reducing_gap.
DCT_REDUCING_GAP = 1.5

# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the
# range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field: TEM, RST0-7, SOI.
_STANDALONE_MARKERS = frozenset([0x01, 0xD8, *range(0xD0, 0xD8)])


# ---------------------------------------------------------------------- Crop parameters


def sample_crop_params(height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, h, w) of a random crop, distributed as RandomResizedCrop's.

    Up to 10 tries of (area fraction ~ U(scale), log aspect ratio ~ U(log ratio)); the
    first crop that fits wins, else the largest central crop whose aspect ratio is clamped
    into ``ratio``. The draws use torch's global RNG in the same order and precision as
    ``RandomResizedCrop.get_params``, so a seeded sample gets the very crop the reference
    pipeline would take: the fast and the reference backends stay comparable image by image.
    """
    area = height * width
    log_lo, log_hi = _log_ratio_bounds(tuple(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.empty(1).uniform_(log_lo, log_hi).exp_().item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,)).item()
            left = torch.randint(0, width - w + 1, size=(1,)).item()
            return top, left, h, w
    return _central_crop(height, width, ratio)


@functools.lru_cache(maxsize=8)
def _log_ratio_bounds(ratio):
    """log(ratio) rounded to float32, as the reference computes it: drawing between bounds
    computed in double would round a few crops on .5 boundaries differently. Cached, as
    building a tensor per sample costs more than the rest of the sampling."""
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float32))
    return log_ratio[0].item(), log_ratio[1].item()


def _central_crop(height, width, ratio):
    """The fallback crop: whole image, aspect ratio clamped into ``ratio``, centred."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _draw_flip(hflip_prob):
    """One torch.rand draw like RandomHorizontalFlip; none when flipping is disabled, as
    the reference preset then has no flip transform at all."""
    return hflip_prob > 0 and bool(torch.rand(1).item() < hflip_prob)


def check_eval_sizes(crop_size, resize_size):
    """The centre crop must fit in the resized image (torchvision's CenterCrop would pad it with black)."""
    if crop_size > resize_size:
        raise ValueError(f"crop_size {crop_size} is larger than resize_size {resize_size} (--val-crop-size, "
                         "--val-resize-size); use a resize size at least as large as the crop")


def eval_resize_shape(height, width, resize_size):
    """Size after resizing the shorter side to ``resize_size`` (torchvision's Resize(int) rule)."""
    if height <= width:
        return resize_size, int(resize_size * width / height)
    return int(resize_size * height / width), resize_size


def center_offsets(height, width, crop_size):
    """Top-left corner of CenterCrop(crop_size), rounded as torchvision rounds it."""
    return int(round((height - crop_size) / 2.0)), int(round((width - crop_size) / 2.0))


def _dct_scale(short_side, target):
    """Largest libjpeg scale 1/s (s in 8, 4, 2) that keeps ``short_side / s`` at least
    DCT_REDUCING_GAP times ``target``; 1 when none does."""
    return next((s for s in _DCT_SCALES if short_side >= s * target * DCT_REDUCING_GAP), 1)


# ---------------------------------------------------------------- Decoding and resizing


def read_jpeg_header(data):
    """(height, width, components) from a JPEG's start-of-frame, or None if not a plain JPEG.

    Walking the marker segments costs microseconds, where PIL's Image.open costs tens:
    this runs for every sample. None (not a JPEG, no frame header, height left to a DNL
    marker) sends the file to the general PIL path, which reports real errors properly.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF_MARKERS:
            if pos + 10 > n or length < 8:
                return None
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            components = data[pos + 9]
            if height == 0 or width == 0:
                return None
            return height, width, components
        pos += 2 + length
    return None


def _hwc_to_chw(array):
    """HWC uint8 array -> CHW tensor view (channels-last strides, which torch's uint8
    resampler reads fastest)."""
    return torch.from_numpy(array).permute(2, 0, 1)


def _decode_pil_tensor(data, path):
    """Any format PIL reads -> RGB uint8 CHW tensor; BadImageError if it cannot be decoded."""
    image = datasets.decode_pil(data, path)
    return _hwc_to_chw(np.array(image, dtype=np.uint8, copy=True))


def _full_jpeg(data, path, height, width):
    """Full-size decode of a colour or grayscale JPEG whose header announced ``height`` x ``width``.

    nvImageCodec's libjpeg-turbo decoder (jpeg_roi.full_decoder) where it is installed: as fast as torchvision's
    decode_jpeg, deprecated on the CPU since torchvision 0.29, and bit-identical to Pillow's decode. When it is
    missing or declines the file, PIL decodes it, or decode_pil raises BadImageError with a clear reason.
    """
    decoder = jpeg_roi.full_decoder()
    array = None if decoder is None else decoder.decode_full(data)
    image = _decode_pil_tensor(data, path) if array is None else _hwc_to_chw(array)
    if tuple(image.shape[1:]) != (height, width):
        raise datasets.bad_image(
            path, f"decoded size {image.shape[2]}x{image.shape[1]} does not match the header's {width}x{height}"
        )
    return image


def _load_reduced_jpeg(data, scale):
    """(PIL RGB image decoded at 1/scale by libjpeg's DCT scaling, scale used), or None
    when ``scale`` is 1 or PIL fails; the full decoder then runs and reports any error."""
    if scale <= 1:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's metadata warnings say nothing about pixels
            image = Image.open(io.BytesIO(data))
            width = image.size[0]
            drafted = image.draft("RGB", (image.size[0] // scale, image.size[1] // scale))
            # Checked before load(): draft leaves a grayscale JPEG in mode L, and decoding it here only
            # to discard it would decode it twice.
            if image.mode != "RGB" or not drafted:
                return None
            image.load()
    except Exception:  # PIL raises many types; the full decode path gives the verdict
        return None
    # PIL reports the region the decoded image covers, in decoded pixels: (0, 0, W/s, H/s).
    return image, width / drafted[1][2]


def _resize_reduced(image, scale, box, size, interpolation):
    """Resample ``box`` (full-resolution coordinates) of an image decoded at 1/scale to
    ``size`` (h, w); returns a uint8 HWC array.

    PIL takes the box in fractional pixels, so the sampling grid lands exactly where it
    would on the full-resolution image; rounding the box to whole decoded pixels instead
    shifts it by up to scale/2 original pixels, a visible misalignment on sharp edges.
    """
    left, top, right, bottom = (v / scale for v in box)
    box = (left, top, min(right, image.size[0]), min(bottom, image.size[1]))
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    out = image.resize((size[1], size[0]), resample, box=box)
    return np.array(out, dtype=np.uint8, copy=True)


def roi_decode_crop(data, box):
    """Decode only the crop ``box`` = (top, left, h, w) of a colour or grayscale JPEG (jpeg_roi):
    an HWC uint8 array bit-identical to the same crop of a full decode, or None when the region
    decoder declines (the caller then decodes in full)."""
    top, left, h, w = box
    return jpeg_roi.open_decoder().decode(data, left, top, w, h)


def _open_for_crop(data, path, components=(1, 3)):
    """(height, width, decoded): JPEGs with these numbers of components get only their header read (decoded is
    None, so the caller can pick a region or reduced-size decode); anything else is decoded by PIL here
    (CMYK/YCCK JPEGs and other formats: PIL handles every colour model; they are rare)."""
    header = read_jpeg_header(data)
    if header is not None and header[2] in components:
        datasets.check_pixel_limit(header[1], header[0], path)
        return header[0], header[1], None
    image = _decode_pil_tensor(data, path)
    return image.shape[1], image.shape[2], image


def resize_uint8(image, size, interpolation="bilinear"):
    """Antialiased resize of a uint8 CHW tensor on the CPU to ``size`` (h, w), in uint8: torch's fixed-point path,
    close to PIL's. (Devices have no uint8 antialiased kernel: device_decode resamples in float32 there.)"""
    return F.interpolate(image.unsqueeze(0), size=size, mode=interpolation, antialias=True, align_corners=False)[0]


# ---------------------------------------------------- CPU transforms ("--backend fast")


class FastTrainTransform:
    """bytes -> uint8 (3, crop, crop): RandomResizedCrop + horizontal flip, no float work.

    Random draws (crop, then flip) match the reference pipeline's, so with the same seed
    both produce the same crop of the same image. With ``roi_library`` only the crop's
    region of a colour or grayscale JPEG is decoded (jpeg_roi.py). Crops at least 3x (6x,
    12x) the output size are instead decoded whole at 1/2 (1/4, 1/8) scale directly by
    libjpeg (see DCT_REDUCING_GAP).
    """

    def __init__(self, *, crop_size, interpolation="bilinear", hflip_prob=0.5, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), roi_library=None):
        self.crop_size, self.interpolation, self.hflip_prob = crop_size, interpolation, hflip_prob
        self.scale, self.ratio = scale, ratio
        # The region decoder's name (jpeg_roi.prepare), or None to decode whole images. A name, not a
        # handle: the transform is pickled into the DataLoader workers, which open their own decoder.
        self.roi_library = roi_library

    def __call__(self, data, path):
        height, width, image = _open_for_crop(data, path)
        top, left, h, w = sample_crop_params(height, width, self.scale, self.ratio)
        flip = _draw_flip(self.hflip_prob)
        size, out = (self.crop_size, self.crop_size), None
        if image is None:  # a JPEG: the crop's region, or the whole image at reduced scale, or in full
            scale = _dct_scale(min(h, w), self.crop_size)
            region = roi_decode_crop(data, (top, left, h, w)) if scale == 1 and self.roi_library is not None else None
            reduced = _load_reduced_jpeg(data, scale) if region is None else None
            if region is not None:
                image, top, left = _hwc_to_chw(region), 0, 0
            elif reduced is not None:
                out = _hwc_to_chw(_resize_reduced(*reduced, (left, top, left + w, top + h), size, self.interpolation))
            else:
                image = _full_jpeg(data, path, height, width)
        if out is None:  # the crop is a view: cropped and resized in one resampling pass
            out = resize_uint8(image[:, top : top + h, left : left + w], size, self.interpolation)
        if flip:
            out = out.flip(-1)  # keeps the input's strides: channels-last for the PIL path
        return out.contiguous()


class FastEvalTransform:
    """bytes -> uint8 (3, crop, crop): Resize(resize_size) of the shorter side + CenterCrop.

    Images whose shorter side is at least 3x (6x, 12x) ``resize_size`` are decoded at 1/2
    (1/4, 1/8) scale by libjpeg (see DCT_REDUCING_GAP).
    """

    def __init__(self, *, crop_size, resize_size, interpolation="bilinear"):
        check_eval_sizes(crop_size, resize_size)
        self.crop_size, self.resize_size, self.interpolation = crop_size, resize_size, interpolation

    def __call__(self, data, path):
        height, width, image = _open_for_crop(data, path)
        new_h, new_w = eval_resize_shape(height, width, self.resize_size)
        reduced = _load_reduced_jpeg(data, _dct_scale(min(height, width), self.resize_size)) if image is None else None
        if reduced is not None:
            resized = _hwc_to_chw(_resize_reduced(*reduced, (0, 0, width, height), (new_h, new_w), self.interpolation))
        else:
            if image is None:
                image = _full_jpeg(data, path, height, width)
            resized = resize_uint8(image, (new_h, new_w), self.interpolation)
        top, left = center_offsets(new_h, new_w, self.crop_size)
        return resized[:, top : top + self.crop_size, left : left + self.crop_size].contiguous()


# --------------------------------------------- Device decoding ("--decode-device cuda")


def _encoded_payload(data, path):
    """(payload, height, width): a colour JPEG's bytes (decoded later on the device; a writable copy, as torch
    warns about read-only buffers), else the image decoded here by PIL (grayscale/CMYK JPEGs, PNG, ...), which
    the device decoders may not handle and which are rare enough not to matter."""
    height, width, image = _open_for_crop(data, path, components=(3,))
    payload = torch.frombuffer(bytearray(data), dtype=torch.uint8) if image is None else image.contiguous()
    return payload, height, width


class EncodedTrainTransform:
    """Worker side of device decoding: read the size from the JPEG header, draw the crop and flip as
    FastTrainTransform does, ship the undecoded bytes. The worker does microseconds of work per image.
    The item keeps its path, so that a failure of the device-side decode can name the file."""

    def __call__(self, data, path):
        payload, height, width = _encoded_payload(data, path)
        params = [*sample_crop_params(height, width), int(_draw_flip(0.5))]
        return {"data": payload, "params": torch.tensor(params, dtype=torch.int64), "path": path}


class EncodedEvalTransform:
    """Worker side of device decoding for evaluation: the bytes, the path and params of -1 (meaning
    resize + centre crop, with device_decode.DeviceDecoder's sizes)."""

    def __call__(self, data, path):
        payload, _, _ = _encoded_payload(data, path)
        return {"data": payload, "params": torch.full((5,), -1, dtype=torch.int64), "path": path}


# ---------------------------------------------------------------- On-device batch steps


def normalize_batch(batch, mean, std, *, dtype=torch.float32, channels_last=False):
    """uint8 NCHW -> ``dtype``, computing (x / 255 - mean) / std as one multiply-add
    ``x * scale + shift`` per element.

    The output is allocated once, in its final dtype and memory format, and filled without
    a batch-sized temporary (see _scale_shift_into). The arithmetic is float32 (float64 for
    a float64 output) whatever ``dtype`` is, so a half-precision output (the autocast dtype
    under --amp) differs from the float32 result only by its final rounding.
    """
    if batch.dtype != torch.uint8 or batch.dim() != 4:
        raise ValueError(f"normalize_batch expects a uint8 NCHW batch, got {batch.dtype} of shape {tuple(batch.shape)}")
    work = torch.float64 if dtype == torch.float64 else torch.float32
    scale = _per_channel([1.0 / (255.0 * float(s)) for s in std], batch.device, work)
    shift = _per_channel([-float(m) / float(s) for m, s in zip(mean, std)], batch.device, work)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(batch.shape, dtype=dtype, device=batch.device, memory_format=fmt)
    _scale_shift_into(out, batch, scale, shift, one_pass=batch.device.type != "cpu")
    return out


def _per_channel(values, device, dtype):
    """(1, C, 1, 1) constants on ``device``. On an accelerator they are copied from pinned
    memory: a copy from pageable memory would make the host wait for all work queued on the
    stream, stalling the loader's prefetching."""
    constants = torch.tensor(values, dtype=dtype).view(1, -1, 1, 1)
    if accelerator.pin_memory(device):
        return constants.pin_memory().to(device, non_blocking=True)
    return constants.to(device)


def _scale_shift_into(out, batch, scale, shift, *, one_pass):
    """out = batch * scale + shift, computed in scale's dtype and rounded once into out's.

    On GPUs one kernel reads uint8 and writes the output dtype (one pass over memory). On
    the CPU, torch's mixed-dtype addcmul is slower than a plain conversion followed by two
    in-place vectorised ops, so that is used there, one image at a time: an image's floats
    (0.6 MB at 224 px) stay in cache across the passes, a whole batch's do not."""
    if one_pass:
        torch.addcmul(shift, batch, scale, out=out)
        return
    work = None if out.dtype == scale.dtype else torch.empty(batch.shape[1:], dtype=scale.dtype)
    for image, result in zip(batch, out):
        (result if work is None else work).copy_(image).mul_(scale[0]).add_(shift[0])
        if work is not None:
            result.copy_(work)


class _MixUpCutMix:
    """Per batch, MixUp or CutMix (chosen at random among the enabled ones) with the batch
    rolled by one, as in torchvision's reference scripts; targets become soft labels."""

    def __init__(self, mixup_alpha, cutmix_alpha, num_classes):
        self.mixup_alpha, self.cutmix_alpha, self.num_classes = mixup_alpha, cutmix_alpha, num_classes

    def __call__(self, images, targets):
        if targets.dim() == 1:
            targets = F.one_hot(targets.long(), self.num_classes).to(images.dtype)
        enabled = [(m, a) for m, a in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if a > 0]
        method, alpha = enabled[int(torch.randint(len(enabled), (1,)).item())]
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        rolled_images, rolled_targets = images.roll(1, 0), targets.roll(1, 0)
        if method == "mixup":
            images = images * lam + rolled_images * (1.0 - lam)
        else:
            images, lam = _paste_box(images, rolled_images, lam)
        return images, targets * lam + rolled_targets * (1.0 - lam)


def _paste_box(images, rolled, lam):
    """CutMix: paste a box of about (1 - lam) of the area from ``rolled``; returns the
    images and lam recomputed from the box actually pasted (clipped at the borders)."""
    height, width = images.shape[-2:]
    cy = int(torch.randint(height, (1,)).item())
    cx = int(torch.randint(width, (1,)).item())
    half_h = int(round(height * math.sqrt(1.0 - lam) / 2))
    half_w = int(round(width * math.sqrt(1.0 - lam) / 2))
    y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
    x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
    images = images.clone()
    images[..., y0:y1, x0:x1] = rolled[..., y0:y1, x0:x1]
    return images, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def get_mixup_cutmix(*, mixup_alpha, cutmix_alpha, num_classes, use_v2=False):
    """None when both alphas are 0, else callable(images, int targets) -> (images, soft targets).

    ``use_v2`` uses torchvision.transforms.v2.MixUp/CutMix; the default is a small torch-only
    version that works on any device and dtype.
    """
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return None
    if not use_v2:
        return _MixUpCutMix(float(mixup_alpha), float(cutmix_alpha), num_classes)
    from torchvision.transforms import v2

    chosen = [make(alpha=alpha, num_classes=num_classes)
              for make, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if alpha > 0]
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
