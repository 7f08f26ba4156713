"""The identification pipeline: one query against a database, in explicit stages.

    plan -> stage 1 -> pairs -> score pairs -> fuse -> rank individuals

* **plan**: ``config.mode`` — ``"exhaustive"`` or ``"two_stage"`` (decided there, once, from ``shortlist_k``);
* **stage 1** (two-stage only): the source's stage-1 score of every candidate (``engine.stage1``: LNBNN over
  the database's FAISS index; inside WBIA optionally HotSpotter), as non-negative evidence;
* **pairs**: the positions LightGlue scores — the shortlist (top ``shortlist_k`` of stage 1) or every candidate.
  A query with no stage-1 evidence at all (every score 0: a tiny, blurred or uniform chip gives stage 1 no
  regions) has no shortlist to take; ranking ties would pick the first ``shortlist_k`` in database order. It
  falls back instead (``QueryScores.fallback``, with a warning): LightGlue over every candidate up to
  ``max(NO_EVIDENCE_MAX, shortlist_k)`` of them (``"exhaustive"``), a fixed-seed sample of that many beyond
  (``"sample"``);
* **score pairs**: the source's LightGlue scores of those pairs (raw sums of match confidences);
* **fuse**: ``engine.fusion.fuse`` of both (two-stage); exhaustive keeps the LightGlue score itself;
* **rank individuals**: name scores (config ``name_score``) ordered best first, ties by natural name order.

A source (``EvidenceSource``) supplies the evidence and knows where it is stored: photos in the content-keyed
feature store (:class:`wbia_lightglue.pipeline.files.StoreSource`), annotations in WBIA's depc tables
(``wbia_plugin``), a labelled dataset's pairs in an evaluation (``evaluation.datasets``). Every caller —
``identify``, ``evaluate``, the demo, WBIA's request — goes through ``score_query`` / ``score_matrix``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Hashable, List, Optional, Protocol, Sequence, Tuple, TypeVar

import numpy as np

from ..engine.calibration import Calibration, load_calibration
from ..engine.config import Config, Mode
from ..engine.fusion import as_evidence, fuse, shortlist_positions
from ..engine.scoring import name_scores

logger = logging.getLogger("wbia_lightglue")

NO_EVIDENCE_MAX = 500  # no stage-1 evidence: LightGlue on every candidate up to this many (or shortlist_k)
NO_EVIDENCE_SEED = 0  # beyond: the same sample of candidate positions every time
K = TypeVar("K")
Q = TypeVar("Q", contravariant=True)


class EvidenceSource(Protocol[Q]):
    """Where one run's evidence comes from. ``Q`` is what a query and a candidate are (a photo, an aid, a row)."""

    def candidates(self, query: Q, mode: Mode) -> Sequence[Any]:
        """The database entries ``query`` is ranked against under ``mode`` (never the query itself)."""

    def stage1_scores(self, query: Q, candidates: Sequence[Any]) -> Sequence[float]:
        """Stage-1 score of each candidate, in order (two-stage only)."""

    def lightglue_scores(self, query: Q, candidates: Sequence[Any]) -> Sequence[float]:
        """Raw LightGlue score of each (query, candidate) pair, in order; 0 where a side has no features."""


@dataclass
class QueryScores(Generic[K]):
    """Every stage's output for one query, aligned with ``candidates``."""

    candidates: List[K]
    mode: Mode
    stage1: Optional[np.ndarray]  # stage-1 evidence (>= 0, finite); None in exhaustive mode
    lightglue: np.ndarray  # raw LightGlue scores; 0 where not matched
    matched: np.ndarray  # bool: the pairs LightGlue scored (the shortlist, or all)
    scores: np.ndarray  # the ranking score: fused (two-stage) or LightGlue's (exhaustive)
    # two-stage with no stage-1 evidence: "exhaustive" (LightGlue on every candidate) or "sample" (a bounded,
    # fixed-seed sample of them) instead of the shortlist; None when the plan ran as configured
    fallback: Optional[str] = None


@dataclass
class RankedIndividual:
    """One row of a ranking: an individual, its name score and its best-scoring candidate."""

    rank: int
    individual: Any
    score: float
    best: int  # position (in the candidates) of the individual's best-scoring annotation


# ---------------------------------------------------------------------------------------------- the stages
def stage1(source: EvidenceSource[Any], query: Any, candidates: Sequence[Any]) -> np.ndarray:
    """Stage 1: every candidate's stage-1 score as evidence (NaN, inf, negatives -> 0)."""
    values = source.stage1_scores(query, candidates) if len(candidates) else []
    evidence = as_evidence(values) if len(values) else np.zeros(len(candidates))
    if len(evidence) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(evidence)} stage-1 scores")
    return evidence


def pairs(mode: Mode, stage1_scores: Optional[np.ndarray], num_candidates: int, config: Config) -> np.ndarray:
    """The candidate positions LightGlue scores: the shortlist (best stage-1 first), all of them, or, when
    stage 1 has no evidence at all, the fallback's (``no_evidence_fallback``)."""
    if mode == "exhaustive" or stage1_scores is None:
        return np.arange(num_candidates)
    fallback = no_evidence_fallback(mode, stage1_scores, config)
    if fallback is not None:
        bound = max(NO_EVIDENCE_MAX, int(config["shortlist_k"]))
        if fallback == "exhaustive":
            return np.arange(num_candidates)
        rng = np.random.default_rng(NO_EVIDENCE_SEED)
        return np.sort(rng.choice(num_candidates, bound, replace=False))
    return shortlist_positions(stage1_scores, int(config["shortlist_k"]))


def no_evidence_fallback(mode: Mode, stage1_scores: Optional[np.ndarray], config: Config) -> Optional[str]:
    """``"exhaustive"`` / ``"sample"`` when two-stage ``stage1_scores`` are all 0 and more candidates than
    ``shortlist_k`` (a shortlist would be the first K in database order); None otherwise."""
    if mode != "two_stage" or stage1_scores is None or len(stage1_scores) <= int(config["shortlist_k"]):
        return None
    if np.any(np.asarray(stage1_scores) > 0):
        return None
    return "exhaustive" if len(stage1_scores) <= max(NO_EVIDENCE_MAX, int(config["shortlist_k"])) else "sample"


def score_pairs(source: EvidenceSource[Any], query: Any, candidates: Sequence[Any],
                positions: np.ndarray) -> np.ndarray:
    """LightGlue on the chosen pairs: raw scores at ``positions``, 0 elsewhere."""
    scores = np.zeros(len(candidates))
    if len(positions):
        values = source.lightglue_scores(query, [candidates[p] for p in positions])
        scores[positions] = np.asarray(values, np.float64)
    return scores


def fused(mode: Mode, lightglue: np.ndarray, stage1_scores: Optional[np.ndarray], matched: np.ndarray,
          config: Config) -> np.ndarray:
    """The ranking score of each candidate: ``engine.fusion.fuse`` (two-stage) or LightGlue's own (exhaustive)."""
    if mode == "exhaustive" or stage1_scores is None:
        return lightglue.copy()
    return fuse(lightglue, stage1_scores, matched, config)


def score_query(query: Any, source: EvidenceSource[Any], config: Config) -> QueryScores[Any]:
    """plan -> stage 1 -> pairs -> score pairs -> fuse for one query (see the module docstring)."""
    mode = config.mode
    candidates = list(source.candidates(query, mode))
    s1 = stage1(source, query, candidates) if mode == "two_stage" else None
    fallback = no_evidence_fallback(mode, s1, config)
    positions = pairs(mode, s1, len(candidates), config)
    if fallback is not None:
        logger.warning("two-stage: query %s has no stage-1 evidence (no stage-1 features, or none voted); "
                       "LightGlue on %s %d of %d candidates instead of a shortlist", _label(query),
                       "all" if fallback == "exhaustive" else "a fixed sample of", len(positions), len(candidates))
    lightglue = score_pairs(source, query, candidates, positions)
    matched = np.zeros(len(candidates), bool)
    matched[positions] = True
    if mode == "two_stage":
        logger.debug("two-stage: LightGlue on %d of %d candidates", len(positions), len(candidates))
    return QueryScores(candidates, mode, s1, lightglue, matched, fused(mode, lightglue, s1, matched, config),
                       fallback)


def _label(query: Any) -> str:
    """A query as a warning names it: a photo's path, or the query itself (an aid, a row number)."""
    return str(getattr(query, "path", query))


def rank_individuals(scores: Sequence[float], individuals: Sequence[Hashable],
                     method: str = "max") -> List[RankedIndividual]:
    """Individuals ordered by their name score (``engine.scoring.name_scores``), best first.

    Ties are broken by natural name order ("ind2" before "ind10"), so the output is stable; ``best`` is the
    position of the individual's best-scoring candidate (the first one on a tie).
    """
    from ..data.dataset import natural_key

    per_name = name_scores(scores, list(individuals), method)
    best: Dict[Hashable, int] = {}
    for pos, (score, name) in enumerate(zip(scores, individuals)):
        if name not in best or score > scores[best[name]]:
            best[name] = pos
    order = sorted(per_name, key=lambda name: (-per_name[name], natural_key(str(name))))
    return [RankedIndividual(rank, name, float(per_name[name]), best[name]) for rank, name in enumerate(order, 1)]


def calibration_for(config: Config) -> Optional[Calibration]:
    """The calibration that turns this run's pair ranking scores into P(same individual), if there is one.

    Raw LightGlue scores (exhaustive) and fused scores (two-stage) are on different scales: a calibration is
    tied to the config's ``pair_score_fingerprint`` — the user's file beside the config
    (``wbia-lightglue calibrate``), else the one shipped for the built-in defaults (``engine.calibration``).
    """
    return load_calibration(config)


# ---------------------------------------------------------------------------------------------- many queries
class SymmetricPairs:
    """LightGlue scores of unordered pairs, each matched once and reused in the other direction.

    ``match(i, [j, ...])`` scores item i against the items j in one batched call; a pair's score is
    symmetric up to float rounding, so the first direction computed is kept.
    """

    def __init__(self, match: Callable[[int, List[int]], Sequence[float]]):
        self._match = match
        self._scores: Dict[Tuple[int, int], float] = {}

    def __call__(self, i: int, partners: Sequence[int]) -> List[float]:
        todo = [j for j in partners if (min(i, j), max(i, j)) not in self._scores]
        if todo:
            self._scores.update({(min(i, j), max(i, j)): float(v) for j, v in zip(todo, self._match(i, todo))})
        return [self._scores[(min(i, j), max(i, j))] for j in partners]


@dataclass
class ScoreMatrices:
    """Every item of a set as a query against its candidates (rows = queries); NaN = not compared."""

    scores: np.ndarray  # the ranking scores
    stage1: Optional[np.ndarray]  # two-stage mode: the stage-1 evidence
    lightglue: Optional[np.ndarray]  # two-stage mode: raw LightGlue scores, NaN = not matched


def score_matrix(n: int, source: EvidenceSource[int], config: Config, *, progress: bool = True) -> ScoreMatrices:
    """``score_query`` for each of the items 0..n-1 (candidates are item numbers too)."""
    from tqdm.auto import tqdm

    two_stage = config.mode == "two_stage"
    scores = np.full((n, n), np.nan)
    stage1_m = np.full((n, n), np.nan) if two_stage else None
    lightglue_m = np.full((n, n), np.nan) if two_stage else None
    for i in tqdm(range(n), desc="two-stage" if two_stage else "1-vs-all", unit="query", disable=not progress):
        result = score_query(i, source, config)
        if not result.candidates:
            continue
        cols = np.asarray(result.candidates, np.int64)
        scores[i, cols] = result.scores
        if stage1_m is not None and lightglue_m is not None and result.stage1 is not None:
            stage1_m[i, cols] = result.stage1
            lightglue_m[i, cols[result.matched]] = result.lightglue[result.matched]
    return ScoreMatrices(scores, stage1_m, lightglue_m)
