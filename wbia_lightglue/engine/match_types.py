"""What goes into and comes out of the matcher (torch-free, so the core imports it without torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple, TypedDict

import numpy as np


@dataclass
class MatchResult:
    """LightGlue's answer for one (query, database) pair.

    ``score`` is the sum of the confidences of the matches above ``filter_threshold`` (raw, unbounded);
    ``matches`` is [K x 2] (query keypoint index, database keypoint index) and ``confidences`` [K],
    present when asked for; ``stop_layer`` is the number of layers the pair ran.
    """

    score: float
    num_matches: int
    stop_layer: int
    matches: Optional[np.ndarray] = None
    confidences: Optional[np.ndarray] = None


@dataclass(frozen=True)
class MatchSettings:
    """How the matcher runs: upstream's adaptive depth/width, the match filter, and optional screening.

    ``screen = (layer, min_score)``: after ``layer`` layers, a pair whose confidence sum at that layer is
    below ``min_score`` stops there with that score. None = upstream's forward.
    """

    depth_confidence: float = 0.95
    width_confidence: float = 0.99
    filter_threshold: float = 0.1
    return_matches: bool = False
    screen: Optional[Tuple[int, float]] = None


@dataclass(frozen=True)
class LayerScores:
    """What a ``layer_hook`` sees after a layer: the confidence sums of the pairs still running.

    ``positions`` index the ``database`` passed to ``match``; ``layer`` counts from 1.
    """

    layer: int
    positions: List[int]
    confidence_sums: List[float]


LayerHook = Callable[[LayerScores], None]


class Features(TypedDict, total=False):
    """ALIKED features of one chip (``engine.extraction``): LightGlue's input, one record per annotation.

    Usable features have no ``error``. A chip that could not be used (unreadable image, empty or too small
    crop) gets empty arrays and ``error`` saying why: every score against it is 0, and it is never cached
    or stored, so a later run tries again. ``stale`` (WBIA): computed while the annotation was edited;
    used for this request, never cached.
    """

    keypoints: np.ndarray  # [N x 2] float32, (x, y) in the chip's pixels
    descriptors: np.ndarray  # [N x 128] float32
    keypoint_scores: np.ndarray  # [N] float32
    image_size: np.ndarray  # (width, height) of the chip, int64
    fingerprint: str  # config.feature_fingerprint they were extracted under
    error: Optional[str]
    stale: bool


class Stage1Features(TypedDict, total=False):
    """Stage-1 features of one chip (``engine.stage1.features``); ``error`` as in :class:`Features`."""

    keypoints: np.ndarray  # [N x 2] float32, chip pixels
    descriptors: np.ndarray  # [N x 128] uint8 (Hessian-affine SIFT or RootSIFT)
    image_size: np.ndarray  # (width, height), int64
    error: Optional[str]


FeatureMapping = Mapping[str, Any]  # what the matcher reads: a Features record, or a dict with its arrays


def failure(features: Mapping[str, Any]) -> Optional[str]:
    """Why a feature record is empty (its ``error``), or None when it is usable."""
    return features.get("error")
