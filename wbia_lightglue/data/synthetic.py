"""Deterministic synthetic animals: patterned "individuals", each photographed under changing conditions.

An individual is a coat pattern (warped stripes, spots or rosettes; its own colours and geometry) on a
quadruped silhouette. A photo of it applies what makes re-identification hard in the field: another
viewpoint (rotation, scale, perspective), lighting (gain, gamma, colour cast, shading), background
clutter, partial occlusion by vegetation, blur and sensor noise. Everything is drawn from seeded RNGs, so
the same arguments always give the same pixels (on the same OpenCV build).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

PATTERNS = ("stripes", "spots", "rosettes")
CANVAS = (240, 360)  # height, width of an individual's canonical (texture) frame
PHOTO = (300, 400)  # height, width of a photo
# Tuned so that the demo (512 keypoints, 384 px) is hard but solvable: some true pairs score barely
# above the best impostor (mAP ~0.86) while Rank-1 stays high.
HARD_PHOTO_RATE = 0.35


@dataclass
class Individual:
    """One synthetic animal: its name, pattern kind, and the BGR coat + body mask in the canonical frame."""

    name: str
    pattern: str
    coat: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W float32 in [0, 1]


def body_mask(rng: np.random.Generator) -> np.ndarray:
    """A quadruped silhouette (body, neck, head, legs, tail) with slightly individual proportions."""
    import cv2

    h, w = CANVAS
    mask = np.zeros((h, w), np.uint8)
    body_axes = (int(w * rng.uniform(0.28, 0.33)), int(h * rng.uniform(0.2, 0.25)))
    center = (int(w * 0.45), int(h * 0.45))
    cv2.ellipse(mask, center, body_axes, 0, 0, 360, 255, -1)
    neck = np.array([[center[0] + body_axes[0] - 30, center[1] - 20], [int(w * 0.85), int(h * 0.12)],
                     [int(w * 0.9), int(h * 0.2)], [center[0] + body_axes[0] - 5, center[1] + 15]], np.int32)
    cv2.fillPoly(mask, [neck], 255)
    cv2.ellipse(mask, (int(w * 0.88), int(h * 0.14)), (26, 15), -20, 0, 360, 255, -1)  # head
    for x in (center[0] - body_axes[0] + 25, center[0] - body_axes[0] + 55,
              center[0] + body_axes[0] - 55, center[0] + body_axes[0] - 25):
        cv2.rectangle(mask, (x - 8, center[1]), (x + 8, int(h * 0.95)), 255, -1)  # legs
    tail_start = (center[0] - body_axes[0] + 5, center[1] - 10)
    cv2.line(mask, tail_start, (tail_start[0] - 25, tail_start[1] + 50), 255, 5)
    return cv2.GaussianBlur(mask, (5, 5), 0).astype(np.float32) / 255


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random grid of ``cells`` per side, bicubically upsampled."""
    import cv2

    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def coat_pattern(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Marking intensity in [0, 1] over the canonical frame (1 = dark marking)."""
    import cv2

    h, w = CANVAS
    if kind == "stripes":
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(-0.5, 0.5) + np.pi / 2  # roughly vertical, like a zebra's or nyala's flank
        period = rng.uniform(16, 26)
        field = x * np.sin(angle) + y * np.cos(angle) + rng.uniform(12, 24) * _smooth_noise(rng, (h, w), 5)
        field += rng.uniform(4, 10) * _smooth_noise(rng, (h, w), 11)  # fine wobble: unique stripe shapes
        marks = (np.sin(2 * np.pi * field / period) > rng.uniform(-0.1, 0.4)).astype(np.float32)
        return cv2.GaussianBlur(marks, (3, 3), 0)
    marks = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(55, 85))):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, 13)), int(rng.integers(4, 11)))
        angle = float(rng.uniform(0, 180))
        if kind == "spots":
            cv2.ellipse(marks, center, axes, angle, 0, 360, 1.0, -1)
        else:  # rosettes: broken rings around a slightly darker centre
            start = float(rng.uniform(0, 120))
            cv2.ellipse(marks, center, (axes[0] + 3, axes[1] + 3), angle, start, start + 280, 1.0, 3)
            cv2.ellipse(marks, center, axes, angle, 0, 360, 0.35, -1)
    return cv2.GaussianBlur(marks, (3, 3), 0)


def make_individual(index: int, seed: int = 0) -> Individual:
    """The ``index``-th individual of the population ``seed`` (patterns cycle through PATTERNS)."""
    rng = np.random.default_rng([seed, index, 1])
    kind = PATTERNS[index % len(PATTERNS)]
    h, w = CANVAS
    base = rng.uniform([60, 110, 150], [110, 170, 215])  # BGR tawny/brown coat
    mark = rng.uniform([10, 15, 20], [60, 60, 70])
    shading = 1 + 0.12 * _smooth_noise(rng, (h, w), 4)[..., None]  # fur colour varies over the body
    pattern = coat_pattern(rng, kind)[..., None]
    coat = (base * (1 - pattern) + mark * pattern) * shading
    coat += rng.normal(0, 6, coat.shape)  # fur grain
    return Individual(f"{kind}-{index + 1:02d}", kind, np.clip(coat, 0, 255).astype(np.uint8), body_mask(rng))


def background(rng: np.random.Generator) -> np.ndarray:
    """Savanna clutter: a ground/sky gradient, grass blades, bushes and stones (no animal pattern)."""
    import cv2

    h, w = PHOTO
    sky, ground = rng.uniform(150, 230, 3), rng.uniform([40, 90, 90], [90, 150, 150])
    horizon = rng.uniform(0.25, 0.45)
    t = np.clip((np.arange(h) / h - horizon) * 6, 0, 1)[:, None, None]
    image = (sky * (1 - t) + ground * t) * np.ones((h, w, 1))
    image = image.astype(np.uint8)
    for _ in range(int(rng.integers(6, 12))):  # bushes and stones
        color = tuple(int(c) for c in rng.uniform([20, 60, 40], [90, 140, 130]))
        cv2.ellipse(image, (int(rng.integers(0, w)), int(rng.integers(int(h * horizon), h))),
                    (int(rng.integers(10, 45)), int(rng.integers(6, 25))), 0, 0, 360, color, -1)
    for _ in range(int(rng.integers(120, 220))):  # grass blades
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(int(h * horizon), h))
        color = tuple(int(c) for c in rng.uniform([30, 110, 100], [90, 190, 170]))
        cv2.line(image, (x0, y0), (x0 + int(rng.integers(-6, 7)), y0 - int(rng.integers(5, 22))), color, 1)
    return image


def photograph(individual: Individual, index: int, seed: int = 0) -> np.ndarray:
    """The ``index``-th photo of ``individual``: new viewpoint, light, background and occluder (BGR uint8)."""
    import cv2

    rng = np.random.default_rng([seed, hash_name(individual.name), index, 2])
    h, w = PHOTO
    ch, cw = CANVAS
    src = np.float32([[0, 0], [cw, 0], [cw, ch], [0, ch]])
    # about one photo in three is a hard one: the animal far away, out of focus and in poor light
    hard = rng.random() < HARD_PHOTO_RATE
    scale = (rng.uniform(0.38, 0.52) if hard else rng.uniform(0.6, 1.05)) * min(w / cw, h / ch) * 0.95
    angle = np.deg2rad(rng.uniform(-25, 25))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centred = (src - [cw / 2, ch / 2]) * scale
    jitter = rng.uniform(-0.12, 0.12, (4, 2)) * [cw * scale, ch * scale]  # perspective: another viewpoint
    shift = [w / 2 + rng.uniform(-25, 25), h / 2 + rng.uniform(-15, 15)]
    dst = (centred @ rotation.T + jitter + shift).astype(np.float32)
    homography = cv2.getPerspectiveTransform(src, dst)
    coat = cv2.warpPerspective(individual.coat, homography, (w, h), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(individual.mask, homography, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    image = coat * alpha + background(rng) * (1 - alpha)
    image = occlude(image, rng)
    gain, gamma = rng.uniform(0.44, 0.7) if hard else rng.uniform(0.6, 1.3), rng.uniform(0.65, 1.6)
    cast = rng.uniform(0.9, 1.1, 3)
    ramp = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.2), w)[None, :, None]  # side light
    image = 255 * (np.clip(image * gain * cast * ramp, 0, 255) / 255) ** gamma
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(1.15, 1.8) if hard else rng.uniform(0.4, 1.2))
    image += rng.normal(0, rng.uniform(2, 7), image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def occlude(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Foreground vegetation: a few thick branches and one leafy clump over part of the frame."""
    import cv2

    h, w = image.shape[:2]
    image = image.copy()
    for _ in range(int(rng.integers(1, 4))):
        color = tuple(float(c) for c in rng.uniform([20, 40, 50], [50, 80, 90]))
        start = (int(rng.integers(0, w)), 0)
        end = (int(rng.integers(0, w)), h)
        cv2.line(image, start, end, color, int(rng.integers(6, 14)))
    clump = (int(rng.integers(0, w)), int(rng.integers(h // 3, h)))
    spread = rng.uniform(20, 45)
    for _ in range(int(rng.integers(20, 60))):
        offset = rng.normal(0, spread, 2).astype(int)
        color = tuple(float(c) for c in rng.uniform([20, 80, 30], [60, 150, 80]))
        cv2.circle(image, (clump[0] + int(offset[0]), clump[1] + int(offset[1])), int(rng.integers(6, 14)), color, -1)
    return image


def hash_name(name: str) -> int:
    """A stable integer for a name (Python's hash() is salted per process)."""
    import zlib

    return zlib.crc32(name.encode())


def make_population(num_individuals: int = 6, photos_per_individual: int = 3,
                    seed: int = 0) -> List[Tuple[str, List[np.ndarray]]]:
    """``num_individuals`` individuals, each with ``photos_per_individual`` photos: [(name, [photo, ...])]."""
    population = []
    for i in range(num_individuals):
        individual = make_individual(i, seed)
        population.append((individual.name, [photograph(individual, k, seed) for k in range(photos_per_individual)]))
    return population


def write_dataset(root: Union[str, Path], num_individuals: int = 6, photos_per_individual: int = 3,
                  seed: int = 0) -> Path:
    """Write a folder dataset ``root/<individual>/photo-<k>.png``; returns ``root``."""
    import cv2

    root = Path(root)
    for name, photos in make_population(num_individuals, photos_per_individual, seed):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k, photo in enumerate(photos, start=1):
            if not cv2.imwrite(str(root / name / f"photo-{k}.png"), photo):
                raise OSError(f"could not write {root / name / f'photo-{k}.png'}")
    return root
