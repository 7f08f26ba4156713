"""Fitting score calibrations: a monotone map from a pair's ranking score to P(same individual).

The model, its file and where it is looked up are :mod:`wbia_lightglue.engine.calibration`; a calibration
is tied to the config's ``pair_score_fingerprint`` (exhaustive: the raw LightGlue score's settings;
two-stage: the fused score's). Fitted on labelled annotation pairs by isotonic regression (knots, linear
interpolation) or by a logistic regression on ``log1p(score)`` (its two coefficients, strictly increasing).
Exhaustive scores are symmetric, so each unordered pair counts once; fused scores depend on which photo is
the query (its stage-1 shortlist), so there every directed (query, candidate) pair counts
(``labelled_pairs(..., directed=True)``).

The probability is the *pair* probability under the fitting set's share of same-individual pairs:
a database with a very different mix of individuals shifts it (the ranking never changes).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..engine.calibration import Calibration, CalibrationError
from ..engine.config import Config

logger = logging.getLogger("wbia_lightglue")

METHODS = ("isotonic", "logistic")
LOGISTIC_KNOTS = 64


# ============================================================================ fitting
def fit(scores: Sequence[float], same: Sequence[bool], config: Config, method: str = "isotonic",
        **meta: Any) -> Calibration:
    """Fit the map on labelled pairs: ``scores`` raw pair scores, ``same`` whether the pair is one individual."""
    if method not in METHODS:
        raise CalibrationError(f"calibration method {method!r}; choose from {', '.join(METHODS)}")
    scores, same = np.asarray(scores, float), np.asarray(same, bool)
    if scores.shape != same.shape or scores.ndim != 1:
        raise CalibrationError(f"{scores.shape} scores but {same.shape} labels")
    keep = np.isfinite(scores)
    scores, same = scores[keep], same[keep]
    if same.all() or not same.any():
        raise CalibrationError(f"calibration needs same- and different-individual pairs; got {int(same.sum())} "
                               f"same of {len(same)}")
    coef: Optional[List[float]] = None
    if method == "isotonic":
        x, p = _isotonic_knots(scores, same)
    else:
        x, p, coef = _logistic_knots(scores, same)
    logger.info("calibration (%s) fitted on %d pairs (%d same individual): %d knots", method, len(scores),
                int(same.sum()), len(x))
    return Calibration([float(v) for v in x], [float(v) for v in p], config.pair_score_fingerprint,
                       score_name(config), method, int(len(scores)), int(same.sum()), dict(meta), coef)


def score_name(config: Config) -> str:
    """What a calibration of ``config`` maps: the LightGlue score (exhaustive) or the fused score (two-stage)."""
    if config.mode == "exhaustive":
        return str(config["score"])
    return f"fused {config['fusion']} (stage 1 + {config['score']}, top {config['shortlist_k']})"


def _isotonic_knots(scores: np.ndarray, same: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(scores, same)
    return model.X_thresholds_, np.clip(model.y_thresholds_, 0.0, 1.0)


def _logistic_knots(scores: np.ndarray, same: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[float]]:
    from sklearn.linear_model import LogisticRegression

    feature = np.log1p(np.maximum(scores, 0))[:, None]
    model = LogisticRegression(C=1e4).fit(feature, same)
    if model.coef_[0, 0] < 0:  # a score that predicts *different* individuals: no monotone map to keep
        raise CalibrationError("higher scores predict different individuals on these pairs; not calibrating")
    x = np.unique(np.quantile(scores, np.linspace(0, 1, LOGISTIC_KNOTS)))
    p = model.predict_proba(np.log1p(np.maximum(x, 0))[:, None])[:, 1]
    if model.coef_[0, 0] == 0:
        raise CalibrationError("the scores do not separate same from different individuals on these pairs")
    return x, np.maximum.accumulate(p), [float(model.intercept_[0]), float(model.coef_[0, 0])]


def labelled_pairs(scores: np.ndarray, labels: Sequence[Any], rows: Optional[Sequence[int]] = None, *,
                   directed: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(score, same individual) of each compared pair i < j of a score matrix, both annotations labelled.

    ``rows``: restrict to pairs whose two annotations are both in ``rows`` (e.g. the fitting individuals).
    ``directed``: every compared (i, j), i != j (a matrix whose rows are queries and is not symmetric).
    Unlabelled annotations (None, '', nid <= 0) are left out: the truth of their pairs is unknown.
    """
    from .protocol import is_unlabelled

    scores = np.asarray(scores, float)
    keep = np.zeros(len(labels), bool)
    keep[list(range(len(labels))) if rows is None else list(rows)] = True
    keep &= np.array([not is_unlabelled(lab) for lab in labels], bool)
    i, j = np.triu_indices(len(labels), k=1)
    if directed:
        i, j = np.concatenate([i, j]), np.concatenate([j, i])
    mask = keep[i] & keep[j] & np.isfinite(scores[i, j])
    i, j = i[mask], j[mask]
    same = np.array([labels[a] == labels[b] for a, b in zip(i, j)], bool)
    return scores[i, j], same


def split_by_individual(labels: Sequence[Any], held_out: float = 0.5) -> Tuple[List[int], List[int]]:
    """Deterministic split of annotation indices by individual: (fit rows, held-out rows).

    Individuals are sorted by their label's text and every other one (``held_out=0.5``; in general the
    ones whose position falls in the held-out share) goes to the held-out side, so no individual is on
    both sides. Unlabelled annotations go nowhere.
    """
    from ..data.dataset import natural_key
    from .protocol import is_unlabelled

    names = sorted({str(lab) for lab in labels if not is_unlabelled(lab)}, key=natural_key)
    step = max(1, round(1 / held_out)) if held_out > 0 else 0
    test_names = {name for k, name in enumerate(names) if step and k % step == step - 1}
    fit_rows = [i for i, lab in enumerate(labels) if not is_unlabelled(lab) and str(lab) not in test_names]
    test_rows = [i for i, lab in enumerate(labels) if not is_unlabelled(lab) and str(lab) in test_names]
    return fit_rows, test_rows


# ============================================================================ quality of a calibration
def brier_score(probabilities: Sequence[float], same: Sequence[bool]) -> float:
    """Mean squared error of the probabilities against the 0/1 truth (lower is better; NaN when empty)."""
    p, y = np.asarray(probabilities, float), np.asarray(same, float)
    return float(np.mean((p - y) ** 2)) if len(p) else float("nan")


def reliability(probabilities: Sequence[float], same: Sequence[bool], bins: int = 10) -> Dict[str, List[float]]:
    """Per equal-width probability bin: mean predicted probability, observed frequency, pair count.

    Empty bins are left out. ``ece`` (expected calibration error, count-weighted) is included.
    """
    p, y = np.asarray(probabilities, float), np.asarray(same, float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    out: Dict[str, List[float]] = {"predicted": [], "observed": [], "count": [], "bin_low": []}
    for b in range(bins):
        members = which == b
        if members.any():
            out["predicted"].append(float(p[members].mean()))
            out["observed"].append(float(y[members].mean()))
            out["count"].append(int(members.sum()))
            out["bin_low"].append(b / bins)
    counts = np.asarray(out["count"], float)
    gaps = np.abs(np.asarray(out["predicted"]) - np.asarray(out["observed"]))
    out["ece"] = [float((gaps * counts).sum() / counts.sum())] if counts.sum() else [float("nan")]
    return out


def quality(calibration: Calibration, scores: Sequence[float], same: Sequence[bool]) -> Dict[str, Any]:
    """How well ``calibration`` predicts labelled pairs: Brier score (and the base rate's), reliability, ECE."""
    same = np.asarray(same, bool)
    out: Dict[str, Any] = {"pairs": int(len(same)), "same_pairs": int(same.sum())}
    if len(same) and same.any() and not same.all():
        p = calibration.probability(scores)
        table = reliability(p, same)
        out.update(brier=round(brier_score(p, same), 5),
                   brier_base_rate=round(brier_score(np.full(len(same), same.mean()), same), 5),
                   ece=round(table["ece"][0], 5), reliability=table)
    return out


# ============================================================================ held-out check
def directed_pairs(config: Config) -> bool:
    """Whether ``config``'s ranking scores count every directed (query, candidate) pair: a fused score depends
    on which photo is the query (its stage-1 shortlist); a raw LightGlue score is symmetric (each pair once)."""
    return config.mode == "two_stage"


def default_method(config: Config) -> str:
    """Isotonic for raw LightGlue scores; logistic (strictly increasing: no ties made) for fused scores."""
    return "isotonic" if config.mode == "exhaustive" else "logistic"


def held_out_check(scores: np.ndarray, labels: Sequence[Any], config: Config, method: str = "isotonic",
                   plot: Union[str, Path, None] = None, *, directed: bool = False) -> Dict[str, Any]:
    """Fit on half the individuals, measure Brier/ECE on pairs of the other half (split_by_individual)."""
    fit_rows, test_rows = split_by_individual(labels)
    fit_scores, fit_same = labelled_pairs(scores, labels, fit_rows, directed=directed)
    test_scores, test_same = labelled_pairs(scores, labels, test_rows, directed=directed)
    out: Dict[str, Any] = {"fit_pairs": int(len(fit_same)), "held_out_pairs": int(len(test_same)),
                           "held_out_individuals": len({str(labels[i]) for i in test_rows})}
    try:
        calibration = fit(fit_scores, fit_same, config, method)
    except CalibrationError as exc:
        logger.warning("held-out check skipped: %s", exc)
        return {**out, "skipped": str(exc)}
    prob = calibration.probability(test_scores)
    table = reliability(prob, test_same)
    out.update(brier=brier_score(prob, test_same), ece=table["ece"][0],
               brier_base_rate=brier_score(np.full(len(test_same), fit_same.mean()), test_same))
    if plot is not None and len(test_same):
        from .plots import plot_reliability

        plot_reliability(table, out["brier"], plot, title=f"{method}, held-out individuals ({len(test_same)} pairs)")
    return out
