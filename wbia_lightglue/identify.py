"""Identify one photo: rank a database's individuals by how well they match the query.

Each database annotation is matched with LightGlue against the query (config ``score``), the
annotation scores are aggregated per individual (config ``name_score``), and individuals are ranked by
that score; each row also names the individual's best-matching annotation. When the config has a
calibration (``wbia-lightglue calibrate``), each row also carries ``probability``: P(same individual)
of that best-matching annotation's raw score.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .calibration import load_calibration
from .core import LightGlueConfig, match_scores, name_scores, resolve_config
from .dataset import Annotation, Dataset, DatasetError, load_dataset, natural_key
from .store import FeatureStore, annotation_features

logger = logging.getLogger("wbia_lightglue")

DEFAULT_TOP = 10


@dataclass
class Candidate:
    """One row of the ranking."""

    rank: int
    individual: str
    annotation: str  # the individual's best-matching annotation (short name)
    score: float
    path: str = ""  # that annotation's image file
    probability: Optional[float] = None  # calibrated P(same individual) of that annotation's score


@dataclass
class Identification:
    query: str
    candidates: List[Candidate]  # best first, all individuals (``top`` limits only what is shown/written)
    loaded: int = 0  # features read from the store (query included)
    extracted: int = 0  # features computed in this run
    skipped: List[str] = field(default_factory=list)

    def table(self, top: Optional[int] = DEFAULT_TOP) -> str:
        rows = self.candidates[:top] if top else self.candidates
        width = max([len("individual")] + [len(c.individual) for c in rows])
        calibrated = any(c.probability is not None for c in rows)
        prob = (lambda c: f"  {c.probability:>11.3f}") if calibrated else (lambda c: "")
        lines = [f"{'rank':>4}  {'individual':<{width}}  {'score':>9}{'  probability' if calibrated else ''}"
                 "  best annotation"]
        lines += [f"{c.rank:>4}  {c.individual:<{width}}  {c.score:>9.3f}{prob(c)}  {c.annotation}" for c in rows]
        return "\n".join(lines)

    def to_dict(self, top: Optional[int] = None) -> Dict[str, Any]:
        rows = self.candidates[:top] if top else self.candidates
        return {"query": self.query, "candidates": [asdict(c) for c in rows],
                "features": {"loaded": self.loaded, "extracted": self.extracted, "skipped": self.skipped}}


def rank_individuals(
    annot_scores: Sequence[float], annotations: Sequence[Annotation], method: str = "max", calibration=None,
) -> List[Candidate]:
    """Individuals ordered by aggregated score (ties by natural name order, so output is stable).

    With a ``calibration`` each row carries the probability of its best annotation's raw score.
    """
    per_name = name_scores(annot_scores, [a.individual for a in annotations], method)
    best: Dict[str, tuple] = {}
    for score, annot in zip(annot_scores, annotations):
        if annot.individual not in best or score > best[annot.individual][0]:
            best[annot.individual] = (score, annot)
    order = sorted(per_name, key=lambda name: (-per_name[name], natural_key(name)))
    prob = (lambda s: None) if calibration is None else (lambda s: float(calibration.probability(s)))
    return [Candidate(rank, name, best[name][1].name, per_name[name], str(best[name][1].path), prob(best[name][0]))
            for rank, name in enumerate(order, start=1)]


def main(
    query: Union[str, Path],
    database: Union[str, Path, Dataset],
    config: Union[LightGlueConfig, Mapping, str, Path, None] = None,
    *,
    top: Optional[int] = DEFAULT_TOP,
    cache_dir: Union[str, Path, None] = None,
    json_path: Union[str, Path, None] = None,
    csv_path: Union[str, Path, None] = None,
    progress: bool = True,
) -> Identification:
    """Rank the individuals of ``database`` (folder or CSV) for the photo ``query``.

    The query photo itself is left out of the database when it is part of it (same file contents and
    crop), so a database photo can be used as a query. ``json_path``/``csv_path`` receive the ``top``
    rows (all rows when ``top`` is None).
    """
    config = resolve_config(config)
    logger.info("identify %s against %s (config %s)", query, database, config.fingerprint)
    store = FeatureStore(cache_dir)
    query_annot = Annotation(Path(query), "?")
    if not query_annot.path.is_file():
        raise DatasetError(f"query image {query} does not exist")
    dataset = database if isinstance(database, Dataset) else load_dataset(database)
    _, q_feats, q_keys, q_report = annotation_features([query_annot], store, config, progress=False, strict=True)
    annots, feats, keys, report = annotation_features(dataset.annotations, store, config, progress=progress)
    others = [i for i, key in enumerate(keys) if key != q_keys[0]]
    if len(others) < len(annots):
        logger.info("the query photo is itself in the database; it is left out of the ranking")
    if not others:
        raise DatasetError(f"database {dataset.source} has no usable annotation besides the query")
    annots, feats = [annots[i] for i in others], [feats[i] for i in others]
    scores = match_scores(q_feats[0], feats, config, progress=progress)
    ranking = rank_individuals(scores, annots, config["name_score"], load_calibration(config))
    result = Identification(str(query), ranking,
                            loaded=q_report.loaded + report.loaded, extracted=q_report.extracted + report.extracted,
                            skipped=report.failed)
    logger.info("query features %s; database: %d loaded, %d extracted", "extracted" if q_report.extracted
                else "loaded", report.loaded, report.extracted)
    if json_path is not None:
        _write(json_path, json.dumps(result.to_dict(top), indent=2))
    if csv_path is not None:
        _write_csv(csv_path, result.candidates[:top] if top else result.candidates)
    return result


def _write(path: Union[str, Path], text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _write_csv(path: Union[str, Path], candidates: Sequence[Candidate]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "individual", "annotation", "score"])
        writer.writerows([c.rank, c.individual, c.annotation, f"{c.score:.6f}"] for c in candidates)
