"""``wbia-lightglue identify QUERIES DATABASE --output DIR``: many photos against one database, resumable.

QUERIES is one photo, a folder of photos (any depth) or a CSV with a ``path`` column
(``data.dataset.load_queries``). The database's features, its stage-1 index and the models are loaded once
(``pipeline.batch.identify_batch`` over one ``StoreSource``). Written into DIR:

* ``rankings.csv``: ``query,rank,individual,score,annotation``, the top ``--top`` rows of each ranked query
  (``score`` is the ranking score; ``annotation`` the individual's best-matching photo);
* ``rankings.json``: every query in order with its candidates (file paths, P(same individual) when a
  calibration exists) or its error, and the run's counts;
* ``failed.csv``: ``query,path,error`` of each query photo that could not be identified;
* ``report.html``: one page, the first ``--report-queries`` ranked queries drawn with their top candidates
  (at most ``html_report.DEFAULT_TOP`` each), every query listed;
* ``journal.jsonl``: the finished queries (``pipeline.batch.Journal``). Run again with the same DIR and they
  are kept, not redone; a killed run loses at most the query in flight.

With ``--ray ADDRESS`` the work runs on a Ray cluster (``distributed.ray_runner.RaySource``); this module still
writes every output and the journal. rankings.csv/json and failed.csv are rewritten atomically every
``CHECKPOINT_SECONDS`` and at the end. The run succeeds when the batch completed, also with failed queries (they
are counted in the summary); it fails (exit 1) only when no query could be identified.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..data.dataset import Annotation, Dataset, load_queries
from ..engine.config import Config, ConfigLike, resolve_config
from ..evaluation import html_report
from ..files import atomic_write_text, printable, remove_stale_temp_files
from ..pipeline import calibration_for
from ..pipeline.batch import (
    CHECKPOINT_SECONDS,
    BatchSource,
    Journal,
    QueryRanking,
    database_fingerprint,
    identify_batch,
)
from ..pipeline.files import check_stage1_source, store_source
from .common import features_line, require_writable

logger = logging.getLogger("wbia_lightglue")

RANKINGS_CSV, RANKINGS_JSON, FAILED_CSV, REPORT, JOURNAL = (
    "rankings.csv", "rankings.json", "failed.csv", "report.html", "journal.jsonl")
STALE_TEMP_SECONDS = 600  # an atomic-write temporary file this old in DIR was left by a killed run


class NothingIdentified(RuntimeError):
    """Not one query of the batch could be identified (exit 1); the outputs name each error."""


@dataclass
class BatchRun:
    """What a batch did (the CLI prints it)."""

    output: Path
    results: List[QueryRanking]  # every query, in order
    loaded: int = 0  # features read from the store (database and queries)
    extracted: int = 0  # features computed in this run
    skipped: Optional[List[str]] = None  # database photos that could not be used
    report: Optional[html_report.ReportSummary] = None

    @property
    def failed(self) -> List[QueryRanking]:
        return [r for r in self.results if r.error is not None]

    @property
    def resumed(self) -> int:
        return sum(r.resumed for r in self.results)

    def features_line(self) -> str:
        if not (self.loaded or self.extracted or self.skipped):  # no query needed it
            return "database features: not read (every query was kept from the journal)"
        return "database " + features_line(self.loaded, self.extracted, self.skipped or [])

    def summary(self) -> str:
        ranked = len(self.results) - len(self.failed)
        line = (f"queries: {len(self.results)}, {ranked} ranked ({ranked - self.resumed} computed, "
                f"{self.resumed} kept from the journal), {len(self.failed)} failed")
        if self.failed:
            line += f" (see {self.output / FAILED_CSV})"
            line += "".join(f"\n  {printable(r.query)}: {printable(r.error or '')}" for r in self.failed[:10])
            line += f"\n  ... and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
        return line


def main(
    queries: Union[str, Path, Dataset],
    database: Union[str, Path, Dataset],
    output: Union[str, Path],
    config: ConfigLike = None,
    *,
    top: int = 10,
    cache_dir: Union[str, Path, None] = None,
    report_queries: int = html_report.DEFAULT_MAX_QUERIES,
    progress: bool = True,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    ray_address: Optional[str] = None,
) -> BatchRun:
    """Rank ``database``'s individuals for every photo of ``queries``; write the outputs into ``output``.

    ``ray_address``: the work runs on the Ray cluster there (``distributed.ray_runner``); the outputs and the
    journal are written here, by the same code. Raises NothingIdentified (after writing the outputs) when every
    query failed.
    """
    config = resolve_config(config)
    check_stage1_source(config)  # settings first: no output folder is made under a bad one
    output = Path(output)
    require_writable(output)
    remove_stale_temp_files(output, STALE_TEMP_SECONDS)
    query_set = queries if isinstance(queries, Dataset) else load_queries(queries)
    source: BatchSource
    if ray_address is None:
        source = store_source(database, config, cache_dir, progress=progress, pair_progress=False)
    else:
        from ..distributed.ray_runner import ray_source

        source = ray_source(ray_address, database, query_set, config, cache_dir, progress=progress)
    try:
        return _run(query_set, source, output, config, top, report_queries, progress, checkpoint_seconds)
    finally:
        source.close()


def _run(query_set: Dataset, source: BatchSource, output: Path, config: Config, top: int, report_queries: int,
         progress: bool, checkpoint_seconds: float) -> BatchRun:
    logger.info("identify %d queries from %s against %s (config %s) into %s", len(query_set), query_set.source,
                source.database.source, config.fingerprint, output)
    meta = _meta(query_set, source, top)

    def checkpoint(results: List[QueryRanking]) -> None:
        _write_rankings(output, results, {**meta, "finished": False}, source)

    # the journal's lock is held until every output is written: a second run on DIR is refused meanwhile
    with Journal(output / JOURNAL, config.ranking_fingerprint, database_fingerprint(source.database)) as journal:
        if len(journal):
            logger.info("journal %s: %d finished queries of this config and database", journal.path, len(journal))
        results = identify_batch(query_set, source, config, top=top, journal=journal, progress=progress,
                                 checkpoint=checkpoint, checkpoint_seconds=checkpoint_seconds)
        _write_rankings(output, results, {**meta, "finished": True}, source)
        db = source.database_report
        run = BatchRun(output, results, loaded=db.loaded, extracted=db.extracted, skipped=db.failed)
        ranked = [(annot, r) for annot, r in zip(query_set.annotations, results) if r.error is None]
        if not ranked:
            raise NothingIdentified(f"none of the {len(results)} queries could be identified (first: "
                                    f"{results[0].error}); see {output / FAILED_CSV}")
        run.report = html_report.batch_report(
            output / REPORT, _shown_queries(ranked, source, min(top, html_report.DEFAULT_TOP)), config,
            database=str(source.database.source), failed=[(r.query, r.error or "") for r in run.failed],
            max_queries=report_queries, skipped=db.failed, calibration=calibration_for(config),
            store=source.store, title=query_set.source.name, progress=progress)
    return run


def _meta(queries: Dataset, source: BatchSource, top: int) -> Dict[str, Any]:
    config = source.config
    return {"queries": str(queries.source), "database": str(source.database.source), "top": top,
            "mode": config.mode, "config_fingerprint": config.fingerprint,
            "ranking_fingerprint": config.ranking_fingerprint}


def _write_rankings(output: Path, results: List[QueryRanking], meta: Dict[str, Any], source: BatchSource) -> None:
    """rankings.csv, rankings.json and failed.csv from the results so far, each written atomically."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["query", "rank", "individual", "score", "annotation", "probability"])
    writer.writerows([printable(r.query), c.rank, printable(c.individual), f"{c.score:.6f}", printable(c.annotation),
                      "" if c.probability is None else f"{c.probability:.4f}"]
                     for r in results for c in r.candidates)
    failures = io.StringIO()
    writer = csv.writer(failures, lineterminator="\n")
    writer.writerow(["query", "path", "error"])
    writer.writerows([printable(r.query), printable(r.path), printable(r.error or "")]
                     for r in results if r.error is not None)
    failed = sum(r.error is not None for r in results)
    resumed = sum(r.resumed for r in results)
    db = source.database_report
    document = {**meta, "num_queries": len(results), "ranked": len(results) - failed, "failed": failed,
                "resumed": resumed, "computed": len(results) - failed - resumed,
                "features": {"loaded": db.loaded, "extracted": db.extracted, "skipped": db.failed},
                "results": [r.to_dict() for r in results]}
    atomic_write_text(output / RANKINGS_CSV, table.getvalue())
    atomic_write_text(output / RANKINGS_JSON, json.dumps(document, indent=1))
    atomic_write_text(output / FAILED_CSV, failures.getvalue())


def _shown_queries(ranked: List[tuple], source: BatchSource, top: int) -> List[html_report.ShownQuery]:
    """The report's sections: each ranked query with its ``top`` candidates as database annotations."""
    by_name: Dict[tuple, Annotation] = {(str(a.path), a.name): a for a in source.database.annotations}
    shown = []
    for annot, result in ranked:
        candidates = [html_report.ShownCandidate(c.rank, c.individual, by_name[(c.path, c.annotation)], c.score,
                                                 c.probability)
                      for c in result.candidates[:top] if (c.path, c.annotation) in by_name]
        shown.append(html_report.ShownQuery(annot, candidates, label=result.query))
    return shown
