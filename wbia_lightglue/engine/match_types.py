"""What goes into and comes out of the matcher (torch-free, so the core imports it without torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Tuple

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
Features = Mapping[str, Any]  # a feature dict (engine.extraction): keypoints, descriptors, image_size, ...
