"""Reviewer evidence: two chips side by side, plain (``clean``), with LightGlue's correspondences
(``matches``), or with the matched regions of each coat highlighted by match confidence (``heatmask``).

All renderers take BGR uint8 chips and return one BGR uint8 canvas; WBIA's review images and the CLI's
pictures come from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

VERSIONS = ("heatmask", "matches", "clean")
HEADER_PX = 28
GAP_PX = 10
HEAT_ALPHA = 0.6  # opacity of the heat colour where the heat is highest
HEAT_SIGMA = 0.025  # spread of one match's heat, as a share of the chip's long edge


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


@dataclass
class _Layout:
    """Where the two (resized) chips sit on the canvas."""

    canvas: np.ndarray
    scale0: float
    scale1: float
    offset0: Tuple[int, int]  # (x, y) of chip 0's top-left corner
    offset1: Tuple[int, int]

    def point0(self, xy: np.ndarray) -> Tuple[int, int]:
        return int(round(xy[0] * self.scale0)) + self.offset0[0], int(round(xy[1] * self.scale0)) + self.offset0[1]

    def point1(self, xy: np.ndarray) -> Tuple[int, int]:
        return int(round(xy[0] * self.scale1)) + self.offset1[0], int(round(xy[1] * self.scale1)) + self.offset1[1]


def _layout(image0: np.ndarray, image1: np.ndarray, max_size: int, vert: bool, title: Optional[str]) -> _Layout:
    """Both chips (resized so neither exceeds ``max_size`` across the stacking axis) on a white canvas."""
    import cv2

    image0, image1 = _as_bgr(image0), _as_bgr(image1)
    axis = 1 if vert else 0  # side by side: limit heights; stacked: limit widths
    scale0 = min(1.0, max_size / image0.shape[axis])
    scale1 = min(1.0, max_size / image1.shape[axis])
    image0 = cv2.resize(image0, None, fx=scale0, fy=scale0, interpolation=cv2.INTER_AREA) if scale0 < 1 else image0
    image1 = cv2.resize(image1, None, fx=scale1, fy=scale1, interpolation=cv2.INTER_AREA) if scale1 < 1 else image1
    header = HEADER_PX if title else 0
    (h0, w0), (h1, w1) = image0.shape[:2], image1.shape[:2]
    if vert:
        offset0, offset1 = (0, header), (0, header + h0 + GAP_PX)
        shape = (header + h0 + GAP_PX + h1, max(w0, w1), 3)
    else:
        offset0, offset1 = (0, header), (w0 + GAP_PX, header)
        shape = (header + max(h0, h1), w0 + GAP_PX + w1, 3)
    canvas = np.full(shape, 255, np.uint8)
    canvas[offset0[1]:offset0[1] + h0, offset0[0]:offset0[0] + w0] = image0
    canvas[offset1[1]:offset1[1] + h1, offset1[0]:offset1[0] + w1] = image1
    if title:
        cv2.putText(canvas, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return _Layout(canvas, scale0, scale1, offset0, offset1)


def heat_overlay(image: np.ndarray, keypoints: np.ndarray, weights: np.ndarray,
                 sigma: float = HEAT_SIGMA) -> np.ndarray:
    """``image`` (BGR) with a heat map of ``weights`` at ``keypoints`` blended over it.

    Each matched keypoint adds a Gaussian blob of its confidence (spread ``sigma`` x the long edge); the
    sum is normalised to its maximum and coloured (jet) with an opacity that grows with the heat, so
    unmatched parts of the coat stay as they are.
    """
    import cv2

    image = _as_bgr(image)
    height, width = image.shape[:2]
    heat = np.zeros((height, width), np.float32)
    points = np.asarray(keypoints, np.float32).reshape(-1, 2)
    values = np.asarray(weights, np.float32).reshape(-1)
    if len(points) == 0 or not np.any(values > 0):
        return image.copy()
    cols = np.clip(np.round(points[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.round(points[:, 1]).astype(int), 0, height - 1)
    np.add.at(heat, (rows, cols), values)
    radius = max(1.0, sigma * max(height, width))
    heat = cv2.GaussianBlur(heat, (0, 0), radius)
    heat /= max(float(heat.max()), 1e-12)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (HEAT_ALPHA * np.sqrt(heat))[:, :, None]  # sqrt: weak regions still visible
    return (image * (1 - alpha) + colour * alpha).astype(np.uint8)


def render_pair(
    image0: np.ndarray,
    image1: np.ndarray,
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    matches: np.ndarray,
    confidences: np.ndarray,
    version: str = "matches",
    *,
    vert: bool = False,
    title: Optional[str] = None,
    max_size: int = 600,
) -> np.ndarray:
    """One review picture of a matched pair (BGR uint8): ``clean``, ``matches`` or ``heatmask``.

    ``matches`` is [K x 2] (index into keypoints0, index into keypoints1), ``confidences`` [K];
    ``vert`` stacks the chips vertically instead of side by side.
    """
    import cv2

    if version not in VERSIONS:
        raise ValueError(f"unknown review image version {version!r}; expected one of {', '.join(VERSIONS)}")
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    confidences = np.asarray(confidences, dtype=np.float32).reshape(-1)
    if version == "heatmask":
        image0 = heat_overlay(image0, np.asarray(keypoints0)[matches[:, 0]], confidences)
        image1 = heat_overlay(image1, np.asarray(keypoints1)[matches[:, 1]], confidences)
    layout = _layout(image0, image1, max_size, vert, title)
    if version != "matches":
        return layout.canvas
    colors = confidence_colors(confidences)
    for k in np.argsort(confidences):  # most confident drawn last, on top
        p0, p1 = layout.point0(keypoints0[matches[k, 0]]), layout.point1(keypoints1[matches[k, 1]])
        color = tuple(int(v) for v in colors[k])
        thickness = 1 if confidences[k] < 0.5 else 2
        cv2.line(layout.canvas, p0, p1, color, thickness, cv2.LINE_AA)
        cv2.circle(layout.canvas, p0, 2, color, -1, cv2.LINE_AA)
        cv2.circle(layout.canvas, p1, 2, color, -1, cv2.LINE_AA)
    return layout.canvas


def write_image(path: Union[str, Path], image: np.ndarray) -> Path:
    """Write a BGR image (format from the suffix); OSError when it cannot be written."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return path


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
    """Lines between matched keypoints (coloured by confidence, thicker = more confident), side by side.

    Returns the BGR canvas and writes it to ``path`` when given.
    """
    canvas = render_pair(image0, image1, keypoints0, keypoints1, matches, confidences, "matches",
                         title=title, max_size=max_height)
    if path is not None:
        write_image(path, canvas)
    return canvas
