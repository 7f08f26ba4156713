"""Stage 2 and the fused score of two-stage identification.

Given the stage-1 score of every database annotation (``engine.stage1`` or WBIA's HotSpotter), the top
``shortlist_k`` are matched with LightGlue (``scoring.match_scores``: the exact batched matcher) and each
annotation's final score is ``fuse(lightglue, stage1)`` (config ``fusion``):

* ``sum_log1p`` (fixed, untuned): ``log1p(lightglue) + log1p(stage1)``;
* ``logistic``: ``sigmoid(fusion_bias + fusion_w_lightglue * log1p(lightglue) + fusion_w_stage1 *
  log1p(stage1))``, P(same individual) when the weights were fitted (``fit_logistic``) on labelled pairs;
* ``lightglue``: LightGlue's raw score inside the shortlist (re-ranking only).

An annotation outside the shortlist is never matched: its LightGlue term is 0, so its fused score is a
monotone function of its stage-1 score and it ranks below every shortlisted annotation of higher stage-1
score (for ``lightglue``: ``s / (1 + s) - 1``, in [-1, 0), below every matched one). Negative, NaN or
infinite inputs count as 0, so the fused score is always finite. With ``shortlist_k = 0`` nothing here
runs and scores are LightGlue's, exactly as in one-stage mode.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

from .config import Config, ConfigLike, resolve_config
from .device import DeviceLike
from .scoring import match_scores

logger = logging.getLogger("wbia_lightglue")


def _evidence(values: Any) -> np.ndarray:
    """Scores as non-negative finite evidence (NaN, inf, negatives and None -> 0)."""
    arr = np.asarray([0.0 if v is None else v for v in np.atleast_1d(values)], dtype=np.float64)
    return np.where(np.isfinite(arr) & (arr > 0), arr, 0.0)


def fuse(lightglue: Any, stage1: Any, shortlisted: Any, config: ConfigLike = None) -> np.ndarray:
    """Fused scores (see the module docstring); ``shortlisted`` marks the annotations LightGlue matched."""
    config = resolve_config(config)
    lg, s1 = _evidence(lightglue), _evidence(stage1)
    inside = np.asarray(shortlisted, bool).reshape(-1)
    if not (len(lg) == len(s1) == len(inside)):
        raise ValueError(f"fuse: {len(lg)} LightGlue scores, {len(s1)} stage-1 scores, {len(inside)} flags")
    lg = np.where(inside, lg, 0.0)
    method = config["fusion"]
    if method == "sum_log1p":
        return np.log1p(lg) + np.log1p(s1)
    if method == "logistic":
        z = config["fusion_bias"] + config["fusion_w_lightglue"] * np.log1p(lg) + \
            config["fusion_w_stage1"] * np.log1p(s1)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
    return np.where(inside, lg, s1 / (1.0 + s1) - 1.0)  # 'lightglue': re-ranking only


def shortlist_positions(stage1: Any, k: int) -> np.ndarray:
    """Positions of the ``k`` highest stage-1 scores (ties: earlier position first), best first."""
    s1 = _evidence(stage1)
    order = np.lexsort((np.arange(len(s1)), -s1))
    return order[:k]


@dataclass
class TwoStageScores:
    """One query against a database: every annotation's stage-1, LightGlue (0 outside) and final score."""

    stage1: np.ndarray
    lightglue: np.ndarray
    shortlisted: np.ndarray  # bool
    fused: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        return self.fused


def two_stage_scores(
    query_features: Mapping[str, Any],
    database_features: Sequence[Mapping[str, Any]],
    stage1: Sequence[float],
    config: ConfigLike = None,
    *,
    device: DeviceLike = None,
    progress: bool = False,
    lightglue: Optional[Any] = None,
) -> TwoStageScores:
    """Stage 2 and fusion for one query: LightGlue on the top ``shortlist_k`` of ``stage1`` only.

    ``lightglue(positions) -> scores`` may replace the matcher (e.g. WBIA's stored pair table); by default
    ``scoring.match_scores`` runs on the shortlisted database features. With ``shortlist_k = 0`` every
    annotation is matched and the final score is LightGlue's (exhaustive, one-stage behaviour).
    """
    config = resolve_config(config)
    n = len(database_features) if lightglue is None else len(stage1)
    s1 = _evidence(stage1) if len(stage1) else np.zeros(n)
    if len(s1) != n:
        raise ValueError(f"{n} database annotations but {len(s1)} stage-1 scores")
    k = int(config["shortlist_k"])
    positions = np.arange(n) if k == 0 else shortlist_positions(s1, k)
    lg = np.zeros(n)
    if len(positions):
        if lightglue is not None:
            values = lightglue([int(p) for p in positions])
        else:
            values = match_scores(query_features, [database_features[p] for p in positions], config,
                                  device=device, progress=progress)
        lg[positions] = np.asarray(values, np.float64)
    inside = np.zeros(n, bool)
    inside[positions] = True
    fused = lg.copy() if k == 0 else fuse(lg, s1, inside, config)
    return TwoStageScores(s1, lg, inside, fused)


def fit_logistic(lightglue: Any, stage1: Any, same: Any, *, l2: float = 1e-3,
                 iterations: int = 200) -> Tuple[float, float, float]:
    """(bias, w_lightglue, w_stage1) of a logistic regression of ``same`` on log1p of both scores.

    Newton's method with a small L2 penalty (no sklearn needed); weights are clipped at 0 so the fused
    score stays monotone in both inputs (more evidence never lowers it).
    """
    x = np.stack([np.ones(len(_evidence(lightglue))), np.log1p(_evidence(lightglue)),
                  np.log1p(_evidence(stage1))], axis=1)
    y = np.asarray(same, np.float64)
    w = np.zeros(3)
    penalty = np.diag([0.0, l2, l2]) * len(y)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -500, 500)))
        grad = x.T @ (p - y) + penalty @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(max(w[1], 0.0)), float(max(w[2], 0.0))


def fused_config(config: Config, weights: Tuple[float, float, float]) -> Config:
    """``config`` with fusion 'logistic' and the given (bias, w_lightglue, w_stage1)."""
    bias, w_lg, w_s1 = weights
    return config.replace(fusion="logistic", fusion_bias=float(bias), fusion_w_lightglue=float(w_lg),
                          fusion_w_stage1=float(w_s1))
