"""Stage-1 features: SIFT descriptors of a chip downsized to ``shortlist_image_size``, at most ``shortlist_features``.

``shortlist_detector``: ``hesaff`` = Hessian-affine regions through pyhesaff (HotSpotter's detector, :mod:`.hesaff`);
``sift`` = OpenCV's DoG SIFT as RootSIFT; ``auto`` = ``hesaff`` when pyhesaff imports, else ``sift``
(:attr:`Config.stage1_detector`). Keypoints are returned in the chip's own pixels.
"""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..config import ConfigLike, resolve_config
from ..extraction import InvalidChipError, OnError, check_on_error, prepare_chip
from ..match_types import Stage1Features

logger = logging.getLogger("wbia_lightglue")

DIM = 128
ROOTSIFT_SCALE = 512.0  # RootSIFT components are <= ~0.5: x512 fills uint8 (HotSpotter's scaling)


def rootsift(descriptors: np.ndarray) -> np.ndarray:
    """SIFT -> RootSIFT (L1-normalise, square root) as uint8 (x ``ROOTSIFT_SCALE``, clipped)."""
    desc = np.asarray(descriptors, np.float32)
    desc = np.sqrt(desc / (desc.sum(axis=1, keepdims=True) + 1e-7))
    return np.clip(np.round(desc * ROOTSIFT_SCALE), 0, 255).astype(np.uint8)


def empty_stage1_features(image_size: Tuple[int, int] = (0, 0), error: Optional[str] = None) -> Stage1Features:
    feats: Stage1Features = {"keypoints": np.zeros((0, 2), np.float32), "descriptors": np.zeros((0, DIM), np.uint8),
             "image_size": np.asarray(image_size, np.int64)}
    if error:
        feats["error"] = error
    return feats


def extract_stage1_features(
    chips: Sequence[np.ndarray],
    config: ConfigLike = None,
    keys: Optional[Sequence[Any]] = None,
    *,
    on_error: OnError = "skip",
) -> List[Stage1Features]:
    """Stage-1 features of each chip (BGR uint8), in input order.

    Returns dicts with ``keypoints`` [N x 2] float32 (x, y in the chip's pixels), ``descriptors`` [N x 128]
    uint8 and ``image_size`` (width, height). An unusable chip gets empty features and an ``error`` entry
    (``on_error='skip'``) or raises InvalidChipError (``'raise'``).
    """
    import cv2

    from . import hesaff

    check_on_error(on_error)
    config = resolve_config(config)
    keys = list(keys) if keys is not None else [None] * len(chips)
    limit = int(config["shortlist_features"])
    detector = config.stage1_detector  # "hesaff" without pyhesaff: one clear ConfigError before any chip
    sift = cv2.SIFT_create(nfeatures=limit) if detector == "sift" else None
    out = []
    for chip, key in zip(chips, keys):
        try:
            rgb = prepare_chip(chip, key)
        except InvalidChipError as exc:
            if on_error == "raise":
                raise
            logger.warning("%s; it gets no stage-1 features", exc)
            shape = getattr(chip, "shape", (0, 0))
            out.append(empty_stage1_features((shape[1], shape[0]) if len(shape) >= 2 else (0, 0), str(exc)))
            continue
        height, width = rgb.shape[:2]
        scale = min(1.0, config["shortlist_image_size"] / max(height, width))  # never upscale
        if scale < 1:
            rgb = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                             interpolation=cv2.INTER_AREA)
        if sift is None:
            xy, desc = hesaff.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), limit)
        else:
            xy, desc = _opencv_rootsift(sift, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), limit)
        if not len(xy):
            out.append(empty_stage1_features((width, height)))
            continue
        out.append({"keypoints": xy / np.float32(scale), "descriptors": desc,
                    "image_size": np.asarray((width, height), np.int64)})
    return out


def _opencv_rootsift(sift: Any, gray: np.ndarray, limit: int) -> Tuple[np.ndarray, np.ndarray]:
    """(keypoints [N x 2] float32, RootSIFT uint8 [N x 128]) of the ``limit`` strongest OpenCV SIFT responses."""
    kps, raw = sift.detectAndCompute(gray, None)
    kps = kps or ()
    # SIFT may return a few more than nfeatures (ties); keep the strongest
    order = np.argsort([-kp.response for kp in kps], kind="stable")[:limit]
    xy = np.asarray([kps[i].pt for i in order], np.float32).reshape(-1, 2)
    return xy, (rootsift(raw[order]) if len(order) else np.zeros((0, DIM), np.uint8))
