"""A labelled dataset through the protocol: features from the store, every comparable pair scored once,
the report with the run's settings, and its files (``report.json``, ``cmc.png``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.dataset import Annotation, Dataset, DatasetError
from ..data.store import FeatureStore, StoreReport, annotation_features, shortlist_index
from ..engine.config import Config, ConfigError
from ..engine.fusion import TwoStageScores, two_stage_scores
from ..engine.scoring import match_scores
from ..engine.stage1 import Stage1Index, empty_stage1_features
from .plots import plot_cmc
from .protocol import DEFAULT_RANKS, EvaluationReport, evaluate_scores, score_feature_pairs

logger = logging.getLogger("wbia_lightglue")

@dataclass
class DatasetScores:
    """Every comparable pair of a dataset scored once: the input of the evaluation protocol."""

    dataset: Dataset  # the usable annotations (unreadable ones dropped)
    scores: np.ndarray  # n x n (rows = queries), NaN = not compared (other group, or the diagonal)
    groups: Optional[List[str]]
    store_report: StoreReport
    # two-stage mode (shortlist_k > 0): the stage-1 and LightGlue matrices the fused ``scores`` came from
    stage1: Optional[np.ndarray] = None
    lightglue: Optional[np.ndarray] = None  # NaN = pair not matched (outside both shortlists)


def score_dataset(
    data: Dataset,
    config: Config,
    *,
    group_by: Optional[str] = None,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
) -> DatasetScores:
    """Features from the store (extracting what is missing), then the score of every comparable pair."""
    if group_by is not None:
        data.column(group_by)  # fail on a missing column before any extraction
    logger.info("scoring %s: %d annotations (config %s)", data.source, len(data), config.fingerprint)
    stored = annotation_features(data.annotations, FeatureStore(cache_dir), config, progress=progress)
    kept = Dataset(data.source, stored.annotations)
    groups = kept.column(group_by) if group_by is not None else None

    if config["shortlist_k"] == 0:
        scores = score_feature_pairs(stored.features, config, groups=groups, progress=progress)
        return DatasetScores(kept, scores, groups, stored.report)
    check_shortlist_source(config)
    s1 = annotation_features(kept.annotations, FeatureStore(cache_dir), config, progress=progress, kind="stage1")
    by_key = dict(zip(s1.keys, s1.features))
    s1_feats = [by_key.get(key, empty_stage1_features()) for key in stored.keys]
    stage1 = stage1_matrix(s1_feats, config, groups)
    fused, lightglue = two_stage_matrix(stage1, stored.features, config, progress=progress)
    return DatasetScores(kept, fused, groups, stored.report, stage1, lightglue)


def check_shortlist_source(config: Config) -> None:
    """Outside WBIA the stage-1 source can only be the project's own index."""
    if config["shortlist_source"] != "index":
        raise ConfigError(f"config key 'shortlist_source' has value {config['shortlist_source']!r}: HotSpotter "
                          "is WBIA's and only available inside WBIA; use 'index' here")


def stage1_matrix(features: Sequence[Mapping[str, Any]], config: Config,
                  groups: Optional[Sequence[Any]] = None, device: Any = None) -> np.ndarray:
    """Stage-1 scores of every annotation as a query against the others of its group (rows = queries).

    One index per comparison group holds the group's annotations; each query searches it with itself
    excluded (leave-one-out, as a deployed database that does not yet hold the query). NaN = not compared.
    """
    n = len(features)
    scores = np.full((n, n), np.nan)
    members: Dict[Any, List[int]] = {}
    for i in range(n):
        members.setdefault(groups[i] if groups is not None else None, []).append(i)
    for group in members.values():
        keys = [str(i) for i in group]
        index = Stage1Index(config, device=device)
        index.sync(keys, lambda missing: [features[int(k)] for k in missing])
        for i in group:
            others = [j for j in group if j != i]
            scores[i, others] = index.search(features[i], exclude=[str(i)]).ranked([str(j) for j in others])
    return scores


def two_stage_matrix(stage1: np.ndarray, features: Sequence[Mapping[str, Any]], config: Config, *,
                     progress: bool = True,
                     pair_scores: Optional[Callable[[int, List[int]], Sequence[float]]] = None,
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """(fused, lightglue) matrices from a stage-1 matrix: each query row through ``two_stage_scores``.

    LightGlue runs only on each query's shortlist; an unordered pair is matched once and reused in the
    other direction (its score is symmetric up to float rounding). ``pair_scores(i, [j, ...])`` replaces
    the matcher (default: ``match_scores`` on ``features``). NaN = not compared / not matched.
    """
    from tqdm.auto import tqdm

    n = len(stage1)
    cache: Dict[Tuple[int, int], float] = {}

    def matched(i: int, partners: List[int]) -> List[float]:
        todo = [j for j in partners if (min(i, j), max(i, j)) not in cache]
        if todo:
            values = pair_scores(i, todo) if pair_scores else match_scores(features[i], [features[j] for j in todo],
                                                                           config)
            cache.update({(min(i, j), max(i, j)): float(v) for j, v in zip(todo, values)})
        return [cache[(min(i, j), max(i, j))] for j in partners]

    fused, lightglue = np.full((n, n), np.nan), np.full((n, n), np.nan)
    for i in tqdm(range(n), desc="two-stage", unit="query", disable=not progress):
        others = [j for j in range(n) if j != i and not np.isnan(stage1[i, j])]
        if not others:
            continue
        def lightglue_of(pos: List[int], i: int = i, others: List[int] = others) -> List[float]:
            return matched(i, [others[p] for p in pos])

        result: TwoStageScores = two_stage_scores({}, [], stage1[i, others], config, lightglue=lightglue_of)
        fused[i, others] = result.fused
        lightglue[i, [others[p] for p in np.flatnonzero(result.shortlisted)]] = result.lightglue[result.shortlisted]
    return fused, lightglue


def two_stage_query(query: Annotation, database: Sequence[Annotation], store: FeatureStore, config: Config, *,
                    persist_as: Union[str, Path], progress: bool = True,
                    ) -> Tuple[List[Annotation], TwoStageScores, StoreReport]:
    """Two-stage scores of one query photo against a database (``wbia-lightglue identify``).

    Stage 1 uses the database's persisted index (``data.store.shortlist_index``); ALIKED features are
    read or extracted for the query and the shortlisted annotations only. The query photo is left out of
    the database when it is part of it. Returns the database annotations ranked over, their scores, and
    what the store did for the database's stage-1 features.
    """
    check_shortlist_source(config)
    q_s1 = annotation_features([query], store, config, progress=False, on_error="raise", kind="stage1")
    db_s1 = annotation_features(list(database), store, config, progress=progress, kind="stage1")
    index = shortlist_index(store, db_s1, config, persist_as)
    others = [i for i, key in enumerate(db_s1.keys) if key != q_s1.keys[0]]
    if not others:
        raise DatasetError("the database has no usable annotation besides the query")
    annots = [db_s1.annotations[i] for i in others]
    keys = [db_s1.keys[i] for i in others]
    stage1 = index.search(q_s1.features[0], exclude=q_s1.keys).ranked(keys)
    q_feats = annotation_features([query], store, config, progress=False, on_error="raise").features[0]

    def lightglue(positions: List[int]) -> List[float]:
        stored = annotation_features([annots[p] for p in positions], store, config, progress=False)
        by_key = dict(zip(stored.keys, stored.features))
        keys_at = [keys[p] for p in positions]
        usable = [k for k in keys_at if k in by_key]
        values = dict(zip(usable, match_scores(q_feats, [by_key[k] for k in usable], config, progress=progress)))
        return [values.get(k, 0.0) for k in keys_at]  # no ALIKED features: LightGlue scores 0

    return annots, two_stage_scores(q_feats, [], stage1, config, lightglue=lightglue), db_s1.report


def evaluate(scored: DatasetScores, config: Config, ranks: Sequence[int] = DEFAULT_RANKS,
             **meta: Any) -> EvaluationReport:
    """The protocol's report for scored pairs; ``meta`` is recorded with the run's settings."""
    annots = scored.dataset.annotations
    report = evaluate_scores(scored.scores, [a.individual for a in annots], ids=[a.name for a in annots],
                             groups=scored.groups, ranks=ranks, name_score=config["name_score"])
    report.meta.update({
        **meta, "dataset": str(scored.dataset.source), "num_individuals": len(scored.dataset.individuals),
        "config": config.to_dict(), "feature_fingerprint": config.feature_fingerprint,
        "features": {"loaded": scored.store_report.loaded, "extracted": scored.store_report.extracted,
                     "skipped": scored.store_report.failed},
    })
    return report


def save(report: EvaluationReport, output: Union[str, Path], label: str = "") -> None:
    """Write ``output/report.json`` and ``output/cmc.png``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    report.save(output / "report.json")
    plot_cmc({label or "LightGlue": report}, output / "cmc.png", max_rank=max(max(report.cmc), 5))
    logger.info("wrote %s and %s", output / "report.json", output / "cmc.png")
