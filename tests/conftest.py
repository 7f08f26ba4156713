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
