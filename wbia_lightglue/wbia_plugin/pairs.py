"""LightGlue on annotation pairs: scores, the matches behind them (kept for review images), evaluation.

Registered: ibs methods ``lightglue_match_scores``, ``lightglue_evaluate`` and ``lightglue_calibrate``.
The ``LightGlue`` pair table that stores these scores is registered with its request in :mod:`.request`
(its compute function calls :func:`pair_scores`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import core
from ..engine.calibration import save_calibration
from ..evaluation import calibration
from ..evaluation.protocol import DEFAULT_RANKS, evaluate_scores
from ..pipeline import SymmetricPairs, score_matrix
from .configs import ConfigPath, as_config
from .features import features_with_keys
from .registry import register_ibs_method

logger = logging.getLogger("wbia_lightglue")


@register_ibs_method
def lightglue_match_scores(ibs, qaid: int, daid_list: Sequence[int], config_path: ConfigPath = None) -> List[float]:
    """Raw scores (config ``score``; default: sum of match confidences) of ``qaid`` vs each daid, in order.

    The query is never matched with itself: where it appears among the daids its score is 0.
    """
    config = as_config(config_path)
    daids = list(daid_list)
    return [0.0 if score is None else score for score in _scores_by_daid(ibs, qaid, daids, config)]


def pair_scores(ibs, qaids: Sequence[int], daids: Sequence[int], config: core.Config) -> List[Optional[float]]:
    """Scores of the pairs (qaids[k], daids[k]): one batched call per distinct query (None: not storable)."""
    positions: Dict[int, List[int]] = {}
    for k, qaid in enumerate(qaids):
        positions.setdefault(qaid, []).append(k)
    scores: List[Optional[float]] = [0.0] * len(qaids)
    for qaid, ks in positions.items():
        row = _scores_by_daid(ibs, qaid, [daids[k] for k in ks], config)
        for k, score in zip(ks, row):
            scores[k] = score
    return scores


def _scores_by_daid(ibs, qaid: int, daids: List[int], config: core.Config) -> List[Optional[float]]:
    others = list(dict.fromkeys(d for d in daids if d != qaid))
    by_daid = dict(zip(others, _scores_one_to_many(ibs, qaid, others, config)))
    return [by_daid.get(d, 0.0) for d in daids]


def _scores_one_to_many(ibs, qaid: int, daids: Sequence[int], config: core.Config) -> List[Optional[float]]:
    """One batched LightGlue call: the query against every database annotation.

    None where a side has no usable features right now (its chip failed, or changed while it was
    computed): that pair scores 0 for this request and is not stored, so a later request scores it again.
    The correspondences are kept in the process's match cache, so review images of these pairs (drawn
    by the same job) need no second LightGlue run.
    """
    if not daids:
        return []
    keys, feats = features_with_keys(ibs, [qaid, *daids], config)
    results = core.match_pairs(feats[0], feats[1:], config, return_matches=True)
    scores = [core.pair_score(result, feats[0], db, config) for result, db in zip(results, feats[1:])]
    usable = [core.cacheable(feats[0]) and core.cacheable(db) for db in feats[1:]]
    cache = core.get_match_cache()
    for k in np.argsort(scores, kind="stable"):  # best last: the most recently used survive eviction
        if usable[k]:
            cache.put(_match_key(keys[0], keys[1 + k], config), results[k])
    return [score if ok else None for score, ok in zip(scores, usable)]


def _match_key(query_key: Any, database_key: Any, config: core.Config) -> Tuple[Any, Any, str]:
    return (query_key, database_key, config.match_fingerprint)


def pair_matches(ibs, qaid: int, daid: int, config: core.Config) -> Tuple[List[dict], core.MatchResult, bool]:
    """Features of both annotations and their LightGlue result: from the match cache, else matched now
    (once: the result is cached for the other versions of the review image). Also says which."""
    keys, feats = features_with_keys(ibs, [qaid, daid], config)
    cache = core.get_match_cache()
    key = _match_key(keys[0], keys[1], config)
    result = cache.get(key)
    if result is not None:
        return feats, result, True
    result = core.match_pairs(feats[0], [feats[1]], config, return_matches=True)[0]
    if core.cacheable(feats[0]) and core.cacheable(feats[1]):
        cache.put(key, result)
    return feats, result, False


@register_ibs_method
def lightglue_evaluate(ibs, aid_list: Sequence[int], config_path: ConfigPath = None,
                       ranks: Sequence[int] = DEFAULT_RANKS) -> float:
    """Rank-1 accuracy of 1-vs-all identification over ``aid_list``, labelled by name.

    Uses the project's one evaluation protocol (:mod:`wbia_lightglue.evaluation`): each unordered
    pair is scored once; unnamed annotations (nid <= 0) are never a correct match; queries without
    another sighting are skipped and counted. The full table (CMC, mAP, skipped) is logged.
    """
    config = as_config(config_path)
    aids = list(aid_list)
    nids = ibs.get_annot_nids(aids)
    ibs.lightglue_features(aids, config)  # every annotation's features first, in one extraction batch
    logger.info("lightglue_evaluate: %d annotations, %d names, config %s", len(aids),
                len({n for n in nids if n is not None and n > 0}), config.source or "defaults")

    scores = score_matrix(len(aids), AnnotationSetSource(ibs, aids, config), config).scores
    report = evaluate_scores(scores, nids, ids=aids, ranks=ranks, name_score=config["name_score"])
    logger.info("lightglue_evaluate (aids %s):\n%s", _abbreviate(aids), report.table())
    return report.rank1


@register_ibs_method
def lightglue_calibrate(ibs, aid_list: Sequence[int], config_path: ConfigPath = None,
                        output: Union[str, Path, None] = None) -> str:
    """Fit ranking score -> P(same individual) on the pairs of ``aid_list`` (labels = names) and save it.

    Under the config's mode: two-stage fits the fused score of every directed (query, candidate) pair,
    exhaustive the raw LightGlue score of every pair. Unnamed annotations take part in no pair. The
    calibration is saved beside the config file (``engine.calibration.calibration_path``) unless ``output``
    names a file; returns the path. Once saved, query results (two-stage) and ``lightglue_api_match_scores``
    (exhaustive) carry probabilities.
    """
    config = as_config(config_path)
    aids = list(aid_list)
    nids = ibs.get_annot_nids(aids)
    directed = calibration.directed_pairs(config)
    scores, same = calibration.labelled_pairs(
        score_matrix(len(aids), AnnotationSetSource(ibs, aids, config), config).scores, nids, directed=directed)
    fitted = calibration.fit(scores, same, config, calibration.default_method(config), annotations=len(aids))
    return str(save_calibration(fitted, config, output))


class AnnotationSetSource:
    """The pipeline's source for an evaluation inside WBIA: annotation i of ``aids`` against all the others.

    Stage 1 through ``ibs.lightglue_stage1_scores``; LightGlue on the annotations' features, each unordered
    pair matched once (``pipeline.SymmetricPairs``)."""

    def __init__(self, ibs: Any, aids: List[int], config: core.Config):
        self.ibs, self.aids, self.config = ibs, aids, config
        self.features = ibs.lightglue_features(aids, config)
        self.pairs = SymmetricPairs(lambda i, js: core.match_scores(self.features[i], [self.features[j] for j in js],
                                                                    config))

    def candidates(self, query: int, mode: Any) -> List[int]:
        return [j for j in range(len(self.aids)) if j != query]

    def stage1_scores(self, query: int, candidates: Sequence[int]) -> List[float]:
        return self.ibs.lightglue_stage1_scores(self.aids[query], [self.aids[j] for j in candidates], self.config)

    def lightglue_scores(self, query: int, candidates: Sequence[int]) -> List[float]:
        return self.pairs(query, candidates)


def _abbreviate(items: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
