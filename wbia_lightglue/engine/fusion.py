"""The fused score of two-stage identification, and its fit.

The pipeline (:mod:`wbia_lightglue.pipeline`) matches the top ``shortlist_k`` annotations of stage 1 with
LightGlue (``shortlist_positions``); each annotation's final score is ``fuse(lightglue, stage1)`` (config
``fusion``):

* ``sum_log1p`` (fixed, untuned): ``log1p(lightglue) + log1p(stage1)``;
* ``logistic``: ``sigmoid(fusion_bias + fusion_w_lightglue * log1p(lightglue) + fusion_w_stage1 *
  log1p(stage1))``, P(same individual) when the weights were fitted (``fit_logistic``) on labelled pairs;
* ``lightglue``: LightGlue's raw score inside the shortlist (re-ranking only).

An annotation outside the shortlist is never matched: its LightGlue term is 0, so its fused score is a
monotone function of its stage-1 score and it ranks below every shortlisted annotation of higher stage-1
score (for ``lightglue``: ``s / (1 + s) - 1``, in [-1, 0), below every matched one). Negative, NaN or
infinite inputs count as 0, so the fused score is always finite. In exhaustive mode nothing here runs and
scores are LightGlue's.
"""
from __future__ import annotations

import logging
from typing import Any, Tuple

import numpy as np

from .config import Config, ConfigLike, resolve_config

logger = logging.getLogger("wbia_lightglue")


def as_evidence(values: Any) -> np.ndarray:
    """Scores as non-negative finite evidence (NaN, inf, negatives and None -> 0)."""
    arr = np.asarray([0.0 if v is None else v for v in np.atleast_1d(values)], dtype=np.float64)
    return np.where(np.isfinite(arr) & (arr > 0), arr, 0.0)


def fuse(lightglue: Any, stage1: Any, shortlisted: Any, config: ConfigLike = None) -> np.ndarray:
    """Fused scores (see the module docstring); ``shortlisted`` marks the annotations LightGlue matched."""
    config = resolve_config(config)
    lg, s1 = as_evidence(lightglue), as_evidence(stage1)
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
    s1 = as_evidence(stage1)
    order = np.lexsort((np.arange(len(s1)), -s1))
    return order[:k]


class FusionFitError(ValueError):
    """The fusion weights cannot be learned from these pairs (e.g. all of one label)."""


def fit_logistic(lightglue: Any, stage1: Any, same: Any, *, l2: float = 1e-3,
                 iterations: int = 200) -> Tuple[float, float, float]:
    """(bias, w_lightglue, w_stage1) of a logistic regression of ``same`` on log1p of both scores.

    Newton's method with a small L2 penalty (no sklearn needed); weights are clipped at 0 so the fused
    score stays monotone in both inputs (more evidence never lowers it). FusionFitError when the pairs
    cannot teach anything: no pairs, lengths that differ, or labels all same or all different (the weights
    would only say "always" / "never").
    """
    lg, s1 = as_evidence(lightglue), as_evidence(stage1)
    labels = np.asarray(same).reshape(-1)
    if not len(lg) == len(s1) == len(labels):
        raise FusionFitError(f"fit_logistic: {len(lg)} LightGlue scores, {len(s1)} stage-1 scores, "
                             f"{len(labels)} labels")
    y = labels.astype(bool).astype(np.float64)
    if not len(y) or y.all() or not y.any():
        raise FusionFitError(f"fit_logistic needs same- and different-individual pairs; got {int(y.sum())} "
                             f"same of {len(y)}")
    x = np.stack([np.ones(len(lg)), np.log1p(lg), np.log1p(s1)], axis=1)
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
