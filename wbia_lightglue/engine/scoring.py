"""Scores: LightGlue on one query against many feature sets, the configured pair score, name scores.

``match_scores`` is what every caller uses (WBIA, the CLI, evaluation): one batched matcher call, one
score per database entry in input order. ``name_scores`` aggregates annotation scores per individual.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .config import NAME_SCORES, SCORE_NAMES, Config, ConfigError, ConfigLike, resolve_config
from .device import DeviceLike
from .match_types import MatchResult, MatchSettings
from .models import get_matcher


class FeatureMismatchError(ValueError):
    """Features were extracted with another config (or are malformed) for the matcher at hand."""


def check_features(feats: Any, config: Config, label: str) -> None:
    """Raise FeatureMismatchError when ``feats`` cannot be matched under ``config``."""
    if not isinstance(feats, Mapping):
        raise FeatureMismatchError(f"{label}: expected a feature dict, got {type(feats).__name__}")
    for name in ("keypoints", "descriptors", "image_size"):
        if name not in feats:
            raise FeatureMismatchError(f"{label}: feature dict has no {name!r}")
    fingerprint = feats.get("fingerprint")
    if fingerprint is not None and fingerprint != config.feature_fingerprint:
        raise FeatureMismatchError(
            f"{label}: features were extracted with another config (fingerprint {fingerprint}, "
            f"expected {config.feature_fingerprint}); re-extract them")
    kpts, desc = np.asarray(feats["keypoints"]), np.asarray(feats["descriptors"])
    if kpts.ndim != 2 or kpts.shape[1] != 2 or desc.ndim != 2 or desc.shape[1] != 128 or len(kpts) != len(desc):
        raise FeatureMismatchError(
            f"{label}: expected keypoints [N x 2] and descriptors [N x 128], got {kpts.shape} and {desc.shape}")


def match_settings(config: Config, return_matches: bool = False) -> MatchSettings:
    """The matcher's settings for ``config`` (screening off when ``screen_layer`` is 0 or the bar is 0)."""
    screen = None
    if config["screen_layer"] > 0 and config["screen_score"] > 0:
        screen = (int(config["screen_layer"]), float(config["screen_score"]))
    return MatchSettings(depth_confidence=config["depth_confidence"], width_confidence=config["width_confidence"],
                         filter_threshold=config["filter_threshold"], return_matches=return_matches, screen=screen)


def match_pairs(
    query_features: Mapping[str, Any],
    database_features: Sequence[Mapping[str, Any]],
    config: ConfigLike = None,
    *,
    device: DeviceLike = None,
    return_matches: bool = False,
    progress: bool = False,
) -> List[MatchResult]:
    """LightGlue between the query and each database entry: a list of MatchResult in input order."""
    config = resolve_config(config)
    check_features(query_features, config, "query")
    for i, feats in enumerate(database_features):
        check_features(feats, config, f"database entry {i}")
    matcher = get_matcher(config, device)
    return matcher.match(query_features, database_features, match_settings(config, return_matches),
                         progress=progress)


def match_scores(
    query_features: Mapping[str, Any],
    database_features: Sequence[Mapping[str, Any]],
    config: ConfigLike = None,
    *,
    device: DeviceLike = None,
    progress: bool = False,
) -> List[float]:
    """One score per database entry, in input order (config ``score``; default: sum of match confidences)."""
    config = resolve_config(config)
    geometric = config["score"] in ("inlier_count", "inlier_confidence_sum")
    results = match_pairs(query_features, database_features, config, device=device,
                          return_matches=geometric or config["score"] == "match_count", progress=progress)
    return [pair_score(result, query_features, db, config) for result, db in zip(results, database_features)]


def pair_score(result: MatchResult, query_features: Mapping[str, Any], database_features: Mapping[str, Any],
               config: Config) -> float:
    """The configured score of one matched pair (see SCORE_NAMES)."""
    method = config["score"]
    if method == "confidence_sum":
        return float(result.score)
    if result.matches is None or result.confidences is None:
        raise ValueError(f"score {method!r} needs the matches: match with return_matches=True")
    inliers = None
    if method in ("inlier_count", "inlier_confidence_sum"):
        inliers = geometric_inliers(query_features["keypoints"], database_features["keypoints"], result.matches)
    return score_of_matches(method, result.confidences, inliers, config["score_match_threshold"])


def score_of_matches(method: str, confidences: np.ndarray, inliers: Optional[np.ndarray] = None,
                     match_threshold: float = 0.5) -> float:
    """A pair score (one of SCORE_NAMES) from its matches' confidences [K] and, for the inlier scores,
    their geometric inlier mask [K]."""
    if method == "confidence_sum":
        return float(np.sum(confidences, dtype=np.float64))
    if method == "match_count":
        return float(np.count_nonzero(confidences > match_threshold))
    if inliers is None:
        raise ValueError(f"score {method!r} needs the geometric inlier mask of the matches")
    if method == "inlier_count":
        return float(np.count_nonzero(inliers))
    if method == "inlier_confidence_sum":
        return float(np.sum(confidences[inliers], dtype=np.float64))
    raise ConfigError(f"score {method!r}; expected one of {', '.join(SCORE_NAMES)}")


MIN_GEOMETRY_MATCHES = 8


def geometric_inliers(kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray,
                      threshold_px: float = 3.0) -> np.ndarray:
    """Boolean inlier mask of ``matches`` under a fundamental matrix fitted with MAGSAC (OpenCV USAC).

    Fewer than 8 matches cannot support a fundamental matrix: no inliers.
    """
    import cv2

    if len(matches) < MIN_GEOMETRY_MATCHES:
        return np.zeros(len(matches), bool)
    pts0 = np.asarray(kpts0, np.float64)[matches[:, 0]]
    pts1 = np.asarray(kpts1, np.float64)[matches[:, 1]]
    _, mask = cv2.findFundamentalMat(pts0, pts1, cv2.USAC_MAGSAC, threshold_px, 0.999, 10000)
    if mask is None:
        return np.zeros(len(matches), bool)
    return mask.ravel().astype(bool)


def name_scores(annot_scores: Sequence[float], names: Sequence[Any], method: str = "max") -> Dict[Any, float]:
    """Aggregate annotation scores into one score per name: max, sum, or mean of the top 3."""
    if method not in NAME_SCORES:
        raise ConfigError(f"name_score {method!r}; expected one of {', '.join(NAME_SCORES)}")
    grouped: Dict[Any, List[float]] = {}
    for score, name in zip(annot_scores, names):
        grouped.setdefault(name, []).append(float(score))
    if method == "max":
        return {name: max(s) for name, s in grouped.items()}
    if method == "sum":
        return {name: float(sum(s)) for name, s in grouped.items()}
    return {name: float(np.mean(sorted(s, reverse=True)[:3])) for name, s in grouped.items()}
