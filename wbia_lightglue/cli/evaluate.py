"""``wbia-lightglue evaluate``: 1-vs-all CMC and mAP on a labelled dataset (the evaluation protocol).

Writes ``<output>/report.json`` (summary, per-query rows, run metadata), ``<output>/cmc.png`` and
``<output>/report.html`` (a self-contained page: summary, CMC, every query marked correct or wrong, errors
first, the first ``--report-queries`` of them drawn with their ``--top`` candidates; evaluation.html_report).
Under the default settings it runs two-stage and the probabilities come from the shipped calibration;
``report.json``'s meta names the mode and the calibration, with its Brier score on this dataset's pairs.
With ``--ray ADDRESS`` the scoring runs on a Ray cluster (``evaluation.datasets.score_dataset``'s ``ray_address``):
the same matrices, report and pages.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from ..data.dataset import Dataset, limit_individuals, load_dataset
from ..data.store import FeatureStore
from ..engine.calibration import Calibration
from ..engine.config import Config, ConfigLike, resolve_config
from ..evaluation import html_report
from ..evaluation.calibration import directed_pairs, labelled_pairs, quality
from ..evaluation.datasets import DatasetScores, evaluate, save, score_dataset
from ..evaluation.protocol import DEFAULT_RANKS, EvaluationReport
from ..pipeline import calibration_for
from ..pipeline.files import check_stage1_source
from .common import (
    UsageError,
    add_ray_option,
    check_ray,
    check_top,
    config_from_args,
    features_line,
    require_writable,
)

DEFAULT_OUTPUT = Path("wbia-lightglue-evaluation")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("evaluate", parents=[common], help="1-vs-all CMC and mAP on a labelled dataset")
    cmd.add_argument("dataset", type=Path, metavar="DATASET")
    cmd.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="DIR")
    cmd.add_argument("--limit-individuals", type=int, metavar="N",
                     help="only the first N individuals (natural order; random with --seed)")
    cmd.add_argument("--seed", type=int, help="pick the --limit-individuals subset at random with this seed")
    cmd.add_argument("--group-by", metavar="COLUMN", help="compare only annotations with equal COLUMN (e.g. side)")
    cmd.add_argument("--top", type=int, default=html_report.DEFAULT_TOP, metavar="K",
                     help=f"candidates drawn per query in report.html (default {html_report.DEFAULT_TOP})")
    cmd.add_argument("--report-queries", type=int, default=html_report.DEFAULT_MAX_QUERIES, metavar="N",
                     help="queries drawn in report.html, errors first (default "
                          f"{html_report.DEFAULT_MAX_QUERIES}; 0: summary and table only)")
    add_ray_option(cmd, "score the pairs")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_top(args)
    check_ray(args)
    if args.report_queries < 0:
        raise UsageError(f"--report-queries must be 0 or more, got {args.report_queries}")
    report = main(args.dataset, args.output, config_from_args(args), limit=args.limit_individuals,
                  seed=args.seed, group_by=args.group_by, cache_dir=args.cache_dir, progress=not args.quiet,
                  top=args.top, report_queries=args.report_queries, ray_address=args.ray)
    feats = report.meta["features"]
    print(features_line(feats["loaded"], feats["extracted"], feats["skipped"]))
    print(report.table())
    check = report.meta.get("calibration")
    mode = "two-stage" if report.meta.get("mode") == "two_stage" else "exhaustive"
    if check is None:
        print(f"{mode}; no calibration for these settings (wbia-lightglue calibrate fits one)")
    elif "brier" in check:
        print(f"{mode}; calibrated ({check['method']}): Brier {check['brier']:.4f} on this dataset's {check['pairs']} "
              f"pairs (base rate {check['brier_base_rate']:.4f})")
    page = report.meta["html_report"]
    print(f"wrote {args.output / 'report.json'}, {args.output / 'cmc.png'} and {page['path']} "
          f"({page['size_bytes'] / 2**20:.1f} MB, {page['shown']} of {page['num_queries']} queries drawn, "
          f"{page['seconds']:.1f} s)")


def main(
    dataset: Union[str, Path, Dataset],
    output: Union[str, Path] = DEFAULT_OUTPUT,
    config: ConfigLike = None,
    *,
    limit: Optional[int] = None,
    seed: Optional[int] = None,
    group_by: Optional[str] = None,
    ranks: Sequence[int] = DEFAULT_RANKS,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
    top: int = html_report.DEFAULT_TOP,
    report_queries: int = html_report.DEFAULT_MAX_QUERIES,
    ray_address: Optional[str] = None,
) -> EvaluationReport:
    """Score every comparable pair of ``dataset`` once, evaluate every answerable query, write the outputs.

    Args:
        limit: keep only this many individuals (the first in natural order, or a choice seeded by ``seed``).
        group_by: an attribute (CSV column) whose value must match for two annotations to be compared,
            e.g. ``side`` for flank photos.
        top, report_queries: candidates per query and queries drawn in ``report.html`` (what was written
            is in ``meta["html_report"]``).
        ray_address: score on the Ray cluster there (``evaluation.datasets.score_dataset``).
    """
    config = resolve_config(config)
    check_stage1_source(config)  # settings first: no output folder is made under a bad one
    require_writable(Path(output))  # before scoring every pair, not after
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    data = limit_individuals(data, limit, seed)
    scored = score_dataset(data, config, group_by=group_by, cache_dir=cache_dir, progress=progress,
                           ray_address=ray_address)
    report = evaluate(scored, config, ranks, group_by=group_by, limit_individuals=limit, seed=seed)
    calibration = calibration_for(config)
    report.meta.update(mode=config.mode, calibration=calibration_check(scored, calibration, config))
    save(report, output, label=data.source.stem)
    page = html_report.evaluation_report(
        Path(output) / "report.html", scored, report, config, cmc_png=Path(output) / "cmc.png", top=top,
        max_queries=report_queries, calibration=calibration, store=FeatureStore(cache_dir),
        title=data.source.name, progress=progress)
    report.meta["html_report"] = {"path": str(page.path), "num_queries": page.num_queries, "shown": page.shown,
                                  "size_bytes": page.size_bytes, "seconds": round(page.seconds, 2)}
    return report


def calibration_check(scored: DatasetScores, calibration: Optional[Calibration],
                      config: Config) -> Optional[Dict[str, Any]]:
    """Which calibration gave the probabilities, and how well they predict this dataset's pairs (Brier score)."""
    if calibration is None:
        return None
    labels = [a.individual for a in scored.dataset.annotations]
    scores, same = labelled_pairs(scored.scores, labels, directed=directed_pairs(config))
    return {"method": calibration.method, "score": calibration.score,
            "fitted_on": calibration.meta.get("fitted_on", calibration.meta.get("dataset")),
            "date": calibration.meta.get("date"), **quality(calibration, scores, same)}
