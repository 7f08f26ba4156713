"""``wbia-lightglue identify``: rank a database's individuals by how well they match a photo.

Each database annotation is matched with LightGlue against the query (config ``score``), the
annotation scores are aggregated per individual (config ``name_score``), and individuals are ranked by
that score; each row also names the individual's best-matching annotation. When the config has a
calibration (``wbia-lightglue calibrate``), each row also carries ``probability``: P(same individual)
of that best-matching annotation's raw score. ``--report PATH`` writes a self-contained HTML page: the query,
its top candidates with their photos and the match pictures (evaluation.html_report).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..data.dataset import Annotation, Dataset, DatasetError, load_dataset, natural_key
from ..data.store import FeatureStore, StoreReport, annotation_features
from ..engine.calibration import Calibration, load_calibration
from ..engine.config import Config, ConfigLike, resolve_config
from ..engine.scoring import match_scores, name_scores
from ..evaluation import html_report
from ..evaluation.datasets import two_stage_query
from ..files import atomic_write_text
from .common import check_top, config_from_args, features_line, require_writable

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
    report: Optional[html_report.ReportSummary] = None  # the HTML page, when one was asked for

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


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("identify", parents=[common], help="rank a database's individuals for a photo")
    cmd.add_argument("query", type=Path, metavar="QUERY_IMAGE")
    cmd.add_argument("database", type=Path, metavar="DATABASE", help="folder <individual>/<image> or CSV")
    cmd.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K", help="rows to show/write")
    cmd.add_argument("--json", type=Path, metavar="PATH", help="write the ranking as JSON")
    cmd.add_argument("--csv", type=Path, metavar="PATH", help="write the ranking as CSV")
    cmd.add_argument("--report", type=Path, metavar="HTML",
                     help="write a self-contained HTML page: the top K candidates with photos and match pictures")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_top(args)
    result = main(args.query, args.database, config_from_args(args), top=args.top, cache_dir=args.cache_dir,
                  json_path=args.json, csv_path=args.csv, report_path=args.report, progress=not args.quiet)
    print(features_line(result.loaded, result.extracted, result.skipped))
    print(result.table(args.top))
    if result.report is not None:
        print(f"wrote {result.report.path} ({result.report.size_bytes / 2**20:.1f} MB, "
              f"{result.report.seconds:.1f} s)")


def rank_individuals(
    annot_scores: Sequence[float], annotations: Sequence[Annotation], method: str = "max",
    calibration: Optional[Calibration] = None,
) -> List[Candidate]:
    """Individuals ordered by aggregated score (ties by natural name order, so output is stable).

    With a ``calibration`` each row carries the probability of its best annotation's raw score.
    """
    per_name = name_scores(annot_scores, [a.individual for a in annotations], method)
    best = best_annotations(annot_scores, annotations)
    order = sorted(per_name, key=lambda name: (-per_name[name], natural_key(name)))
    def probability(score: float) -> Optional[float]:
        return None if calibration is None else float(calibration.probability(score))

    return [Candidate(rank, name, annotations[best[name]].name, per_name[name], str(annotations[best[name]].path),
                      probability(annot_scores[best[name]])) for rank, name in enumerate(order, start=1)]


def best_annotations(annot_scores: Sequence[float], annotations: Sequence[Annotation]) -> Dict[str, int]:
    """Per individual, the position of its best-scoring annotation (the first one on a tie)."""
    best: Dict[str, int] = {}
    for pos, (score, annot) in enumerate(zip(annot_scores, annotations)):
        if annot.individual not in best or score > annot_scores[best[annot.individual]]:
            best[annot.individual] = pos
    return best


def main(
    query: Union[str, Path],
    database: Union[str, Path, Dataset],
    config: ConfigLike = None,
    *,
    top: Optional[int] = DEFAULT_TOP,
    cache_dir: Union[str, Path, None] = None,
    json_path: Union[str, Path, None] = None,
    csv_path: Union[str, Path, None] = None,
    report_path: Union[str, Path, None] = None,
    progress: bool = True,
) -> Identification:
    """Rank the individuals of ``database`` (folder or CSV) for the photo ``query``.

    The query photo itself is left out of the database when it is part of it (same file contents and
    crop), so a database photo can be used as a query. ``json_path``/``csv_path`` receive the ``top``
    rows (all rows when ``top`` is None); ``report_path`` an HTML page of the ``top`` candidates
    (DEFAULT_TOP when ``top`` is None), matched again with ``return_matches`` for their pictures.
    """
    config = resolve_config(config)
    require_writable(*(Path(p).parent for p in (json_path, csv_path) if p is not None))
    logger.info("identify %s against %s (config %s)", query, database, config.fingerprint)
    store = FeatureStore(cache_dir)
    query_annot = Annotation(Path(query), "?")
    if not query_annot.path.is_file():
        what = "is not a regular file" if query_annot.path.exists() else "does not exist"
        raise DatasetError(f"query image {query} {what}")
    dataset = database if isinstance(database, Dataset) else load_dataset(database)
    if config["shortlist_k"] > 0:
        annots, feats, scores, q_report, report, calibration = _two_stage(query_annot, dataset, store, config,
                                                                          progress)
    else:
        annots, feats, scores, q_report, report, calibration = _exhaustive(query_annot, dataset, store, config,
                                                                           progress)
    ranking = rank_individuals(scores, annots, config["name_score"], calibration)
    result = Identification(str(query), ranking,
                            loaded=q_report.loaded + report.loaded, extracted=q_report.extracted + report.extracted,
                            skipped=report.failed)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.to_dict(top), indent=2))
    if csv_path is not None:
        _write_csv(csv_path, result.candidates[:top] if top else result.candidates)
    if report_path is not None:
        best = best_annotations(scores, annots)
        shown_annots = [annots[best[c.individual]] for c in ranking[:top or DEFAULT_TOP]]
        shown_feats = _features_of(shown_annots, annots, feats, store, config)
        shown = [html_report.ShownCandidate(c.rank, c.individual, annot, c.score, c.probability, f)
                 for c, annot, f in zip(ranking, shown_annots, shown_feats)]
        q_feats = annotation_features([query_annot], store, config, progress=False, on_error="raise").features[0]
        query_shown = html_report.ShownQuery(query_annot, shown, q_feats)
        result.report = html_report.identification_report(
            report_path, query_shown, config, database=str(dataset.source), compared=len(annots),
            skipped=report.failed, calibration=calibration)
    return result


Scored = Tuple[List[Annotation], Optional[List[Dict[str, Any]]], List[float], StoreReport, StoreReport,
               Optional[Calibration]]


def _exhaustive(query_annot: Annotation, dataset: Dataset, store: FeatureStore, config: Config,
                progress: bool) -> Scored:
    """One-stage mode: LightGlue against every database annotation (raw scores, calibrated when possible)."""
    query_stored = annotation_features([query_annot], store, config, progress=False, on_error="raise")
    stored = annotation_features(dataset.annotations, store, config, progress=progress)
    others = [i for i, key in enumerate(stored.keys) if key != query_stored.keys[0]]
    if len(others) < len(stored.annotations):
        logger.info("the query photo is itself in the database; it is left out of the ranking")
    if not others:
        raise DatasetError(f"database {dataset.source} has no usable annotation besides the query")
    annots, feats = [stored.annotations[i] for i in others], [stored.features[i] for i in others]
    scores = match_scores(query_stored.features[0], feats, config, progress=progress)
    logger.info("query features %s; database: %d loaded, %d extracted", "extracted" if query_stored.report.extracted
                else "loaded", stored.report.loaded, stored.report.extracted)
    return annots, feats, scores, query_stored.report, stored.report, load_calibration(config)


def _two_stage(query_annot: Annotation, dataset: Dataset, store: FeatureStore, config: Config,
               progress: bool) -> Scored:
    """Two-stage mode (``shortlist_k`` > 0): stage-1 index, LightGlue on the shortlist, fused scores."""
    annots, scored, report = two_stage_query(query_annot, dataset.annotations, store, config,
                                             persist_as=dataset.source, progress=progress)
    logger.info("two-stage: LightGlue on %d of %d annotations", int(scored.shortlisted.sum()), len(annots))
    # no calibration: it maps raw LightGlue scores, and fused scores are not on that scale
    return annots, None, scored.fused.tolist(), StoreReport(), report, None


def _features_of(shown: Sequence[Annotation], annots: Sequence[Annotation],
                 feats: Optional[Sequence[Dict[str, Any]]], store: FeatureStore, config: Config) -> List[Any]:
    """ALIKED features of the annotations shown in the report (from memory, else from the store)."""
    if feats is not None:
        position = {id(a): k for k, a in enumerate(annots)}
        return [feats[position[id(a)]] for a in shown]
    stored = annotation_features(list(shown), store, config, progress=False)
    by_annotation = {id(a): f for a, f in zip(stored.annotations, stored.features)}
    return [by_annotation.get(id(a)) for a in shown]


def _write_csv(path: Union[str, Path], candidates: Sequence[Candidate]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "individual", "annotation", "score"])
        writer.writerows([c.rank, c.individual, c.annotation, f"{c.score:.6f}"] for c in candidates)
