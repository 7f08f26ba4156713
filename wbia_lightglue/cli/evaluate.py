"""``wbia-lightglue evaluate``: 1-vs-all CMC and mAP on a labelled dataset (the evaluation protocol).

Writes ``<output>/report.json`` (summary, per-query rows, run metadata) and ``<output>/cmc.png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..data.dataset import Dataset, limit_individuals, load_dataset
from ..engine.config import ConfigLike, resolve_config
from ..evaluation.datasets import evaluate, save, score_dataset
from ..evaluation.protocol import DEFAULT_RANKS, EvaluationReport
from .common import config_from_args, features_line, require_writable

DEFAULT_OUTPUT = Path("wbia-lightglue-evaluation")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("evaluate", parents=[common], help="1-vs-all CMC and mAP on a labelled dataset")
    cmd.add_argument("dataset", type=Path, metavar="DATASET")
    cmd.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="DIR")
    cmd.add_argument("--limit-individuals", type=int, metavar="N",
                     help="only the first N individuals (natural order; random with --seed)")
    cmd.add_argument("--seed", type=int, help="pick the --limit-individuals subset at random with this seed")
    cmd.add_argument("--group-by", metavar="COLUMN", help="compare only annotations with equal COLUMN (e.g. side)")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    report = main(args.dataset, args.output, config_from_args(args), limit=args.limit_individuals,
                  seed=args.seed, group_by=args.group_by, cache_dir=args.cache_dir, progress=not args.quiet)
    feats = report.meta["features"]
    print(features_line(feats["loaded"], feats["extracted"], feats["skipped"]))
    print(report.table())
    print(f"wrote {args.output / 'report.json'} and {args.output / 'cmc.png'}")


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
) -> EvaluationReport:
    """Score every comparable pair of ``dataset`` once, evaluate every answerable query, write the outputs.

    Args:
        limit: keep only this many individuals (the first in natural order, or a choice seeded by ``seed``).
        group_by: an attribute (CSV column) whose value must match for two annotations to be compared,
            e.g. ``side`` for flank photos.
    """
    config = resolve_config(config)
    require_writable(Path(output))  # before scoring every pair, not after
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    data = limit_individuals(data, limit, seed)
    scored = score_dataset(data, config, group_by=group_by, cache_dir=cache_dir, progress=progress)
    report = evaluate(scored, config, ranks, group_by=group_by, limit_individuals=limit, seed=seed)
    save(report, output, label=data.source.stem)
    return report
