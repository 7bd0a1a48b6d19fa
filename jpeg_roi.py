"""Region-of-interest JPEG decoding for the fast CPU pipeline: decode only the crop.

A RandomResizedCrop keeps on average about half of the image, yet Pillow and torchvision
decode every pixel first. libjpeg-turbo can skip the rows above a crop, the columns beside
it and everything below it (``jpeg_roi.c``); its output for the crop is bit-identical to a
full decode followed by the same crop, which the tests check.

Neither Pillow nor torchvision exposes those calls, so ``jpeg_roi.c`` is a small C
library, built on first use with the system C compiler against libjpeg-turbo's headers
(Debian/Ubuntu: ``apt install gcc libjpeg-turbo8-dev`` or ``libjpeg62-turbo-dev``) and kept
under ``~/.cache/resnet50-imagenet/``. It is optional (``--roi-decode auto``): without a compiler or the headers the
fast backend decodes whole images as before, and the run says so in one line.

Every failure of the region decoder (a CMYK file, corrupt data, a file that does not end
with the end-of-image marker, an error) returns None, and the caller decodes the whole file in full instead, so bad-image
reporting stays with the one path that gives verdicts.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

import fileio

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jpeg_roi.c")
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "resnet50-imagenet", "jpeg_roi")
MODES = ("auto", "on", "off")

_ERRBUF_LEN = 200
_ROI_OK = 0


class RoiUnavailable(RuntimeError):
    """The region decoder cannot be built or loaded here; the message says why and what to install."""


def _compiler():
    return os.environ.get("CC", "cc")


def library_path(cache_dir=CACHE_DIR):
    """Where the built library lives: keyed by the source and the compiler, so an edit rebuilds it."""
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + _compiler().encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"jpeg_roi-{key}.so")


def build(cache_dir=CACHE_DIR):
    """Compile jpeg_roi.c into the cache and return its path. The library is published with
    fileio.atomic_write: concurrent ranks may race, and a half-written file must never be loaded."""
    path = library_path(cache_dir)
    if os.path.exists(path):
        return path
    try:
        os.makedirs(cache_dir, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".jpeg_roi-", dir=cache_dir)
    except OSError as e:
        raise RoiUnavailable(f"cannot write to {cache_dir}: {e.strerror}") from None
    try:
        built = os.path.join(work, "jpeg_roi.so")
        _compile(built)
        with open(built, "rb") as src:
            fileio.atomic_write(path, lambda f: shutil.copyfileobj(src, f))
    except OSError as e:
        raise RoiUnavailable(f"cannot write {path}: {e.strerror}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _compile(out):
    cmd = [_compiler(), "-O2", "-shared", "-fPIC", "-o", out, SOURCE, "-ljpeg"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RoiUnavailable(f"no working C compiler ({_compiler()}: {e}); install gcc and libjpeg-turbo's "
                             "headers to enable it") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
        detail = lines[0].strip() if lines else f"exit code {result.returncode}"
        raise RoiUnavailable(f"building jpeg_roi.c failed ({detail}); it needs libjpeg-turbo >= 1.5 headers "
                             "(apt install libjpeg-turbo8-dev or libjpeg62-turbo-dev)")


def self_test(decoder):
    """Decode a region of a small generated JPEG and compare it with Pillow's full decode of the same file.

    Guards against a library that loads but does not work (for example an incompatible libjpeg resolved at
    run time, which would make every call decline and silently cost a failed attempt per image)."""
    import io

    from PIL import Image

    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[5:37, 9:49]
    region = decoder.decode(data, 9, 5, 40, 32)
    if region is None:
        raise RoiUnavailable(f"{decoder.path} failed its self-test (it declined a plain JPEG: "
                             f"{decoder.last_error() or 'no message'})")
    worst = int(np.abs(region.astype(np.int16) - expected).max())
    if worst > 2:  # two builds of libjpeg-turbo agree to the level; anything more is a broken decode
        raise RoiUnavailable(f"{decoder.path} failed its self-test (pixels differ from Pillow's by {worst} levels)")


class RoiDecoder:
    """Decodes a rectangle of a colour JPEG into an (h, w, 3) uint8 array, or returns None.

    Not thread-safe (it keeps a message buffer): one instance per process, see open_decoder.
    """

    def __init__(self, path):
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise RoiUnavailable(f"cannot load {path}: {e}") from None
        lib.roi_decode.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.roi_decode.restype = ctypes.c_int
        self.path = path
        self._decode = lib.roi_decode
        self._errbuf = ctypes.create_string_buffer(_ERRBUF_LEN)

    def decode(self, data, left, top, width, height, scale=1):
        """Pixels [top, top + height) x [left, left + width) of the image decoded at 1/scale
        (scale 1, 2, 4 or 8; coordinates in decoded pixels), or None when this file must be
        decoded in full (not a 3-component JPEG, corrupt data, a region outside the image)."""
        if scale not in (1, 2, 4, 8) or width <= 0 or height <= 0:
            return None
        if data[-2:] != b"\xff\xd9":
            # No end-of-image marker: most likely a truncated file. A region above the cut would decode
            # cleanly, hiding the damage; the full decode path gives the bad-image verdict instead.
            return None
        out = np.empty((height, width, 3), dtype=np.uint8)
        status = self._decode(data, len(data), scale, left, top, width, height, out.ctypes.data,
                              self._errbuf, _ERRBUF_LEN)
        return out if status == _ROI_OK else None

    def last_error(self):
        """libjpeg's message for the last call that failed with an error ('' after warnings or declines)."""
        return self._errbuf.value.decode(errors="replace")


@functools.lru_cache(maxsize=None)
def open_decoder(path):
    """The decoder for a built library, one per process: the transforms carry only the path (they are
    pickled into the DataLoader workers), and each worker opens the library once."""
    return RoiDecoder(path)


def prepare(mode, cache_dir=CACHE_DIR):
    """Resolve --roi-decode in the main process, before the workers start: (library path or None, one
    line saying which decode is used and why).

    ``auto`` builds and uses the region decoder when it can, and says why not otherwise; ``on`` raises
    RoiUnavailable instead of falling back; ``off`` decodes whole images.
    """
    if mode not in MODES:
        raise ValueError(f"--roi-decode {mode!r} is not supported; choose one of {', '.join(MODES)}")
    if mode == "off":
        return None, "JPEG decode: whole images (--roi-decode off)"
    try:
        path = build(cache_dir)
        self_test(open_decoder(path))
    except RoiUnavailable as e:
        if mode == "on":
            raise RoiUnavailable(f"--roi-decode on: {e}") from None
        return None, f"JPEG decode: whole images; region-of-interest decode is unavailable: {e}"
    return path, "JPEG decode: only each crop's region (libjpeg-turbo, jpeg_roi.c)"
