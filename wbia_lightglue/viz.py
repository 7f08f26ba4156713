"""Reviewer evidence: the two chips side by side with LightGlue's correspondences drawn between them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np


def confidence_colors(confidences: np.ndarray) -> np.ndarray:
    """BGR colours from red (low confidence) through yellow to green (high), one per match."""
    c = np.clip(np.asarray(confidences, dtype=np.float32), 0, 1)
    red = np.where(c < 0.5, 255, 255 * (1 - c) * 2)
    green = np.where(c < 0.5, 255 * c * 2, 255)
    return np.stack([np.zeros_like(c), green, red], axis=-1).astype(np.uint8)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    matches: np.ndarray,
    confidences: np.ndarray,
    title: Optional[str] = None,
    max_height: int = 600,
    path: Union[str, Path, None] = None,
) -> np.ndarray:
    """Draw matches (lines coloured by confidence, thicker = more confident) between two BGR chips.

    ``matches`` is [K x 2] (index into keypoints0, index into keypoints1). Returns the BGR canvas and
    writes it to ``path`` when given.
    """
    import cv2

    image0, image1 = _as_bgr(image0), _as_bgr(image1)
    scale0 = min(1.0, max_height / image0.shape[0])
    scale1 = min(1.0, max_height / image1.shape[0])
    image0 = cv2.resize(image0, None, fx=scale0, fy=scale0) if scale0 < 1 else image0
    image1 = cv2.resize(image1, None, fx=scale1, fy=scale1) if scale1 < 1 else image1
    gap, header = 10, 28 if title else 0
    height = max(image0.shape[0], image1.shape[0]) + header
    canvas = np.full((height, image0.shape[1] + gap + image1.shape[1], 3), 255, np.uint8)
    canvas[header:header + image0.shape[0], :image0.shape[1]] = image0
    offset = image0.shape[1] + gap
    canvas[header:header + image1.shape[0], offset:] = image1
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    confidences = np.asarray(confidences, dtype=np.float32).reshape(-1)
    colors = confidence_colors(confidences)
    for k in np.argsort(confidences):  # most confident drawn last, on top
        x0, y0 = np.asarray(keypoints0[matches[k, 0]]) * scale0
        x1, y1 = np.asarray(keypoints1[matches[k, 1]]) * scale1
        p0 = (int(round(x0)), int(round(y0)) + header)
        p1 = (int(round(x1)) + offset, int(round(y1)) + header)
        color = tuple(int(v) for v in colors[k])
        thickness = 1 if confidences[k] < 0.5 else 2
        cv2.line(canvas, p0, p1, color, thickness, cv2.LINE_AA)
        cv2.circle(canvas, p0, 2, color, -1, cv2.LINE_AA)
        cv2.circle(canvas, p1, 2, color, -1, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), canvas):
            raise OSError(f"could not write {path}")
    return canvas
