"""Deterministic, project-made test images (no files needed)."""
import cv2
import numpy as np


def textured_chip(seed: int, size=(240, 320)) -> np.ndarray:
    """A deterministic, richly textured BGR chip (blobs and stripes) that ALIKED finds keypoints on."""
    rng = np.random.default_rng(seed)
    h, w = size
    chip = np.full((h, w, 3), 90, np.uint8)
    for _ in range(60):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, 30)), int(rng.integers(4, 30)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(chip, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    return cv2.GaussianBlur(chip, (3, 3), 0)


def warp(chip: np.ndarray, angle: float = 8, scale: float = 0.9) -> np.ndarray:
    """Another view of the same chip: rotation + scale about the centre."""
    h, w = chip.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    return cv2.warpAffine(chip, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
