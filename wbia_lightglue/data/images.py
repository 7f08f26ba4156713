"""Reading photos: raw bytes (their sha256 keys the feature store), decoding to BGR, cropping to a bbox.

Guards against hostile or broken files, each an ImageReadError naming the file (callers skip it):

* only regular files are read, at most ``MAX_IMAGE_FILE_BYTES`` (a FIFO or ``/dev/zero`` would hang or
  fill memory);
* the pixel count is read from the header *before* decoding and checked against a budget
  (config ``max_image_pixels``), so a decompression bomb (a small PNG or JPEG that claims tens of
  thousands of pixels a side) is never decoded; OpenCV's own errors never escape;
* a JPEG cut short (still being copied) is refused instead of being decoded half grey.

16-bit images are scaled to 8 bits and palette / grey / alpha images converted to BGR by OpenCV. The EXIF
orientation is applied (OpenCV's default), so pixels and bounding boxes refer to the image *as a viewer
displays it*, not to the sensor's stored frame.
"""
from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ..files import read_regular_file

logger = logging.getLogger("wbia_lightglue")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# The default pixel budget (config ``max_image_pixels``): 160 megapixels covers every 100-150 MP camera
# and decodes to at most 480 MB of BGR. OpenCV refuses more than 2**30 pixels whatever the budget.
DEFAULT_MAX_PIXELS = 160_000_000
OPENCV_MAX_PIXELS = 1 << 30
MAX_IMAGE_FILE_BYTES = 1 << 30  # a photo file larger than 1 GiB is not read

BBox = Tuple[int, int, int, int]  # x, y, width, height in pixels of the full image


class ImageReadError(OSError):
    """One image file is missing or cannot be decoded; the message names the file."""


def read_image_bytes(path: Union[str, Path]) -> bytes:
    """The raw file (its sha256 keys the feature store); ImageReadError when it cannot be read."""
    try:
        return read_regular_file(path, MAX_IMAGE_FILE_BYTES)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ImageReadError(f"image {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc


# ----------------------------------------------------------------------------- header sizes
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_size(data: bytes) -> Optional[Tuple[int, int]]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_layout(data: bytes) -> Tuple[Optional[Tuple[int, int]], Optional[int]]:
    """(width, height) from the frame header (SOFn) of a JPEG and where its first scan starts (SOS).

    Walks the marker segments by their lengths, so an EXIF thumbnail (inside APP1) is skipped whole.
    """
    size: Optional[Tuple[int, int]] = None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker == 0xDA:
            return size, pos
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF and size is None and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            if height > 0:  # height 0 is defined later (DNL marker); rare, left to Pillow
                size = (width, height)
        pos += 2 + length
    return size, None


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    return _jpeg_layout(data)[0] if data[:2] == b"\xff\xd8" else None


def _pillow_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) of any other format Pillow knows (BMP, TIFF, WebP, ...), read from the header only."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: our own budget decides below
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError as exc:
            # Pillow refuses to even open above 2 x Image.MAX_IMAGE_PIXELS; its message holds the count
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(found.group(1)) if found else OPENCV_MAX_PIXELS + 1
            return pixels, 1
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
            return None


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) stated by the file's header, without decoding; None when no header is recognised."""
    return _png_size(data) or _jpeg_size(data) or _pillow_size(data)


def _truncated_jpeg(data: bytes) -> bool:
    """A JPEG with no end-of-image marker after the start of its image data was cut short.

    Inside entropy-coded data 0xFF is always escaped, so the marker cannot occur there by chance; data
    appended after a complete image (camera trailers, a second picture) keeps the first end marker.
    """
    if data[:2] != b"\xff\xd8":
        return False
    _, scan = _jpeg_layout(data)
    return scan is not None and data.find(b"\xff\xd9", scan) == -1


# ----------------------------------------------------------------------------- decoding
def _pixels(count: int) -> str:
    return f"{count / 1e6:,.1f} megapixels" if count >= 100_000 else f"{count:,} pixels"


def decode_image(data: bytes, path: Union[str, Path], bbox: Optional[BBox] = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to a BGR uint8 array and apply the crop.

    ImageReadError when the file is not an image, claims more than ``max_pixels`` pixels in its header
    (checked before decoding), is a truncated JPEG, cannot be decoded, or the crop is empty.
    """
    import cv2

    size = image_size(data) if data else None
    if size is None:
        raise ImageReadError(f"image {path} is not a readable image (no PNG, JPEG or other known header)")
    width, height = size
    budget = min(max_pixels, OPENCV_MAX_PIXELS)
    if width * height > budget:
        raise ImageReadError(f"image {path} is {width}x{height} ({_pixels(width * height)}), above the pixel "
                             f"budget of {_pixels(budget)} (config max_image_pixels); not decoded")
    if _truncated_jpeg(data):
        raise ImageReadError(f"image {path} is a truncated JPEG (no end marker after its image data; "
                             "still being copied?)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except (cv2.error, MemoryError) as exc:
        reason = "out of memory" if isinstance(exc, MemoryError) else str(exc).strip().splitlines()[-1]
        raise ImageReadError(f"image {path} cannot be decoded ({reason})") from None
    if image is None or image.size == 0:
        raise ImageReadError(f"image {path} is not a readable image")
    if bbox is None:
        return image
    x, y, w, h = bbox
    crop = image[y:y + h, x:x + w]
    if crop.size == 0:
        raise ImageReadError(f"image {path}: bounding box {x},{y},{w},{h} lies outside the "
                             f"{image.shape[1]}x{image.shape[0]} image")
    if crop.shape[:2] != (h, w):
        logger.warning("image %s: bounding box %d,%d,%d,%d is clipped to the image", path, x, y, w, h)
    return np.ascontiguousarray(crop)


def read_image(path: Union[str, Path], bbox: Optional[BBox] = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file (BGR uint8), cropped to ``bbox`` when given."""
    return decode_image(read_image_bytes(path), path, bbox, max_pixels)
