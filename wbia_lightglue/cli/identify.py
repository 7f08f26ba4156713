"""``wbia-lightglue identify``: rank a database's individuals by how well they match a photo.

The query goes through the pipeline (``pipeline.score_query``) under the config's mode: by default two-stage
(stage 1 ranks the whole database, LightGlue matches its top ``shortlist_k``, the two scores are fused);
``shortlist_k: 0`` matches every database annotation with LightGlue (exhaustive). Annotation scores are
aggregated per individual (config ``name_score``) and individuals ranked by that score; each row also names the
individual's best-matching annotation, its raw LightGlue score, and ``probability``: P(same individual) of
that annotation's ranking score, from the calibration of these settings (``wbia-lightglue calibrate``, or
the one shipped for the defaults). ``--report PATH`` writes a self-contained HTML page: the query, its top
candidates with their photos and the match pictures (evaluation.html_report).

With ``--output DIR``, or when QUERIES is a folder or a CSV, the batch form runs instead (``cli.batch``):
every photo ranked against one loaded database, resumable, with ``rankings.csv``/``.json`` and one report.
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
from ..engine.config import ConfigLike, resolve_config
from ..evaluation import html_report
from ..files import atomic_write_text, printable
from ..pipeline import calibration_for, rank_individuals, score_query
from ..pipeline.batch import Candidate, candidate_rows
from ..pipeline.files import check_stage1_source, store_source
from . import batch
from .common import (
    UsageError,
    add_ray_option,
    check_ray,
    check_top,
    config_from_args,
    features_line,
    require_writable,
)

logger = logging.getLogger("wbia_lightglue")

DEFAULT_TOP = 10


@dataclass
class Identification:
    query: str
    candidates: List[Candidate]  # best first, all individuals (``top`` limits only what is shown/written)
    loaded: int = 0  # features read from the store (query included)
    extracted: int = 0  # features computed in this run
    skipped: List[str] = field(default_factory=list)
    report: Optional[html_report.ReportSummary] = None  # the HTML page, when one was asked for
    mode: str = "exhaustive"
    matched: int = 0  # annotations LightGlue scored
    compared: int = 0  # annotations ranked
    fallback: Optional[str] = None  # two-stage without stage-1 evidence (pipeline QueryScores.fallback)

    def plan_line(self) -> Optional[str]:
        """A line saying that the query fell back from the shortlist (None when it did not)."""
        if self.fallback is None:
            return None
        how = "every" if self.fallback == "exhaustive" else "a fixed sample of"
        return (f"stage 1: no evidence for this query (no stage-1 features); LightGlue on {how} annotation "
                f"({self.matched} of {self.compared}) instead of a shortlist [fallback: {self.fallback}]")

    def table(self, top: Optional[int] = DEFAULT_TOP) -> str:
        rows = self.candidates[:top] if top else self.candidates
        names = {id(c): (printable(c.individual), printable(c.annotation)) for c in rows}  # never a control char
        width = max([len("individual")] + [len(names[id(c)][0]) for c in rows])
        calibrated = any(c.probability is not None for c in rows)
        prob = (lambda c: f"  {c.probability:>11.3f}") if calibrated else (lambda c: "")
        lines = [f"{'rank':>4}  {'individual':<{width}}  {'score':>9}{'  probability' if calibrated else ''}"
                 "  best annotation"]
        lines += [f"{c.rank:>4}  {names[id(c)][0]:<{width}}  {c.score:>9.3f}{prob(c)}  {names[id(c)][1]}" for c in rows]
        return "\n".join(lines)

    def to_dict(self, top: Optional[int] = None) -> Dict[str, Any]:
        rows = self.candidates[:top] if top else self.candidates
        return {"query": printable(self.query), "candidates": [asdict(c) for c in rows],
                "features": {"loaded": self.loaded, "extracted": self.extracted, "skipped": self.skipped},
                "mode": self.mode, "compared": self.compared, "matched": self.matched, "fallback": self.fallback}


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("identify", parents=[common],
                              help="rank a database's individuals for a photo, or for a batch of photos")
    cmd.add_argument("query", type=Path, metavar="QUERIES",
                     help="a photo; or (batch, with --output) a folder of photos at any depth or a CSV with a "
                          "path column")
    cmd.add_argument("database", type=Path, metavar="DATABASE", help="folder <individual>/<image> or CSV")
    cmd.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K", help="rows to show/write per query")
    cmd.add_argument("--json", type=Path, metavar="PATH", help="one photo: write the ranking as JSON")
    cmd.add_argument("--csv", type=Path, metavar="PATH", help="one photo: write the ranking as CSV")
    cmd.add_argument("--report", type=Path, metavar="HTML",
                     help="one photo: write a self-contained HTML page: the top K candidates with photos and "
                          "match pictures")
    cmd.add_argument("--output", type=Path, metavar="DIR",
                     help="batch: write DIR/rankings.csv, rankings.json, failed.csv and report.html; a rerun "
                          "with the same DIR keeps the queries already finished (DIR/journal.jsonl)")
    cmd.add_argument("--report-queries", type=int, metavar="N",
                     help=f"batch: queries drawn in DIR/report.html, each with its top {html_report.DEFAULT_TOP} "
                          f"candidates (default {html_report.DEFAULT_MAX_QUERIES}; 0: the table only)")
    add_ray_option(cmd, "batch: run")
    cmd.set_defaults(func=run)


def is_batch(args: argparse.Namespace) -> bool:
    """The batch form: --output given, or QUERIES is a folder or a CSV (UsageError when --output is missing)."""
    many = args.query.is_dir() or args.query.suffix.lower() == ".csv"
    if args.output is None:
        if many:
            raise UsageError(f"QUERIES {args.query} is a {'folder' if args.query.is_dir() else 'CSV'}: give "
                             "--output DIR for the batch's rankings (see wbia-lightglue identify --help)")
        if args.report_queries is not None:
            raise UsageError("--report-queries is for the batch form: give --output DIR")
        if args.ray is not None:
            raise UsageError("--ray is for the batch form: give --output DIR")
        return False
    single = [flag for flag, value in (("--json", args.json), ("--csv", args.csv), ("--report", args.report))
              if value is not None]
    if single:
        raise UsageError(f"{', '.join(single)} are for one photo without --output; the batch writes "
                         "DIR/rankings.json, DIR/rankings.csv and DIR/report.html")
    if args.report_queries is not None and args.report_queries < 0:
        raise UsageError(f"--report-queries must be 0 or more, got {args.report_queries}")
    return True


def run(args: argparse.Namespace) -> None:
    check_top(args)
    if is_batch(args):
        run_batch(args)
        return
    result = main(args.query, args.database, config_from_args(args), top=args.top, cache_dir=args.cache_dir,
                  json_path=args.json, csv_path=args.csv, report_path=args.report, progress=not args.quiet)
    print(features_line(result.loaded, result.extracted, result.skipped))
    if result.plan_line() is not None:
        print(result.plan_line())
    print(result.table(args.top))
    if result.report is not None:
        print(f"wrote {result.report.path} ({result.report.size_bytes / 2**20:.1f} MB, "
              f"{result.report.seconds:.1f} s)")


def run_batch(args: argparse.Namespace) -> None:
    check_ray(args)
    report_queries = html_report.DEFAULT_MAX_QUERIES if args.report_queries is None else args.report_queries
    result = batch.main(args.query, args.database, args.output, config_from_args(args), top=args.top,
                        cache_dir=args.cache_dir, report_queries=report_queries, progress=not args.quiet,
                        ray_address=args.ray)
    print(result.features_line())
    print(result.summary())
    written = ", ".join(str(args.output / name) for name in (batch.RANKINGS_CSV, batch.RANKINGS_JSON,
                                                              batch.FAILED_CSV))
    page = result.report
    if page is not None:
        written += (f" and {page.path} ({page.size_bytes / 2**20:.1f} MB, {page.shown} of {page.num_queries} "
                    f"ranked queries drawn, {page.seconds:.1f} s)")
    print(f"wrote {written}")


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
    check_stage1_source(config)  # settings first: nothing is read, extracted or created under a bad one
    require_writable(*(Path(p).parent for p in (json_path, csv_path, report_path) if p is not None))
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
    result = Identification(str(query), candidate_rows(scored.candidates, ranking, scored, calibration),
                            loaded=q.loaded + db.loaded, extracted=q.extracted + db.extracted, skipped=db.failed,
                            mode=scored.mode, matched=int(scored.matched.sum()), compared=len(scored.candidates),
                            fallback=scored.fallback)
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
            skipped=db.failed, calibration=calibration, plan=result.plan_line())
    return result


def _write_csv(path: Union[str, Path], candidates: Sequence[Candidate]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "individual", "annotation", "score", "probability"])
        writer.writerows([c.rank, printable(c.individual), printable(c.annotation), f"{c.score:.6f}",
                          "" if c.probability is None else f"{c.probability:.4f}"] for c in candidates)
