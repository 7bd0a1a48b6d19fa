"""Region-of-interest JPEG decoding for the fast CPU pipeline: decode only the crop.

A RandomResizedCrop keeps about half of the image on average, yet a plain decode produces every pixel. libjpeg-turbo
can stop at the crop's last row and only entropy-decode the rows above it and the columns beside it (no inverse DCT,
upsampling or colour conversion); nvImageCodec (the ``nvidia-nvimgcodec-cu13`` wheel of requirements.txt, no GPU or
compiler needed) exposes that on the CPU. The region is bit-identical to the same crop of a full decode
(tests/test_jpeg_roi.py) except for a one-column region starting on an iMCU boundary of a 4:2:0 file, upsampled as
if it were the image's edge: such a region is decoded two columns wide and cut. The same decoder does the fast
backend's whole-image decodes (full_decoder): as fast as torchvision's decode_jpeg, which torchvision 0.29
deprecates on the CPU, and bit-identical to Pillow's. Without nvImageCodec (wheels for Linux x86_64 and aarch64
only) whole images are decoded with Pillow, and ``--roi-decode auto`` says so in one line.

The console stays clean: nvImageCodec logs every file it declines unless PYNVIMGCODEC_VERBOSITY is 0 when it is
imported, which is set here (a value the user set is kept); its import prints "Failed to load nvjpeg library!"
unless the nvJPEG wheels are installed, as requirements.txt does. libjpeg's own warnings about damaged data are
still printed, as every libjpeg-based decoder prints them: they name a real problem of the dataset.

Every failure of the region decoder (CMYK, corrupt data, no end-of-image marker, a region outside the image)
returns None, and the caller decodes the whole file instead, so bad-image verdicts come from one path.
"""

import importlib
import io
import os

import numpy as np

MODES = ("auto", "on", "off")
# What prepare() returns when regions are decoded: a name, not a handle, since the transforms carry it into
# the DataLoader workers (pickled) and each worker opens its own decoder (open_decoder).
DECODER = "nvimgcodec"
INSTALL_HINT = ("pip install -r requirements.txt installs it with the nvJPEG wheels (nvidia-nvimgcodec-cu13; "
                "Linux x86_64 and aarch64)")


class RoiUnavailable(RuntimeError):
    """nvImageCodec cannot be used here; the message says why and what to install."""


def import_nvimgcodec():
    """The nvidia.nvimgcodec module, imported quietly (see the module docstring), for this decoder and
    device_decode's; RoiUnavailable when it is missing or cannot load."""
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")  # read once, when the library loads
    try:
        return importlib.import_module("nvidia.nvimgcodec")
    except ImportError as e:
        raise RoiUnavailable(f"nvImageCodec is not installed ({e}); {INSTALL_HINT}") from None
    except OSError as e:  # a wheel for another platform or a damaged install: its shared library fails to load
        raise RoiUnavailable(f"nvImageCodec cannot be loaded ({e}); reinstall it: {INSTALL_HINT}") from None


def cpu_decoder(nvimgcodec, threads):
    """nvImageCodec's libjpeg-turbo backend alone. device_id CPU_ONLY: without it the decoder asks the CUDA runtime
    for a device and fails on a machine without a GPU driver, even with the CPU backend alone."""
    return nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=threads,
                              backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])


class JpegDecoder:
    """nvImageCodec's CPU JPEG decoder: a region of the image, or all of it, as an (h, w, 3) uint8 array, or None.

    One CPU thread, the caller's: DataLoader workers are the pipeline's parallelism. Grayscale files come back
    as three equal channels, as PIL's convert("RGB") gives them. EXIF orientation is not applied, as in the
    reference pipeline (PIL's Image.open does not apply it either).
    """

    def __init__(self):
        self._nvimgcodec = nvimgcodec = import_nvimgcodec()
        try:
            self._decoder = cpu_decoder(nvimgcodec, threads=1)
        except RuntimeError as e:
            raise RoiUnavailable(f"nvImageCodec's CPU decoder cannot be created ({e})") from None
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB)

    def _stream(self, data):
        """The parsed code stream of a colour or grayscale JPEG, or None (another format or colour model, a
        file without its end-of-image marker, a header it cannot parse)."""
        if data[-2:] != b"\xff\xd9":
            # No end-of-image marker: most likely a truncated file. A region above the cut would decode
            # cleanly, hiding the damage; the full decode path gives the bad-image verdict instead.
            return None
        try:
            stream = self._nvimgcodec.CodeStream(data)
            if stream.codec_name != "jpeg" or stream.num_channels not in (1, 3):
                return None  # CMYK/YCCK and other formats: PIL knows their colour conventions
        except RuntimeError:
            return None
        return stream

    def _decode(self, stream):
        try:
            image = self._decoder.decode(stream, params=self._params)
        except RuntimeError:
            return None
        array = None if image is None else np.asarray(image)
        return array if array is not None and array.ndim == 3 and array.shape[2] == 3 else None

    def decode(self, data, left, top, width, height):
        """Pixels [top, top + height) x [left, left + width) of the image, or None when the file must be
        decoded in full (see _stream; a region outside the image or empty)."""
        if width <= 0 or height <= 0 or left < 0 or top < 0:
            return None
        stream = self._stream(data)
        if stream is None or left + width > stream.width or top + height > stream.height:
            return None
        # A one-column region on an iMCU boundary would lose its chroma neighbour (see the module docstring):
        # decode two columns, the second on the side the image continues, and keep the wanted one.
        one_column = width == 1 and stream.width > 1
        shift = 1 if one_column and left + 1 == stream.width else 0
        decoded_width = 2 if one_column else width
        region = self._nvimgcodec.Region(top, left - shift, top + height, left - shift + decoded_width)
        array = self._decode(stream.get_sub_code_stream(region=region))
        if array is None or array.shape[:2] != (height, decoded_width):
            return None
        return array[:, shift : shift + 1] if one_column else array

    def decode_full(self, data):
        """The whole image, or None (see _stream; PIL then decodes it or gives the verdict)."""
        stream = self._stream(data)
        return None if stream is None else self._decode(stream)


_decoders = {}  # process id -> this process's decoder, or why it has none


def open_decoder():
    """This process's decoder (RoiUnavailable when there is none). One per process: the transforms carry only
    DECODER's name into the DataLoader workers, and each worker opens its own decoder on first use."""
    pid = os.getpid()
    if pid not in _decoders:
        try:
            _decoders[pid] = JpegDecoder()
        except RoiUnavailable as e:
            _decoders[pid] = e
    if isinstance(_decoders[pid], RoiUnavailable):
        raise RoiUnavailable(str(_decoders[pid]))
    return _decoders[pid]


def full_decoder():
    """This process's decoder for whole images, or None where nvImageCodec is not available (Pillow decodes then)."""
    try:
        return open_decoder()
    except RoiUnavailable:
        return None


def self_test(decoder):
    """Decode a region of a small generated JPEG and compare it with Pillow's full decode of the same file.

    Guards against a decoder that loads but does not work (which would make every call decline and silently
    cost a failed attempt per image)."""
    from PIL import Image

    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[5:37, 9:49]
    region = decoder.decode(data, 9, 5, 40, 32)
    if region is None:
        raise RoiUnavailable("nvImageCodec failed its self-test (it declined a plain JPEG)")
    worst = int(np.abs(region.astype(np.int16) - expected).max())
    if worst > 2:  # two builds of libjpeg-turbo agree to the level; anything more is a broken decode
        raise RoiUnavailable(f"nvImageCodec failed its self-test (pixels differ from Pillow's by {worst} levels)")


def prepare(mode):
    """Resolve --roi-decode in the main process, before the workers start: (DECODER or None, one line saying
    which decode is used and why). ``auto`` uses the region decoder when nvImageCodec works here and says why not
    otherwise; ``on`` raises RoiUnavailable instead; ``off`` decodes whole images."""
    if mode == "off":
        return None, "JPEG decode: whole images (--roi-decode off)"
    try:
        self_test(JpegDecoder())
    except RoiUnavailable as e:
        if mode == "on":
            raise RoiUnavailable(f"--roi-decode on: {e}") from None
        return None, f"JPEG decode: whole images; region-of-interest decode is unavailable: {e}"
    return DECODER, "JPEG decode: only each crop's region (nvImageCodec, libjpeg-turbo on the CPU)"
