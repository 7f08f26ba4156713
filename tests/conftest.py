"""Shared fixtures: real photos from ../shared (skipped cleanly when absent) and project-made images."""
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "data" / "photos"
NYALA = SHARED / "data" / "nyala"


@pytest.fixture(scope="session")
def photos():
    """The four real photos (two views each of two scenes) as BGR chips, keyed by file stem."""
    if not PHOTOS.is_dir():
        pytest.skip(f"{PHOTOS} is absent")
    return {p.stem: cv2.imread(str(p)) for p in sorted(PHOTOS.iterdir()) if p.suffix.lower() in (".jpg", ".png")}


@pytest.fixture(scope="session")
def nyala_dir():
    if not (NYALA / "labels.csv").is_file():
        pytest.skip(f"{NYALA} is absent")
    return NYALA


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
