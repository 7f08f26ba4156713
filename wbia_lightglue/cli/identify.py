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
from typing import Any, Dict, List, Optional, Sequence, Union

from ..data.dataset import Annotation, Dataset, DatasetError
from ..engine.calibration import Calibration
from ..engine.config import ConfigLike, resolve_config
from ..evaluation import html_report
from ..files import atomic_write_text
from ..pipeline import RankedIndividual, calibration_for, rank_individuals, score_query
from ..pipeline.files import store_source
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


def candidate_rows(annotations: Sequence[Annotation], ranking: Sequence[RankedIndividual],
                   raw_scores: Optional[Sequence[float]] = None,
                   calibration: Optional[Calibration] = None) -> List[Candidate]:
    """The ranking's rows for photos: each individual with its best-matching annotation (and its file).

    With a ``calibration`` each row carries the probability of its best annotation's raw LightGlue score
    (``raw_scores``, aligned with ``annotations``).
    """
    rows = []
    for row in ranking:
        annot = annotations[row.best]
        probability = None
        if calibration is not None and raw_scores is not None:
            probability = float(calibration.probability(float(raw_scores[row.best])))
        rows.append(Candidate(row.rank, str(row.individual), annot.name, row.score, str(annot.path), probability))
    return rows


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
    query_annot = Annotation(Path(query), "?")
    if not query_annot.path.is_file():
        what = "is not a regular file" if query_annot.path.exists() else "does not exist"
        raise DatasetError(f"query image {query} {what}")
    source = store_source(database, config, cache_dir, progress=progress)
    scored = score_query(query_annot, source, config)
    if scored.mode == "two_stage":
        logger.info("two-stage: LightGlue on %d of %d annotations", int(scored.matched.sum()), len(scored.candidates))
    calibration = calibration_for(config)
    ranking = rank_individuals(scored.scores.tolist(), [a.individual for a in scored.candidates], config["name_score"])
    db, q = source.database_report, source.query_report
    result = Identification(str(query), candidate_rows(scored.candidates, ranking, scored.lightglue, calibration),
                            loaded=q.loaded + db.loaded, extracted=q.extracted + db.extracted, skipped=db.failed)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result.to_dict(top), indent=2))
    if csv_path is not None:
        _write_csv(csv_path, result.candidates[:top] if top else result.candidates)
    if report_path is not None:
        shown_rows = ranking[:top or DEFAULT_TOP]
        shown_annots = [scored.candidates[row.best] for row in shown_rows]
        shown = [html_report.ShownCandidate(c.rank, c.individual, annot, c.score, c.probability, f)
                 for c, annot, f in zip(result.candidates, shown_annots, source.features(shown_annots))]
        query_shown = html_report.ShownQuery(query_annot, shown, source.features([query_annot], on_error="raise")[0])
        result.report = html_report.identification_report(
            report_path, query_shown, config, database=str(source.database.source), compared=len(scored.candidates),
            skipped=db.failed, calibration=calibration)
    return result


def _write_csv(path: Union[str, Path], candidates: Sequence[Candidate]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "individual", "annotation", "score"])
        writer.writerows([c.rank, c.individual, c.annotation, f"{c.score:.6f}"] for c in candidates)
