"""``wbia-lightglue extract``: precompute a dataset's features into the on-disk store (later runs only load)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Optional, Union

from ..data.dataset import Dataset, limit_individuals, load_dataset
from ..data.store import FeatureStore, StoreReport
from ..engine.config import ConfigLike, resolve_config
from ..pipeline.files import check_stage1_source
from .common import config_from_args, features_line

logger = logging.getLogger("wbia_lightglue")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("extract", parents=[common], help="precompute a dataset's features")
    cmd.add_argument("dataset", type=Path, metavar="DATASET")
    cmd.add_argument("--limit-individuals", type=int, metavar="N")
    cmd.add_argument("--seed", type=int)
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    report = main(args.dataset, config_from_args(args), limit=args.limit_individuals, seed=args.seed,
                  cache_dir=args.cache_dir, progress=not args.quiet)
    print(features_line(report.loaded, report.extracted, report.failed))


def main(
    dataset: Union[str, Path, Dataset],
    config: ConfigLike = None,
    *,
    limit: Optional[int] = None,
    seed: Optional[int] = None,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
) -> StoreReport:
    """Extract and store the features of every annotation not yet in the store."""
    config = resolve_config(config)
    check_stage1_source(config)  # a setting the standalone tool cannot run: refused before any photo is read
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    data = limit_individuals(data, limit, seed)
    store = FeatureStore(cache_dir)
    logger.info("extract %s into %s (feature fingerprint %s)", data.source, store.root, config.feature_fingerprint)
    _, _, report = store.features([(a.path, a.bbox) for a in data.annotations], config, progress=progress)
    return report
