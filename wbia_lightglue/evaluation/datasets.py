"""A labelled dataset through the protocol: features from the store, every comparable pair scored once,
the report with the run's settings, and its files (``report.json``, ``cmc.png``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from ..data.dataset import Dataset
from ..data.store import FeatureStore, StoreReport, annotation_features
from ..engine.config import Config
from .plots import plot_cmc
from .protocol import DEFAULT_RANKS, EvaluationReport, evaluate_scores, score_feature_pairs

logger = logging.getLogger("wbia_lightglue")

@dataclass
class DatasetScores:
    """Every comparable pair of a dataset scored once: the input of the evaluation protocol."""

    dataset: Dataset  # the usable annotations (unreadable ones dropped)
    scores: np.ndarray  # n x n symmetric, NaN = not compared (other group, or the diagonal)
    groups: Optional[List[str]]
    store_report: StoreReport


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

    scores = score_feature_pairs(stored.features, config, groups=groups, progress=progress)
    return DatasetScores(kept, scores, groups, stored.report)


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
