"""A labelled dataset through the pipeline and the protocol: features from the store, every annotation
identified against the others of its group (each LightGlue pair scored once), the report with the run's
settings, and its files (``report.json``, ``cmc.png``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Union

import numpy as np

from ..data.dataset import Dataset
from ..data.store import FeatureStore, StoreReport, annotation_features
from ..engine.config import Config, Mode
from ..engine.scoring import match_scores
from ..engine.stage1 import Stage1Index, Stage1Scores, empty_stage1_features
from ..pipeline import SymmetricPairs, score_matrix
from ..pipeline.files import check_stage1_source
from .plots import plot_cmc
from .protocol import DEFAULT_RANKS, EvaluationReport, evaluate_scores, same_group

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
    ray_address: Optional[str] = None,
) -> DatasetScores:
    """Features from the store (extracting what is missing), then every annotation through the pipeline
    against the others of its group (``pipeline.score_matrix``).

    ``ray_address``: the work runs on the Ray cluster there (``distributed.ray_runner.RaySource``): the missing
    features are extracted by its actors into this store, stage 1 searches indexes sharded over its nodes and
    LightGlue's pairs are its tasks; the matrices are those of a local run.
    """
    check_stage1_source(config)  # before any extraction
    if group_by is not None:
        data.column(group_by)  # fail on a missing column before any extraction
    logger.info("scoring %s: %d annotations (config %s)", data.source, len(data), config.fingerprint)
    store = FeatureStore(cache_dir)
    cluster = None
    if ray_address is not None:
        from ..distributed.ray_runner import RaySource

        cluster = RaySource(ray_address, data, None, store, config, progress=progress)
    try:
        return _score_dataset(data, config, store, group_by, progress, cluster)
    finally:
        if cluster is not None:
            cluster.close()


def _score_dataset(data: Dataset, config: Config, store: FeatureStore, group_by: Optional[str], progress: bool,
                   cluster: Any) -> DatasetScores:
    extracted = None
    if cluster is not None:  # what the store lacks comes from the cluster; then everything is loaded from it
        kinds = ("aliked", "stage1") if config.mode == "two_stage" else ("aliked",)
        extracted = cluster.extract(data.annotations, kinds)
    stored = annotation_features(data.annotations, store, config, progress=progress)
    report = stored.report if extracted is None else StoreReport(extracted.loaded, extracted.extracted,
                                                                 stored.report.failed)
    kept = Dataset(data.source, stored.annotations)
    groups = kept.column(group_by) if group_by is not None else None

    def stage1_features() -> List[Mapping[str, Any]]:  # read only in two-stage mode
        s1 = annotation_features(kept.annotations, store, config, progress=progress, kind="stage1")
        by_key = dict(zip(s1.keys, s1.features))
        return [by_key.get(key, empty_stage1_features()) for key in stored.keys]

    source = DatasetSource(stored.features, config, groups=groups, stage1_features=stage1_features,
                           stage1_index=None if cluster is None else cluster.stage1_index,
                           pair_scores=None if cluster is None else cluster.matcher(stored.features))
    matrices = score_matrix(len(kept), source, config, progress=progress)
    return DatasetScores(kept, matrices.scores, groups, report, matrices.stage1, matrices.lightglue)


class DatasetSource:
    """The pipeline's source for an evaluation: item i of a dataset against the others of its group.

    Stage 1 is leave-one-out over one index per group (``stage1_matrix``, its indexes made by ``stage1_index``
    when given), computed on first use from ``stage1_features()`` or given as ``stage1``. LightGlue scores each
    unordered pair once (``pipeline.SymmetricPairs``) with ``match_scores`` on ``features``, or
    ``pair_scores(i, [j, ...])``.
    """

    def __init__(self, features: Sequence[Mapping[str, Any]], config: Config, *,
                 groups: Optional[Sequence[Any]] = None,
                 stage1_features: Optional[Callable[[], Sequence[Mapping[str, Any]]]] = None,
                 stage1: Optional[np.ndarray] = None,
                 stage1_index: Optional[IndexFactory] = None,
                 pair_scores: Optional[Callable[[int, List[int]], Sequence[float]]] = None):
        self.features, self.config, self.groups = features, config, groups
        self._stage1_features, self._stage1, self._stage1_index = stage1_features, stage1, stage1_index
        self._pairs = SymmetricPairs(pair_scores or self._match)

    def _match(self, i: int, partners: List[int]) -> Sequence[float]:
        return match_scores(self.features[i], [self.features[j] for j in partners], self.config)

    @property
    def stage1(self) -> np.ndarray:
        if self._stage1 is None:
            if self._stage1_features is None:
                raise ValueError("two-stage mode needs stage-1 features or a stage-1 matrix")
            self._stage1 = stage1_matrix(self._stage1_features(), self.config, self.groups, index=self._stage1_index)
        return self._stage1

    def candidates(self, query: int, mode: Mode) -> List[int]:
        others = [j for j in range(len(self.features)) if j != query and same_group(self.groups, query, j)]
        if mode == "two_stage":
            others = [j for j in others if not np.isnan(self.stage1[query, j])]
        return others

    def stage1_scores(self, query: int, candidates: Sequence[int]) -> np.ndarray:
        return self.stage1[query, list(candidates)]

    def lightglue_scores(self, query: int, candidates: Sequence[int]) -> List[float]:
        return self._pairs(query, candidates)


class Stage1Search(Protocol):
    """What stage 1 needs of an index: ``Stage1Index.search`` (or a sharded one's, ``ray_runner.ShardedIndex``)."""

    def search(self, features: Mapping[str, Any], exclude: Sequence[str] = ()) -> Stage1Scores:
        ...


IndexFactory = Callable[[List[str], List[Mapping[str, Any]]], Stage1Search]  # (keys, features) -> an index


def stage1_matrix(features: Sequence[Mapping[str, Any]], config: Config,
                  groups: Optional[Sequence[Any]] = None, device: Any = None,
                  index: Optional[IndexFactory] = None) -> np.ndarray:
    """Stage-1 scores of every annotation as a query against the others of its group (rows = queries).

    One index per comparison group holds the group's annotations (a ``Stage1Index``, or ``index(keys,
    features)``); each query searches it with itself excluded (leave-one-out, as a deployed database that does
    not yet hold the query). NaN = not compared.
    """
    n = len(features)
    scores = np.full((n, n), np.nan)
    members: Dict[Any, List[int]] = {}
    for i in range(n):
        members.setdefault(groups[i] if groups is not None else None, []).append(i)
    for group in members.values():
        keys = [str(i) for i in group]
        searched: Stage1Search
        if index is None:
            local = Stage1Index(config, device=device)
            local.sync(keys, lambda missing: [features[int(k)] for k in missing])
            searched = local
        else:
            searched = index(keys, [features[i] for i in group])
        for i in group:
            others = [j for j in group if j != i]
            scores[i, others] = searched.search(features[i], exclude=[str(i)]).ranked([str(j) for j in others])
    return scores


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
