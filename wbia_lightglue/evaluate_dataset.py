"""Evaluate identification on a labelled dataset: 1-vs-all CMC and mAP with evaluation.py's protocol.

Writes ``<output>/report.json`` (summary, per-query rows, run metadata) and ``<output>/cmc.png``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np

from .core import LightGlueConfig, resolve_config
from .dataset import Dataset, limit_individuals, load_dataset
from .evaluation import DEFAULT_RANKS, EvaluationReport, evaluate_scores, plot_cmc, score_feature_pairs
from .store import FeatureStore, StoreReport, annotation_features

logger = logging.getLogger("wbia_lightglue")

DEFAULT_OUTPUT = Path("wbia-lightglue-evaluation")


@dataclass
class DatasetScores:
    """Every comparable pair of a dataset scored once: the input of the evaluation protocol."""

    dataset: Dataset  # the usable annotations (unreadable ones dropped)
    scores: np.ndarray  # n x n symmetric, NaN = not compared (other group, or the diagonal)
    groups: Optional[List[str]]
    store_report: StoreReport


def score_dataset(
    data: Dataset,
    config: LightGlueConfig,
    *,
    group_by: Optional[str] = None,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
) -> DatasetScores:
    """Features from the store (extracting what is missing), then the score of every comparable pair."""
    if group_by is not None:
        data.column(group_by)  # fail on a missing column before any extraction
    logger.info("scoring %s: %d annotations (config %s)", data.source, len(data), config.fingerprint)
    annots, feats, _, store_report = annotation_features(data.annotations, FeatureStore(cache_dir), config,
                                                         progress=progress)
    kept = Dataset(data.source, annots)
    groups = kept.column(group_by) if group_by is not None else None

    scores = score_feature_pairs(feats, config, groups=groups, progress=progress)
    return DatasetScores(kept, scores, groups, store_report)


def evaluate(scored: DatasetScores, config: LightGlueConfig, ranks: Sequence[int] = DEFAULT_RANKS,
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


def main(
    dataset: Union[str, Path, Dataset],
    output: Union[str, Path] = DEFAULT_OUTPUT,
    config: Union[LightGlueConfig, Mapping, str, Path, None] = None,
    *,
    limit: Optional[int] = None,
    seed: Optional[int] = None,
    group_by: Optional[str] = None,
    ranks: Sequence[int] = DEFAULT_RANKS,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
) -> EvaluationReport:
    """Score every comparable pair of ``dataset`` once, evaluate every answerable query, write the outputs.

    Args:
        limit: keep only this many individuals (the first in natural order, or a choice seeded by ``seed``).
        group_by: an attribute (CSV column) whose value must match for two annotations to be compared,
            e.g. ``side`` for flank photos.
    """
    config = resolve_config(config)
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    data = limit_individuals(data, limit, seed)
    scored = score_dataset(data, config, group_by=group_by, cache_dir=cache_dir, progress=progress)
    report = evaluate(scored, config, ranks, group_by=group_by, limit_individuals=limit, seed=seed)
    save(report, output, label=data.source.stem)
    return report
