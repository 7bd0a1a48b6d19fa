"""Decoding training and evaluation batches on the device (``--decode-device cuda``).

DataLoader workers only read each file and its JPEG header and draw the crop (transforms.EncodedTrainTransform);
DeviceLoader's background thread hands each batch of those items to DeviceDecoder, which

1. decodes every JPEG of the batch in one nvImageCodec call, on the thread's current stream: a training item's
   crop region only, an evaluation item's whole image (nvJPEG on CUDA; nvImageCodec's libjpeg-turbo backend when
   the device is the CPU, which is how the tests run this code);
2. resamples each image to its output size (one resampling per image, since crops differ in shape; evaluation
   images are then centre-cropped), rounds the whole batch to uint8 at once and mirrors the flipped subset in one
   indexed copy. The caller normalizes the whole batch (transforms.normalize_batch).

Two nvJPEG faults are designed against. Its hardware path can write memory the caller's stream still uses
(pytorch/vision#9606, meta-pytorch/torchcodec#1634): the stream is drained before each batched decode. Batched
decodes have returned all-zero images without an error on some GPUs (MrNeRF/LichtFeld-Studio#616, #1924): every
output that is all zero, and every file nvImageCodec declines, is decoded once more on the CPU by Pillow, whose
verdict stands. Its error makes the file a bad image, reported by index for the caller's --bad-images policy;
zeros again mean a black image, kept as the CPU pipeline keeps it.
"""

import numpy as np
import torch
import torch.nn.functional as F

import accelerator
import datasets
import jpeg_roi
import transforms


def _decode_params(nvimgcodec, planar):
    """RGB as stored (no EXIF rotation, as in the CPU pipelines), planar (C, H, W) or interleaved (H, W, C)."""
    layout = nvimgcodec.SampleFormat.P_RGB if planar else nvimgcodec.SampleFormat.I_RGB
    return nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                   sample_format=layout)


def _open_decoder(device):
    """(nvimgcodec module, its batch decoder for ``device``): every backend nvImageCodec has on a GPU (nvJPEG's
    hardware, CUDA and hybrid decoders, then its own CPU fallback), the libjpeg-turbo backend on the CPU."""
    try:
        nvimgcodec = jpeg_roi.import_nvimgcodec()
    except jpeg_roi.RoiUnavailable as e:
        raise jpeg_roi.RoiUnavailable(f"--decode-device cuda: {e}") from None
    if device.type == "cpu":
        return nvimgcodec, jpeg_roi.cpu_decoder(nvimgcodec, threads=torch.get_num_threads())
    index = device.index if device.index is not None else torch.accelerator.current_device_index()
    return nvimgcodec, nvimgcodec.Decoder(device_id=index)


class DeviceDecoder:
    """Decodes a batch of EncodedTrainTransform / EncodedEvalTransform items on ``device``.

    Returns a uint8 (N, 3, crop_size, crop_size) batch on the device and the indices of the items that could not
    be decoded (zeros in the batch). Evaluation items need ``resize_size``: the shorter side is resized to it, then
    the centre crop taken, as transforms.FastEvalTransform does. ``crop_size`` may change between epochs
    (progressive resizing)."""

    def __init__(self, *, crop_size, device, resize_size=None, interpolation="bilinear"):
        if resize_size is not None:
            transforms.check_eval_sizes(crop_size, resize_size)
        self.crop_size, self.resize_size, self.interpolation = crop_size, resize_size, interpolation
        self.device = torch.device(device)
        self._nvimgcodec, self._decoder = _open_decoder(self.device)
        # Off the CPU there is no uint8 antialiased resampler, so images are resampled in float32, which reads
        # planar images fastest. Attributes, so that tests can run this GPU layout on the CPU.
        self._gpu_layout = self.device.type != "cpu"
        self._params = _decode_params(self._nvimgcodec, planar=self._gpu_layout)

    def __call__(self, items):
        params = torch.stack([item["params"] for item in items]).tolist()
        images = self._decode(items, params)
        blank = torch.zeros((1, 3, self.crop_size, self.crop_size), device=self.device,
                            dtype=torch.float32 if self._gpu_layout else torch.uint8)
        batch = torch.cat([blank if out is None else out for out in map(self._output, images, params)])
        bad = []
        all_zero = (batch.flatten(1).amax(1) == 0).nonzero().flatten().tolist()  # one reduction, one wait
        for i in all_zero:  # declined, unwritten, or black: Pillow decides which
            out = self._output(self._decode_on_cpu(items[i]), params[i])
            if out is None:
                bad.append(i)
            else:
                batch[i] = out[0]
        if batch.dtype != torch.uint8:
            batch = batch.round_().clamp_(0, 255).to(torch.uint8)
        flipped = [i for i, p in enumerate(params) if p[4] == 1]
        if flipped:
            index = torch.tensor(flipped, device=self.device)
            batch[index] = batch[index].flip(-1)
        return batch, bad

    def _decode(self, items, params):
        """Each item's image, CHW uint8 on the device: a training JPEG's crop region or an evaluation JPEG's whole
        image (one batched decode for all of them), or what the worker decoded (other formats); None where
        nvImageCodec declines the file."""
        images, streams, where = [], [], []
        for i, (item, p) in enumerate(zip(items, params)):
            data = item["data"]
            if data.dim() != 1:
                images.append(data.to(self.device, non_blocking=True))
                continue
            images.append(None)
            coded = self._code_stream(data.numpy(), p)
            if coded is not None:
                streams.append(coded[0])
                where.append((i, coded[1]))
        for (i, shape), image in zip(where, self._decode_batch(streams) if streams else []):
            image = None if image is None else self._as_tensor(image)
            images[i] = image if image is not None and tuple(image.shape[1:]) == shape else None
        return images

    def _decode_batch(self, streams):
        """One nvImageCodec call for the batch's code streams, on the current stream: its images, None for each
        it could not decode (all of them when it refuses the batch: each file then goes to the CPU)."""
        # nvJPEG can write memory that kernels queued earlier on this stream still use (see the module docstring).
        accelerator.drain_current_stream(self.device)
        stream = accelerator.current_stream(self.device)
        try:
            return self._decoder.decode(streams, params=self._params,
                                        cuda_stream=0 if stream is None else stream.native_handle)
        except RuntimeError:
            return [None] * len(streams)

    def _code_stream(self, data, params):
        """(nvImageCodec code stream of a JPEG, cut to a training item's crop; the (h, w) it decodes to), or None
        for a file the CPU must decode: one without its end-of-image marker (truncated: a region above the cut
        would decode cleanly and hide the damage), one nvImageCodec cannot parse, or a crop outside the image."""
        if data[-2:].tolist() != [0xFF, 0xD9]:
            return None
        try:
            stream = self._nvimgcodec.CodeStream(data)
        except RuntimeError:
            return None
        top, left, h, w, _ = params
        if top < 0 or w == 1:  # evaluation, or a one-column crop, which jpeg_roi explains: whole, cut in _output
            return stream, (stream.height, stream.width)
        if top + h > stream.height or left + w > stream.width:
            return None
        return stream.get_sub_code_stream(region=self._nvimgcodec.Region(top, left, top + h, left + w)), (h, w)

    def _as_tensor(self, image):
        """A decoded nvImageCodec image as a CHW tensor sharing its memory."""
        if self.device.type == "cpu":
            tensor = torch.from_numpy(np.asarray(image))
        else:
            tensor = torch.from_dlpack(image)  # ordered on the current stream, on which it was decoded
        return tensor if self._gpu_layout else tensor.permute(2, 0, 1)

    def _decode_on_cpu(self, item):
        """The second path: the whole image decoded by Pillow (CHW uint8 on the device), or None when it cannot be."""
        data = item["data"]
        if data.dim() != 1:  # decoded by the worker already: nothing else to try
            return data.to(self.device)
        try:
            image = datasets.decode_pil(data.numpy().tobytes(), item["path"])
        except datasets.BadImageError:
            return None
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).to(self.device)  # a writable copy, as torch wants

    def _output(self, image, params):
        """(1, 3, crop, crop) from an item's decoded image (see _resample for its dtype); None when there is no
        image or the crop does not fit it (its header announced another size)."""
        if image is None:
            return None
        top, left, h, w, _ = params
        size = self.crop_size
        if top < 0:  # an evaluation item
            if self.resize_size is None:
                raise ValueError("device_decode: an evaluation item (params -1) needs a DeviceDecoder built with "
                                 "resize_size, as for the validation loader")
            new_h, new_w = transforms.eval_resize_shape(image.shape[1], image.shape[2], self.resize_size)
            top, left = transforms.center_offsets(new_h, new_w, size)
            return self._resample(image, (new_h, new_w))[..., top : top + size, left : left + size]
        if tuple(image.shape[1:]) != (h, w):  # a whole image: cut the crop out
            if top + h > image.shape[1] or left + w > image.shape[2]:
                return None
            image = image[:, top : top + h, left : left + w]
        return self._resample(image, (size, size))

    def _resample(self, image, shape):
        """Antialiased resampling as transforms.resize_uint8 does it, in uint8 on the CPU; in float32 elsewhere (no
        uint8 kernel there), left unrounded so that the whole batch is rounded at once."""
        x = image.unsqueeze(0)
        if self._gpu_layout:
            x = x.float()
        return F.interpolate(x, size=shape, mode=self.interpolation, antialias=True, align_corners=False)
