"""``wbia-lightglue extract``: precompute a dataset's features into the on-disk store (later runs only load).

With ``--ray ADDRESS`` the photos the store lacks are extracted by actors on a Ray cluster (one per node, the models
built once each; ``distributed.ray_runner.RaySource.extract``) and stored here: the same store a local run fills.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Optional, Union

from ..data.dataset import Dataset, limit_individuals, load_dataset
from ..data.store import FeatureStore, StoreReport
from ..engine.config import ConfigLike, resolve_config
from ..pipeline.files import check_stage1_source
from .common import add_ray_option, check_ray, config_from_args, features_line

logger = logging.getLogger("wbia_lightglue")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("extract", parents=[common], help="precompute a dataset's features")
    cmd.add_argument("dataset", type=Path, metavar="DATASET")
    cmd.add_argument("--limit-individuals", type=int, metavar="N")
    cmd.add_argument("--seed", type=int)
    add_ray_option(cmd, "extract")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_ray(args)
    report = main(args.dataset, config_from_args(args), limit=args.limit_individuals, seed=args.seed,
                  cache_dir=args.cache_dir, progress=not args.quiet, ray_address=args.ray)
    print(features_line(report.loaded, report.extracted, report.failed))


def main(
    dataset: Union[str, Path, Dataset],
    config: ConfigLike = None,
    *,
    limit: Optional[int] = None,
    seed: Optional[int] = None,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
    ray_address: Optional[str] = None,
) -> StoreReport:
    """Extract and store the features of every annotation not yet in the store (on the Ray cluster at
    ``ray_address`` when given)."""
    config = resolve_config(config)
    check_stage1_source(config)  # a setting the standalone tool cannot run: refused before any photo is read
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    data = limit_individuals(data, limit, seed)
    store = FeatureStore(cache_dir)
    logger.info("extract %s into %s (feature fingerprint %s)", data.source, store.root, config.feature_fingerprint)
    if ray_address is None:
        _, _, report = store.features([(a.path, a.bbox) for a in data.annotations], config, progress=progress)
        return report
    from ..distributed.ray_runner import RaySource

    source = RaySource(ray_address, data, None, store, config, progress=progress)
    try:
        return source.extract(data.annotations)
    finally:
        source.close()
