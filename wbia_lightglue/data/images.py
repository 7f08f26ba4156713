"""Reading photos: raw bytes (their sha256 keys the feature store), decoding to BGR, cropping to a bbox."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

logger = logging.getLogger("wbia_lightglue")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

BBox = Tuple[int, int, int, int]  # x, y, width, height in pixels of the full image


class ImageReadError(OSError):
    """One image file is missing or cannot be decoded; the message names the file."""


def read_image_bytes(path: Union[str, Path]) -> bytes:
    """The raw file (its sha256 keys the feature store); ImageReadError when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"image {path} cannot be read: {exc.strerror or exc}") from exc


def decode_image(data: bytes, path: Union[str, Path], bbox: Optional[BBox] = None) -> np.ndarray:
    """Decode to a BGR uint8 array and apply the crop; ImageReadError when undecodable or the crop is empty."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
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


def read_image(path: Union[str, Path], bbox: Optional[BBox] = None) -> np.ndarray:
    """Read one image file (BGR uint8), cropped to ``bbox`` when given."""
    return decode_image(read_image_bytes(path), path, bbox)
